"""A resumed run gets its trained weights back, on every family of the support matrix (`trl_attention.checkpointing`).

transformers 5.23 saves a checkpoint in the family's original key format and its Trainer reloads it with a plain
`load_state_dict(strict=False)`: for VLMs (Qwen2.5-VL, LLaVA, InternVL, Gemma3, ...), NemotronH and the MoE families
nothing or part matches and the run trains on from its initial weights, logging only the missing keys. The control
test pins that upstream behaviour per family; the others show the trainers here restore every parameter exactly,
in place, and refuse a checkpoint they cannot restore.
"""

import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import Trainer, TrainingArguments

from tests.testing_utils import PROMPTS, gkd_args, length_reward, trainer_args
from trl_attention import AttentionGKDConfig, AttentionGKDTrainer, AttentionGRPOConfig, AttentionGRPOTrainer
from trl_attention.checkpointing import ResumeError, ResumeMixin, checkpoint_needs_conversion
from trl_attention.tiny import build_tiny_lm, build_tiny_vlm, make_grounding_dataset
from trl_attention_recipes.families import available_families, build_tiny_family

pytestmark = pytest.mark.filterwarnings("ignore")
FAMILIES = ["qwen2_5_vl (tiny_vlm)", "qwen2 (tiny_lm)", *available_families()]
# Families whose checkpoint keys the Trainer's own reload misses (measured on transformers 5.23).
UPSTREAM_LOSES = {
    "qwen2_5_vl (tiny_vlm)", "nemotron_h", "qwen3_5_moe", "qwen3_next", "gemma3", "llava", "llava_onevision", "internvl",
    "qwen2_vl",
}


def _build(name, seed):
    if name.startswith("qwen2_5_vl"):
        return build_tiny_vlm(seed=seed)[0]
    if name.startswith("qwen2 "):
        return build_tiny_lm(seed=seed)[0]
    return build_tiny_family(name, seed=seed)[0]


class _Resuming(ResumeMixin, Trainer):
    """The mixin on transformers' own Trainer: what both trainers of the package add to their TRL parents."""


def _args(path):
    return TrainingArguments(output_dir=str(path), use_cpu=True, report_to=[])


def _equal(model, reference) -> list[str]:
    """Names of the parameters and buffers of `model` that differ from `reference`'s."""
    expected = reference.state_dict()
    return [k for k, v in model.state_dict().items() if not torch.equal(v, expected[k])]


@pytest.fixture(scope="module", params=FAMILIES)
def saved(request, tmp_path_factory):
    """(family, trained model, checkpoint written by the Trainer's save_model)."""
    name = request.param
    trained = _build(name, seed=0)
    path = tmp_path_factory.mktemp("checkpoint")
    Trainer(model=trained, args=_args(path)).save_model(str(path))
    return name, trained, path


def test_resume_restores_every_parameter_in_place(saved, tmp_path):
    name, trained, path = saved
    model = _build(name, seed=1)
    assert _equal(model, trained)  # a fresh init differs from the trained weights
    params = {k: id(p) for k, p in model.named_parameters()}
    _Resuming(model=model, args=_args(tmp_path))._load_from_checkpoint(str(path))
    assert _equal(model, trained) == []
    assert {k: id(p) for k, p in model.named_parameters()} == params  # copied into the same parameters
    assert checkpoint_needs_conversion(model, str(path)) == (name in UPSTREAM_LOSES)


def test_control_the_trainers_own_reload_loses_these_families(saved, tmp_path):
    """transformers' behaviour, pinned: when it changes (an upstream fix), this says so."""
    name, trained, path = saved
    model = _build(name, seed=1)
    Trainer(model=model, args=_args(tmp_path))._load_from_checkpoint(str(path))
    assert bool(_equal(model, trained)) == (name in UPSTREAM_LOSES)


def test_load_best_model_restores_the_vlm(tmp_path):
    trained = build_tiny_vlm(seed=0)[0]
    Trainer(model=trained, args=_args(tmp_path / "best")).save_model(str(tmp_path / "best"))
    trainer = _Resuming(model=(model := build_tiny_vlm(seed=1)[0]), args=_args(tmp_path / "out"))
    trainer.state.best_model_checkpoint = str(tmp_path / "best")
    trainer._load_best_model()
    assert _equal(model, trained) == []


def test_a_checkpoint_missing_a_weight_is_refused(tmp_path):
    trained = build_tiny_vlm(seed=0)[0]
    Trainer(model=trained, args=_args(tmp_path)).save_model(str(tmp_path))
    state = load_file(tmp_path / "model.safetensors")
    dropped = next(k for k in state if k.startswith("visual.blocks.0.attn.qkv"))
    save_file({k: v for k, v in state.items() if k != dropped}, tmp_path / "model.safetensors", {"format": "pt"})
    with pytest.raises(ResumeError, match=r"does not restore every weight.*qkv"):
        _Resuming(model=build_tiny_vlm(seed=1)[0], args=_args(tmp_path / "out"))._load_from_checkpoint(str(tmp_path))


def grpo_trainer(output_dir, model, processor, dataset=None, reward_funcs=length_reward, **overrides):
    from datasets import Dataset

    dataset = Dataset.from_dict({"prompt": PROMPTS * 4}) if dataset is None else dataset
    args = trainer_args(AttentionGRPOConfig, output_dir, num_iterations=2, **overrides)
    return AttentionGRPOTrainer(
        model=model, reward_funcs=reward_funcs, args=args, train_dataset=dataset, processing_class=processor
    )


def _trained_vlm_run(tmp_path, **overrides):
    model, processor = build_tiny_vlm(seed=0)
    trainer = grpo_trainer(
        tmp_path,
        model=model,
        processor=processor,
        dataset=make_grounding_dataset(8),
        max_steps=2,
        save_strategy="steps",
        save_steps=2,
        **overrides,
    )
    trainer.train()
    return trainer


def test_grpo_on_the_vlm_resumes_its_trained_weights(tmp_path):
    """End to end: AttentionGRPOTrainer on the tiny Qwen2.5-VL, trained 2 steps, resumed from checkpoint-2."""
    trained = _trained_vlm_run(tmp_path / "run").model
    model, processor = build_tiny_vlm(seed=0)
    assert _equal(model, trained)
    resumed = grpo_trainer(
        tmp_path / "resumed", model=model, processor=processor, dataset=make_grounding_dataset(8), max_steps=2
    )
    resumed.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2"))
    assert _equal(resumed.model, trained) == []


def test_gkd_on_the_vlm_resumes_its_trained_weights(tmp_path):
    data = make_grounding_dataset(8).map(lambda row: {"completion": row["answer"]})

    def run(output_dir, resume=None):
        student, processor = build_tiny_vlm(seed=0)
        args = gkd_args(AttentionGKDConfig, output_dir, max_steps=2, save_strategy="steps", save_steps=2)
        trainer = AttentionGKDTrainer(
            model=student, teacher_model=build_tiny_vlm(seed=1)[0], args=args, train_dataset=data,
            processing_class=processor,
        )
        trainer.train(resume_from_checkpoint=resume)
        return trainer.model

    trained = run(tmp_path / "run")
    assert _equal(build_tiny_vlm(seed=0)[0], trained)
    assert _equal(run(tmp_path / "resumed", str(tmp_path / "run" / "checkpoint-2")), trained) == []


@pytest.mark.parametrize("missing", ["optimizer.pt", "scheduler.pt"])
def test_a_checkpoint_without_optimizer_or_scheduler_state_is_refused(tmp_path, missing):
    _trained_vlm_run(tmp_path / "run")
    (tmp_path / "run" / "checkpoint-2" / missing).unlink()
    model, processor = build_tiny_vlm(seed=0)
    trainer = grpo_trainer(tmp_path / "resumed", model=model, processor=processor, dataset=make_grounding_dataset(8))
    with pytest.raises(ResumeError, match=f"no {missing}.*restart the optimizer"):
        trainer.train(resume_from_checkpoint=str(tmp_path / "run" / "checkpoint-2"))


def test_training_into_an_output_dir_with_checkpoints_warns(tmp_path):
    (tmp_path / "checkpoint-5").mkdir()
    (tmp_path / "checkpoint-12").mkdir()
    model, tokenizer = build_tiny_lm(seed=0)
    trainer = grpo_trainer(tmp_path, model=model, processor=tokenizer, reward_funcs=length_reward, max_steps=1)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.train()
    messages = [str(w.message) for w in caught if "already holds" in str(w.message)]
    assert len(messages) == 1 and "2 checkpoint(s)" in messages[0] and "checkpoint-12" in messages[0]


def test_grpo_trainer_is_the_resuming_one():
    assert issubclass(AttentionGRPOTrainer, ResumeMixin) and issubclass(AttentionGKDTrainer, ResumeMixin)
