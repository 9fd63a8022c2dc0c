"""Distillation's own config fields, as plain dataclasses: `AttentionGKDConfig` and `AttentionGRPOConfig` inherit
them, and the CLI's `--help` lists them without importing TRL."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["AttentionDistillArguments", "GRPOTeacherArguments", "check_capture_checkpointing", "check_weight"]


def check_weight(config, name: str, upper: float | None = None) -> None:
    """ValueError naming `name` unless `config.name` is a finite number >= 0 (and <= `upper` when given)."""
    value = getattr(config, name)
    try:
        ok = math.isfinite(value) and value >= 0 and (upper is None or value <= upper)
    except TypeError:
        ok = False
    if not ok:
        bound = f"in [0, {upper:g}]" if upper is not None else "a finite number >= 0"
        raise ValueError(f"{name} must be {bound}, got {value!r}")


def check_capture_checkpointing(config) -> None:
    """ValueError when an attention capture will run (attn_coef or attn_distill_coef != 0) under reentrant gradient
    checkpointing, which gives the captured attention no gradient. The light classes alone have no
    `gradient_checkpointing`: then there is nothing to check."""
    if not getattr(config, "gradient_checkpointing", False):
        return
    if not (getattr(config, "attn_coef", 0) or getattr(config, "attn_distill_coef", 0)):
        return
    if (getattr(config, "gradient_checkpointing_kwargs", None) or {}).get("use_reentrant"):
        raise ValueError(
            "gradient_checkpointing_kwargs (activation_checkpointing_kwargs) {'use_reentrant': True} cannot be "
            "used with attn_coef or attn_distill_coef != 0: the attention capture needs non-reentrant "
            "checkpointing. Set gradient_checkpointing_kwargs={'use_reentrant': False} (the default) or "
            "gradient_checkpointing=False."
        )


def _parent_post_init(self, cls) -> None:
    """The next `__post_init__` in the MRO (TRL's config when mixed in), if any: alone, these classes have none."""
    parent = getattr(super(cls, self), "__post_init__", None)
    if parent is not None:
        parent()


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

    def __post_init__(self):
        check_weight(self, "attn_distill_coef")
        check_weight(self, "gkd_coef")
        _parent_post_init(self, AttentionDistillArguments)  # GKDConfig's checks, when mixed into it
        check_capture_checkpointing(self)


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

    def __post_init__(self):
        check_weight(self, "gkd_coef")
        check_weight(self, "attn_distill_coef")
        check_weight(self, "gkd_beta", upper=1.0)
        _parent_post_init(self, GRPOTeacherArguments)  # RALArguments', then GRPOConfig's, when mixed in
        check_capture_checkpointing(self)
