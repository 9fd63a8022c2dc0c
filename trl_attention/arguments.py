"""Config plumbing shared by every method's fields: the trainers' configs are TRL's config with plain dataclasses of
fields mixed in (`AttentionGRPOConfig(VideoArguments, GRPOTeacherArguments, RALArguments, GRPOConfig)`), so each
mixin checks its own fields and then hands on to the next `__post_init__` in the MRO (`chain_post_init`).

The plain dataclasses let `trl-attention ... --help` list the fields without importing TRL.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

__all__ = ["AttentionModelArguments", "chain_post_init", "check_capture_checkpointing", "check_weight"]


def chain_post_init(self, cls) -> None:
    """Run the `__post_init__` after `cls`'s in the MRO (TRL's config when mixed in), if any: alone, the field
    dataclasses have none. Call it from `cls.__post_init__` after checking `cls`'s own fields."""
    parent = getattr(super(cls, self), "__post_init__", None)
    if parent is not None:
        parent()


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


@dataclass
class AttentionModelArguments:
    """The fields both trainers declare about the student: which layer's attention the attention terms read, and
    whether its vision tower trains."""

    attn_layer: int = field(
        default=-1,
        metadata={
            "help": "Attention layer the attention terms read (RAL's policy, rewards, metrics, distillation; -1 = "
            "the last), among softmax-attention layers (hybrids' Mamba / linear layers skipped)."
        },
    )
    freeze_vision_tower: bool = field(
        default=False,
        metadata={
            "help": "Freeze the vision encoder and projector before the optimizer is built (train the LM only)."
        },
    )
    validation_rows: int | None = field(
        default=256,
        metadata={
            "help": "Rows per dataset whose images are checked at construction (None: all); sampled rows always."
        },
    )

    def __post_init__(self):
        rows = self.validation_rows
        if rows is not None and (isinstance(rows, bool) or not isinstance(rows, int) or rows < 0):
            raise ValueError(f"validation_rows must be an int >= 0 or None, got {self.validation_rows!r}")
        chain_post_init(self, AttentionModelArguments)
