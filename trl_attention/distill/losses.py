"""The distillation terms: attention JSD between two captures, GKD's token JSD, and the student's final hidden
states (TRL's fused LM head never materialises the logits the token term needs)."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from ..capture import unwrap_model
from ..losses import attention_policy, jsd
from ..trl_internals import generalized_jsd as token_generalized_jsd

__all__ = ["attention_distill_per_token", "backbone_hidden_states", "extra_forward_kwargs", "token_generalized_jsd"]


def attention_distill_per_token(student_probs: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
    """(B, C) JSD(p_student^t || p_teacher^t) of the RAL attention policies of two (B, C, T) captures."""
    if student_probs.shape != teacher_probs.shape:
        raise RuntimeError(
            f"student and teacher attention captures differ in shape: {tuple(student_probs.shape)} vs "
            f"{tuple(teacher_probs.shape)}; both models must see the same tokens"
        )
    return jsd(attention_policy(student_probs), attention_policy(teacher_probs.to(student_probs.device)).detach())


@contextlib.contextmanager
def extra_forward_kwargs(module: nn.Module, extras: dict):
    """Add keyword arguments (pixel_values, image_grid_thw, ...) to every forward call of `module` in the block, for
    TRL code paths that call `model(input_ids=..., attention_mask=...)` only."""
    if not extras:
        yield
        return

    def hook(_module, args, kwargs):
        return args, {**extras, **kwargs}

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


@contextlib.contextmanager
def backbone_hidden_states(model: nn.Module):
    """Collect the final hidden states (B, T, H) of the model's backbone in the block, with their graph.

    TRL's fused LM head never materialises the policy's logits; the teacher term needs them over the completion,
    so it projects these hidden states with the model's own output embedding instead of running a second forward.
    """
    records: list[torch.Tensor] = []
    base = unwrap_model(model)
    backbone = base.base_model if base.base_model is not base else base

    def hook(_module, _args, output):
        hidden = getattr(output, "last_hidden_state", None)
        records.append(output[0] if hidden is None else hidden)

    handle = backbone.register_forward_hook(hook)
    try:
        yield records
    finally:
        handle.remove()
