"""Resuming a checkpoint inside a rollout-reuse cycle (num_iterations=2): what docs/long-runs.md measures.

TRL's GRPOTrainer keeps the generated batch (`_buffered_inputs`) and its step counter (`_step`) in memory only: a
run resumed from a checkpoint at an odd step regenerates at once and reuses from then on, one step out of phase
with the straight run. AttentionGRPOTrainer inherits it (plain GRPOTrainer shifts the same way), and its RAL term
acts on the reused steps, so it moves too. At a cycle boundary (an even step) resumed == straight, bit for bit.
Saving the buffer and the counter in the checkpoint (`_Buffered`, the override proposed in docs/long-runs.md)
makes the odd case equal as well.
"""

import os
import warnings

import pytest
import torch
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

from tests.testing_utils import PROMPTS, length_reward, trainer_args
from trl_attention import AttentionGRPOConfig, AttentionGRPOTrainer
from trl_attention.tiny import build_tiny_lm


def _buffered(trainer_cls):
    """`trainer_cls` that saves TRL's rollout buffer and step counter in each checkpoint and loads them back."""

    class _Buffered(trainer_cls):
        def _save_checkpoint(self, model, trial):
            super()._save_checkpoint(model, trial)
            out = os.path.join(self._get_output_dir(trial), f"checkpoint-{self.state.global_step}")
            state = {"step": self._step, "buffer": self._buffered_inputs}
            torch.save(state, os.path.join(out, f"rollouts_{self.accelerator.process_index}.pt"))

        def _load_rng_state(self, checkpoint):  # the Trainer calls it once, when resuming
            super()._load_rng_state(checkpoint)
            path = os.path.join(checkpoint, f"rollouts_{self.accelerator.process_index}.pt")
            if os.path.isfile(path):
                state = torch.load(path, weights_only=False)
                self._step, self._buffered_inputs = state["step"], state["buffer"]

    return _Buffered


def _run(trainer_cls, config_cls, output_dir, resume=None):
    """(per step: (loss, attention/jsd), global steps at which a generation ran, final parameters)."""
    torch.manual_seed(0)
    model, tokenizer = build_tiny_lm(seed=0)
    args = trainer_args(config_cls, output_dir, max_steps=4, num_iterations=2, save_strategy="steps", save_steps=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = trainer_cls(
            model=model,
            reward_funcs=length_reward,
            args=args,
            train_dataset=Dataset.from_dict({"prompt": PROMPTS * 4}),
            processing_class=tokenizer,
        )
        generations, generate = [], trainer._generate_and_score_completions

        def counted(batch):
            generations.append(trainer.state.global_step + 1)
            return generate(batch)

        trainer._generate_and_score_completions = counted
        trainer.train(resume_from_checkpoint=resume)
    logs = {h["step"]: (h["loss"], h.get("attention/jsd")) for h in trainer.state.log_history if "loss" in h}
    return logs, generations, torch.cat([p.detach().flatten() for p in trainer.model.parameters()])


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The straight 4-step runs (checkpoints at every step), RAL's and plain GRPO's."""
    root = tmp_path_factory.mktemp("straight")
    return {
        "ral": (root / "ral", _run(AttentionGRPOTrainer, AttentionGRPOConfig, root / "ral")),
        "grpo": (root / "grpo", _run(GRPOTrainer, GRPOConfig, root / "grpo")),
    }


def test_straight_run_generates_every_other_step_and_ral_acts_on_the_reused_ones(straight):
    _, (logs, generations, _) = straight["ral"]
    assert generations == [1, 3]
    assert logs[1][1] == 0.0 and logs[3][1] == 0.0  # fresh rollouts: the old attention is the current one
    assert 1e-6 < logs[2][1] < 1e-3 and 1e-6 < logs[4][1] < 1e-3  # reused rollouts: the term acts


def test_resume_at_a_cycle_boundary_equals_the_straight_run(straight, tmp_path):
    path, (logs, _, params) = straight["ral"]
    resumed, generations, resumed_params = _run(
        AttentionGRPOTrainer, AttentionGRPOConfig, tmp_path, resume=str(path / "checkpoint-2")
    )
    assert generations == [3]
    assert resumed == logs  # loss and attention/jsd of every step, exactly
    assert torch.equal(resumed_params, params)


@pytest.mark.parametrize("name", ["ral", "grpo"])
def test_resume_inside_a_cycle_shifts_the_reuse_phase_as_trl_does(straight, tmp_path, name):
    """TRL's behaviour, measured: the resumed run regenerates at step 2 (one extra generation) and is out of phase."""
    trainer_cls, config_cls = (
        (AttentionGRPOTrainer, AttentionGRPOConfig) if name == "ral" else (GRPOTrainer, GRPOConfig)
    )
    path, (logs, _, params) = straight[name]
    resumed, generations, resumed_params = _run(trainer_cls, config_cls, tmp_path, resume=str(path / "checkpoint-1"))
    assert generations == [2, 4]  # straight: [1, 3]; two generations in steps 2-4 where the straight run has one
    assert abs(resumed[2][0]) < 1e-6 < abs(logs[2][0])  # a fresh-rollout step (loss ~0) where straight reuses
    if name == "ral":
        assert resumed[2][1] == 0.0 and logs[2][1] > 1e-6  # the RAL term is off where the straight run has it
        assert resumed[3][1] > 1e-6 and logs[3][1] == 0.0  # and on where it is off
    assert not torch.equal(resumed_params, params)
    assert (resumed_params - params).abs().max() > 1e-3


def test_saving_the_rollout_buffer_makes_a_resume_inside_a_cycle_equal(tmp_path):
    """The override docs/long-runs.md proposes for AttentionGRPOTrainer: resumed == straight from any step."""
    trainer_cls = _buffered(AttentionGRPOTrainer)
    logs, generations, params = _run(trainer_cls, AttentionGRPOConfig, tmp_path / "straight")
    assert generations == [1, 3]
    resumed, generations, resumed_params = _run(
        trainer_cls, AttentionGRPOConfig, tmp_path / "resumed", resume=str(tmp_path / "straight" / "checkpoint-1")
    )
    assert generations == [3] and resumed == logs
    assert torch.equal(resumed_params, params)
