"""Distillation's own config fields, as plain dataclasses: `AttentionGKDConfig` and `AttentionGRPOConfig` inherit
them, and the CLI's `--help` lists them without importing TRL."""

from __future__ import annotations

from dataclasses import dataclass, field

from .. import arguments as _shared  # check_weight / check_capture_checkpointing: deprecated names of this module
from ..arguments import AttentionModelArguments, chain_post_init

__all__ = ["GKD_ARGUMENTS", "AttentionDistillArguments", "GRPOTeacherArguments"]


@dataclass
class AttentionDistillArguments(AttentionModelArguments):
    """The fields attention distillation adds to TRL's `GKDConfig` (see `AttentionGKDConfig`), with the shared
    `attn_layer` (the student layer distilled) and `freeze_vision_tower`."""

    attn_distill_coef: float = field(
        default=0.5,
        metadata={"help": "Weight gamma of the attention-distillation JSD; 0 (with gkd_coef=1) is GKD exactly."},
    )
    gkd_coef: float = field(
        default=1.0, metadata={"help": "Weight mu of GKD's token-level generalized JSD; 0 distils attention only."}
    )
    teacher_attn_layer: int = field(
        default=-1, metadata={"help": "Teacher decoder layer whose attention is the target (-1 = last)."}
    )

    def __post_init__(self):
        _shared.check_weight(self, "attn_distill_coef")
        _shared.check_weight(self, "gkd_coef")
        chain_post_init(self, AttentionDistillArguments)  # GKDConfig's checks, when mixed into it
        _shared.check_capture_checkpointing(self)


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
        _shared.check_weight(self, "gkd_coef")
        _shared.check_weight(self, "attn_distill_coef")
        _shared.check_weight(self, "gkd_beta", upper=1.0)
        chain_post_init(self, GRPOTeacherArguments)  # RALArguments', then GRPOConfig's, when mixed in
        _shared.check_capture_checkpointing(self)



def _gkd_arguments() -> tuple:
    from ..video.arguments import VideoArguments

    return AttentionDistillArguments, VideoArguments


GKD_ARGUMENTS = _gkd_arguments()
"""The field dataclasses `AttentionGKDConfig` adds to TRL's `GKDConfig`, in `trl-attention gkd --help` order; the
config's bases are these reversed."""

def __getattr__(name: str):  # check_weight, check_capture_checkpointing: moved to trl_attention.arguments in 0.2.0
    from .._compat import moved_names

    return moved_names(__name__)(name)
