"""Training stages of `benchmarks/evidence.py`: SFT with TRL's `SFTTrainer` to a checkpoint, then one RL arm with
`AttentionGRPOTrainer` from it. Every arm runs the same steps, batch, generations and `num_iterations`."""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from evidence_data import completion_text
from transformers import AutoModelForImageTextToText, AutoProcessor, PrinterCallback

from trl_attention import AttentionGRPOConfig, AttentionGRPOTrainer
from trl_attention.rewards import accuracy_reward, answer_format_reward, reasoning_format_reward
from trl_attention.sayo import RegionAttentionReward
from trl_attention.tiny import build_processor, build_tiny_vlm
from trl_attention.tiny.sft import sft_tiny_vlm


@dataclass(frozen=True)
class Arm:
    """One RL arm: its attention term, rewards and teacher terms (the rest of the config is shared)."""

    attn_coef: float = 0.0
    sayo: bool = False
    distill: bool = False
    fmt: str = "reasoning"
    attn_layers: tuple | None = None
    attn_divergence: str = "jsd"
    attn_heads: str = "mean"
    attn_reference: str = "rollout"
    num_iterations: int = 2  # every arm of evidence.py reuses its rollouts once; the testbed's dose-response varies it
    steps_per_generation: int | None = None


ARMS = {
    "grpo": Arm(),
    "ral": Arm(attn_coef=1.0),
    "sayo": Arm(sayo=True),
    "sayo_ral": Arm(attn_coef=1.0, sayo=True),
    "distill": Arm(distill=True),
    "ral_zero": Arm(attn_coef=1.0, fmt="answer"),
}
ABLATION_ARMS = {
    "ral_layers_1_-1": Arm(attn_coef=1.0, attn_layers=(1, -1)),
    "ral_kl": Arm(attn_coef=1.0, attn_divergence="kl"),
    "ral_reverse_kl": Arm(attn_coef=1.0, attn_divergence="reverse_kl"),
    "ral_per_head": Arm(attn_coef=1.0, attn_heads="per_head"),
}  # the jsd point of the ablation is the `ral` arm
ACCURACY_WEIGHT, FORMAT_WEIGHT, SAYO_WEIGHT = 0.9, 0.1, 0.5  # RAL's 0.9 accuracy + 0.1 format; SAYO's term added
DISTILL_GKD, DISTILL_ATTN = 0.5, 1.0  # mu (token GKD) and gamma (attention distillation); gamma in the paper's grid
TEACHER_WIDTH = {"hidden_size": 128, "intermediate_size": 256}  # the student is 64 / 128


def _quiet(fn):
    """Run `fn` with library warnings silenced (the inert-term warning is expected for grpo-like arms)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn()


def _silence(trainer):
    """Drop the per-step log printing (with progress bars off, transformers prints every log dict)."""
    trainer.remove_callback(PrinterCallback)
    return trainer


def _common(cfg, out: str, seed: int) -> dict:
    return dict(
        output_dir=out,
        seed=seed,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=not cfg.progress,
        gradient_checkpointing=False,
        dataloader_num_workers=0,
    )


def train_sft(cfg, dataset, fmt: str, seed: int, steps: int, path: str, teacher: bool = False) -> str:
    """SFT the tiny VLM (the wider teacher when `teacher`) on `dataset` in format `fmt` with TRL's SFTTrainer
    (`trl_attention.tiny.sft`, the demo's warm start; patch embedding frozen); save it to `path`."""
    processor = build_processor(max_pixels=cfg.image_size**2)
    model, _ = build_tiny_vlm(seed=seed, **(TEACHER_WIDTH if teacher else {}))
    sft_tiny_vlm(
        model,
        processor,
        dataset,
        path,
        steps,
        learning_rate=cfg.sft_lr,
        batch_size=cfg.sft_batch,
        seed=seed,
        completion=lambda row: completion_text(row, fmt, cfg.task),
        disable_tqdm=not cfg.progress,
        **cfg.sft_extra,
    )
    return path


def load(path: str):
    """(model, processor) from a saved checkpoint."""
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=torch.float32)
    return model.eval(), AutoProcessor.from_pretrained(path)


def _rewards(arm: Arm):
    fmt_reward = reasoning_format_reward if arm.fmt == "reasoning" else answer_format_reward
    funcs, weights = [accuracy_reward, fmt_reward], [ACCURACY_WEIGHT, FORMAT_WEIGHT]
    if arm.sayo:
        funcs, weights = [RegionAttentionReward(), *funcs], [SAYO_WEIGHT, *weights]
    return funcs, weights


def train_rl(cfg, arm: Arm, checkpoint: str, dataset, seed: int, out: str, teacher=None):
    """One RL arm from the SFT `checkpoint`; returns (trained model, processor, TRL log history)."""
    model, processor = load(checkpoint)
    funcs, weights = _rewards(arm)
    extra = dict(gkd_coef=DISTILL_GKD, attn_distill_coef=DISTILL_ATTN) if arm.distill else {}
    args = AttentionGRPOConfig(
        **_common(cfg, out, seed),
        max_steps=cfg.rl_steps,
        per_device_train_batch_size=cfg.rl_batch,
        num_generations=cfg.generations,
        max_completion_length=cfg.max_completion[arm.fmt],
        learning_rate=cfg.rl_lr,
        num_iterations=arm.num_iterations,  # 2 by default: RAL's term acts, and compute stays equal
        steps_per_generation=arm.steps_per_generation,
        temperature=1.0,
        freeze_vision_tower=True,  # the paper's setup: RL trains the language model only
        attn_coef=arm.attn_coef,
        attn_layers=list(arm.attn_layers) if arm.attn_layers else None,
        attn_divergence=arm.attn_divergence,
        attn_heads=arm.attn_heads,
        attn_reference=arm.attn_reference,
        reward_weights=weights,
        **extra,
        **cfg.rl_extra,
    )
    kwargs = {"teacher_model": teacher} if arm.distill else {}
    trainer = _quiet(
        lambda: AttentionGRPOTrainer(
            model=model, reward_funcs=funcs, args=args, train_dataset=dataset, processing_class=processor, **kwargs
        )
    )
    _silence(trainer)
    _quiet(trainer.train)
    history = [dict(row) for row in trainer.state.log_history if "train_runtime" not in row]
    return trainer.model.eval(), processor, history
