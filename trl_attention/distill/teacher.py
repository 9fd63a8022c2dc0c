"""The teacher of on-policy attention distillation, shared by `AttentionGKDTrainer` and the teacher terms of
`AttentionGRPOTrainer` (docs/papers.md section 1): loading it, the checks both trainers run at construction, and
preparing it like TRL's reference models.

Student and teacher may differ in depth, width and head count: both captures are head-averaged (B, C, T) rows over
the same tokens, so they compare position by position.
"""

from __future__ import annotations

import torch
from torch import nn

from ..capture import unwrap_model
from ..loading import load_pretrained
from ..trl_internals import disable_dropout_in_model, prepare_deepspeed, prepare_fsdp
from .tokenization import check_same_tokenization

__all__ = ["check_teacher", "load_teacher", "prepare_teacher"]


def load_teacher(teacher: str, init_kwargs: dict | None = None, trust_remote_code: bool = False) -> nn.Module:
    """Load a teacher from a path or hub id with `teacher_model_init_kwargs` (a string dtype becomes torch's)."""
    kwargs = dict(init_kwargs or {})
    dtype = kwargs.get("dtype")
    if isinstance(dtype, str) and dtype != "auto":
        kwargs["dtype"] = getattr(torch, dtype)
    kwargs.setdefault("trust_remote_code", trust_remote_code)
    return load_pretrained(teacher, **kwargs)


def check_teacher(
    student: nn.Module, teacher: nn.Module, processing_class, attention: bool, layer: int = -1, teacher_layer: int = -1
) -> None:
    """What both trainers check at construction: identical tokenisation and, when attention is distilled, a teacher
    that is another model and two capturable layers whose kernel options the capture supports (so an unsupported
    model, attention option or out-of-range layer fails now, not at step 1)."""
    check_same_tokenization(student, teacher, processing_class)
    if not attention:
        return
    if unwrap_model(teacher) is unwrap_model(student):
        raise ValueError("attention distillation needs a teacher that is a different model from the student")
    from ..distributed import check_capture_supported  # lazy: distributed imports the capture package

    check_capture_supported(student, layer, "attn_layer")
    check_capture_supported(teacher, teacher_layer, "teacher_attn_layer")


def prepare_teacher(teacher: nn.Module, trainer) -> nn.Module:
    """Prepare a frozen teacher the way TRL prepares reference models: ZeRO-3 sharded under DeepSpeed stage 3, FSDP
    wrapped under FSDP, else placed by accelerate for evaluation. Dropout off, no gradients."""
    if getattr(trainer.args, "disable_dropout", False):
        disable_dropout_in_model(teacher)
    teacher.eval().requires_grad_(False)
    if trainer.is_deepspeed_enabled:
        return prepare_deepspeed(teacher, trainer.accelerator)
    if trainer.is_fsdp_enabled:
        return prepare_fsdp(teacher, trainer.accelerator)
    return trainer.accelerator.prepare_model(teacher, evaluation_mode=True)
