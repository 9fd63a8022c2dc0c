"""The capture mechanism: one interception point (`hooks`) through which the trainers, rewards and VRGA read or
steer attention, and the differentiable per-token capture built on it (`capture`). Kernels live in `..ops`."""

from .capture import AttentionCapture, capture_attention
from .hooks import WRAPPABLE, AttentionHooks, attention_hooks
from .models import CaptureError, find_decoder_layers, spatial_merge_size, unwrap_model, visual_token_ids

__all__ = [
    "WRAPPABLE",
    "AttentionCapture",
    "AttentionHooks",
    "CaptureError",
    "attention_hooks",
    "capture_attention",
    "find_decoder_layers",
    "spatial_merge_size",
    "unwrap_model",
    "visual_token_ids",
]
