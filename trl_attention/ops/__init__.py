"""Numeric kernels behind the capture layer (torch reference; fused kernels share the same signatures)."""

from .attention_rows import AttentionRowsFunction, attention_rows, normalize_mask

__all__ = ["AttentionRowsFunction", "attention_rows", "normalize_mask"]
