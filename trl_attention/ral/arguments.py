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
            "help": "Several layers for RAL's term, the divergence averaged over them (indexed like attn_layer; "
            "None = attn_layer alone, the paper). Rewards, metrics, distillation keep attn_layer."
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
            "help": "'mean' (the paper): the divergence of the head-averaged attention; 'per_head': per query "
            "head, averaged (p_old H times larger). Rewards, metrics, distillation keep the mean."
        },
    )
    attn_reference: str = field(
        default="rollout",
        metadata={
            "help": "RAL's reference: 'rollout' (paper, p_old) or 'group' (opt-in: the mean attention of the "
            "group's A > 0 rollouts; acts without reuse, docs/ral.md)."
        },
    )

    def __post_init__(self):
        check_weight(self, "attn_coef")
        from .group_reference import ATTN_REFERENCES

        if self.attn_reference not in ATTN_REFERENCES:
            raise ValueError(f"attn_reference must be one of {list(ATTN_REFERENCES)}, got {self.attn_reference!r}")
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
        if self.attn_reference == "group" and (self.attn_heads != "mean" or self.attn_layers is not None):
            raise ValueError(
                "attn_reference='group' pulls attn_layer's head-averaged attention toward its group's target: it "
                f"takes attn_heads='mean' and attn_layers=None, got {self.attn_heads!r} and {self.attn_layers!r}"
            )
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
