"""Distillation's own config fields, as plain dataclasses: `AttentionGKDConfig` and `AttentionGRPOConfig` inherit
them, and the CLI's `--help` lists them without importing TRL."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["AttentionDistillArguments", "GRPOTeacherArguments"]


@dataclass
class AttentionDistillArguments:
    """The fields attention distillation adds to TRL's `GKDConfig` (see `AttentionGKDConfig`)."""

    attn_distill_coef: float = field(
        default=0.5,
        metadata={"help": "Weight gamma of the attention-distillation JSD; 0 (with gkd_coef=1) is GKD exactly."},
    )
    gkd_coef: float = field(
        default=1.0, metadata={"help": "Weight mu of GKD's token-level generalized JSD; 0 distils attention only."}
    )
    attn_layer: int = field(default=-1, metadata={"help": "Student decoder layer whose attention is distilled."})
    teacher_attn_layer: int = field(
        default=-1, metadata={"help": "Teacher decoder layer whose attention is the target (-1 = last)."}
    )
    freeze_vision_tower: bool = field(
        default=False,
        metadata={"help": "Freeze the student's vision encoder and projector before the optimizer is built."},
    )


@dataclass
class GRPOTeacherArguments:
    """The teacher terms of `AttentionGRPOTrainer` (mu * L_GKD + gamma * L_AttnDistill on the GRPO rollouts)."""

    gkd_coef: float = field(
        default=0.0,
        metadata={"help": "Weight mu of the token-level generalized JSD to teacher_model on the rollouts."},
    )
    attn_distill_coef: float = field(
        default=0.0,
        metadata={"help": "Weight gamma of the attention-distillation JSD to teacher_model on the rollouts."},
    )
    gkd_beta: float = field(
        default=0.5, metadata={"help": "beta of the generalized JSD (0 = forward KL, 1 = reverse KL), as in GKD."}
    )
    teacher_attn_layer: int = field(
        default=-1, metadata={"help": "Teacher decoder layer whose attention is the distillation target."}
    )
    teacher_model_init_kwargs: dict | None = field(
        default=None, metadata={"help": "from_pretrained kwargs for a teacher_model given as a path or hub id."}
    )
