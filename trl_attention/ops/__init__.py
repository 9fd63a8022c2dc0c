"""Numeric kernels behind the capture layer: the torch reference and fused Triton kernels behind one dispatcher."""

from .attention_rows import BACKENDS, AttentionRowsFunction, attention_rows, normalize_mask, resolve_backend

__all__ = ["BACKENDS", "AttentionRowsFunction", "attention_rows", "normalize_mask", "resolve_backend"]
