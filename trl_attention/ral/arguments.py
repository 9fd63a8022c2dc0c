"""RAL's own config fields, as a plain dataclass: `AttentionGRPOConfig` inherits them, and `trl-attention grpo
--help` lists them without importing TRL."""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field

from ..arguments import AttentionModelArguments, chain_post_init, check_capture_checkpointing, check_weight

__all__ = ["ATTN_HEADS", "GRPO_ARGUMENTS", "RALArguments"]

ATTN_HEADS = ("mean", "per_head")  # `attn_heads`: the head-averaged distribution's divergence, or per head


@dataclass
class RALArguments(AttentionModelArguments):
    """The fields RAL adds to TRL's `GRPOConfig` (see `AttentionGRPOConfig`), with the shared `attn_layer` (the
    attention policy's layer) and `freeze_vision_tower`."""

    attn_coef: float = field(
        default=1.0,
        metadata={"help": "Weight lambda_attn of the RAL attention-policy loss; 0 reproduces GRPO exactly."},
    )
    attn_layers: list[int] | None = field(
        default=None,
        metadata={
            "help": "Several attention layers for RAL's term (one of the paper's open questions): the divergence is "
            "averaged over these layers (indexed like attn_layer). None = attn_layer alone, the paper's final-layer "
            "choice. Attention rewards, metrics and distillation keep attn_layer."
        },
    )
    attn_divergence: str = field(
        default="jsd",
        metadata={
            "help": "Divergence between p_theta and p_old in RAL's term: 'jsd' (the paper, bounded by ln 2), 'kl' = "
            "KL(p_old || p_theta) (TRPO's direction), 'reverse_kl' = KL(p_theta || p_old)."
        },
    )
    attn_heads: str = field(
        default="mean",
        metadata={
            "help": "How RAL's term treats attention heads (one of the paper's open questions): 'mean' (the paper) "
            "= the divergence of the head-averaged distribution; 'per_head' = the divergence computed per query "
            "head and averaged over heads (p_old then travels as (B, H, C, T), H times the memory). Attention "
            "rewards, metrics and distillation keep the head average."
        },
    )
    def __post_init__(self):
        check_weight(self, "attn_coef")
        from ..losses import DIVERGENCES

        if self.attn_divergence not in DIVERGENCES:
            raise ValueError(f"attn_divergence must be one of {sorted(DIVERGENCES)}, got {self.attn_divergence!r}")
        if self.attn_heads not in ATTN_HEADS:
            raise ValueError(f"attn_heads must be one of {list(ATTN_HEADS)}, got {self.attn_heads!r}")
        if self.attn_layers is not None:
            layers = self.attn_layers
            listed = not isinstance(layers, (str, bytes, numbers.Number))
            if not listed or not all(isinstance(x, numbers.Integral) and not isinstance(x, bool) for x in layers):
                raise ValueError(f"attn_layers must be integer layer indices (or None), got {self.attn_layers!r}")
            layers = [int(layer) for layer in self.attn_layers]
            if not layers or len(set(layers)) != len(layers):
                raise ValueError(f"attn_layers must be distinct layer indices (or None), got {self.attn_layers!r}")
            self.attn_layers = layers
        chain_post_init(self, RALArguments)  # GRPOConfig's checks, when mixed into it
        check_capture_checkpointing(self)


def _grpo_arguments() -> tuple:
    from ..distill.arguments import GRPOTeacherArguments
    from ..video.arguments import VideoArguments

    return RALArguments, GRPOTeacherArguments, VideoArguments


GRPO_ARGUMENTS = _grpo_arguments()
"""The field dataclasses `AttentionGRPOConfig` adds to TRL's `GRPOConfig`, in the order `trl-attention grpo --help`
lists them; the config's bases are these reversed (the last listed checks its fields first). A new GRPO term's
fields join here, and both the config and the CLI follow."""
