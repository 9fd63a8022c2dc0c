"""RAL's own config fields, as a plain dataclass: `AttentionGRPOConfig` inherits them, and `trl-attention grpo
--help` lists them without importing TRL."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..distill.arguments import _parent_post_init, check_capture_checkpointing, check_weight

__all__ = ["RALArguments"]


@dataclass
class RALArguments:
    """The fields RAL adds to TRL's `GRPOConfig` (see `AttentionGRPOConfig`)."""

    attn_coef: float = field(
        default=1.0,
        metadata={"help": "Weight lambda_attn of the RAL attention-policy loss; 0 reproduces GRPO exactly."},
    )
    attn_layer: int = field(
        default=-1,
        metadata={
            "help": "Attention layer whose head-averaged attention is the attention policy (-1 = the last attention "
            "layer). It indexes the layers with softmax attention: on hybrid decoders (Qwen3.5, Qwen3-Next, "
            "NemotronH) Mamba / linear-attention layers are skipped, and errors also give the model's own decoder "
            "layer index. Not looked up when attn_coef=0 and no attention term or reward is used."
        },
    )
    freeze_vision_tower: bool = field(
        default=False,
        metadata={
            "help": "Freeze the vision encoder and projector before the optimizer is built (train the LM only)."
        },
    )

    def __post_init__(self):
        check_weight(self, "attn_coef")
        _parent_post_init(self, RALArguments)  # GRPOConfig's checks, when mixed into it
        check_capture_checkpointing(self)
