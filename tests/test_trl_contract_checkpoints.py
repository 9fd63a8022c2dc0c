"""The contract of `trl_attention.checkpointing` with transformers' Trainer and TRL's GRPOTrainer: the methods it
overrides (`TRAINER_CHECKPOINT_OVERRIDES`) and the rollout state it saves (`ROLLOUT_STATE_ATTRIBUTES`), checked
against the installed versions; docs/trl-internals.md says what to do when one changes."""

import inspect

import pytest
import transformers
from transformers import Trainer

from tests.testing_utils import grpo_trainer
from trl_attention import AttentionGKDTrainer, AttentionGRPOTrainer
from trl_attention import trl_internals as ti
from trl_attention.checkpointing import ResumeMixin, RolloutBufferMixin

pytestmark = pytest.mark.filterwarnings("ignore")
SEE = "update trl_attention/checkpointing.py and trl_internals.py (docs/trl-internals.md)"


def _parameters(func) -> list[str]:
    return [p for p in inspect.signature(func).parameters if p != "self"]


@pytest.mark.parametrize("name, expected", ti.TRAINER_CHECKPOINT_OVERRIDES.items())
def test_overridden_trainer_methods_match_transformers(name, expected):
    found = _parameters(getattr(Trainer, name))
    assert found[: len(expected)] == list(expected), (
        f"transformers {transformers.__version__} changed Trainer.{name}: ({', '.join(found)}); {SEE}"
    )
    overrides = [cls for cls in (ResumeMixin, RolloutBufferMixin) if name in vars(cls)]
    assert overrides or name == "_get_output_dir"  # read, not overridden
    for cls in overrides:
        inspect.signature(vars(cls)[name]).bind(None, **dict.fromkeys(found))


def test_both_trainers_resolve_the_overrides_to_the_mixins():
    pairs = ((AttentionGRPOTrainer, (ResumeMixin, RolloutBufferMixin)), (AttentionGKDTrainer, (ResumeMixin,)))
    for trainer_cls, mixins in pairs:
        mro = trainer_cls.__mro__
        for mixin in mixins:
            for name in vars(mixin):
                if name in ti.TRAINER_CHECKPOINT_OVERRIDES:
                    owner = next(cls for cls in mro if name in vars(cls))
                    assert owner in (ResumeMixin, RolloutBufferMixin), f"{trainer_cls.__name__}.{name}: {owner}"


def test_grpo_regenerates_by_the_saved_counter_and_buffer(tmp_path):
    """TRL regenerates when `_step % (steps_per_generation * num_iterations) == 0` or the buffer is None, and
    otherwise serves `_buffered_inputs[_step % steps_per_generation]`: what restoring the pair relies on."""
    trainer = grpo_trainer(tmp_path, num_iterations=2)
    assert [getattr(trainer, a) for a in ti.ROLLOUT_STATE_ATTRIBUTES] == [0, None]
    calls = []

    def generate(batch):
        calls.append(batch)
        raise StopIteration  # the rest of TRL's buffering is not under test here

    trainer._generate_and_score_completions = generate
    trainer.model.train()
    trainer._step, trainer._buffered_inputs = 1, [{"saved": True}]
    assert trainer._prepare_inputs({"fresh": True}) == {"saved": True} and calls == []
    trainer._step = 2  # a cycle boundary: regenerate
    with pytest.raises(StopIteration):
        trainer._prepare_inputs({"fresh": True})
    assert calls == [{"fresh": True}]
