"""Differentiable per-token attention capture: `capture_attention(model, num_rows=C, layer=-1)`.

Records, through the hooks of `hooks.py`, the head-averaged attention rows of the last C queries of one decoder
layer with `ops.attention_rows` (fp32 softmax, O(B*C*T) memory, recomputing backward); `heads="all"` records every
query head's rows instead, (B, H, C, T). `backend` picks that kernel:
"auto" (fused Triton on CUDA when triton imports, else torch), "torch" or "triton". Any attention implementation
is wrapped (sdpa, eager, flash-attention, flex, hub kernels): the rows are computed from q/k with the mask rebuilt
from what that kernel was given (`ops.masks.kernel_mask`), and with its `softcap`, `s_aux` sinks and
`sliding_window`.

Why the saved-tensor hooks: under non-reentrant gradient checkpointing the layer is re-run during backward, after
this context has exited, with the original kernel. Saving the capture's tensors outside the checkpoint's hooks keeps
the recomputation's saved-tensor sequence identical to a forward without capture, so both paths agree.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
from torch import nn
from typing_extensions import Self

from ..ops.attention_rows import HEADS, attention_rows, resolve_backend
from ..ops.masks import kernel_mask
from .hooks import ANY, AttentionHooks, attention_hooks, flash_convention
from .models import CaptureError, find_decoder_layers

__all__ = ["AttentionCapture", "capture_attention"]


@dataclass
class AttentionCapture:
    """Captured attention rows. Use through `capture_attention(...)`; read `probs` (or `records`) afterwards."""

    model: nn.Module
    num_rows: int | None = None
    layer: int = -1
    max_heads: int | None = None
    backend: str = "auto"
    heads: str = "mean"
    records: list = field(default_factory=list)
    _hooks: AttentionHooks | None = field(default=None, repr=False)

    def __post_init__(self):
        if self.heads not in HEADS:
            raise CaptureError(f"capture_attention(heads={self.heads!r}): choose one of {', '.join(HEADS)}")
        if self.num_rows is not None:
            try:
                rows = None if isinstance(self.num_rows, bool) else operator.index(self.num_rows)
            except TypeError:
                rows = None
            if rows is None or rows < 1:
                raise CaptureError(
                    f"capture_attention(num_rows={self.num_rows!r}): an int >= 1 (the last rows), or None for all"
                )
        self._hooks = attention_hooks(self.model, self._observe, layers=[self.layer], implementations=ANY)
        self.layer_index = self._hooks.layers[0]  # among the attention layers
        self.model_layer_index = self._hooks.model_layers[0]  # the model's own decoder layer index
        # flash-attention style kernels get packing as cu_seq_lens / position_ids, not inside a 4D mask
        self._varlen = flash_convention(self._hooks._base)
        weight = next(self._hooks.modules[0].parameters(), None)
        try:  # fail here, not at the first forward, on a bad or unavailable backend
            resolve_backend(self.backend, weight.device if weight is not None else "cpu")
        except (ValueError, RuntimeError) as err:
            raise CaptureError(f"capture_attention(backend={self.backend!r}): {err}") from err

    # -- context management -------------------------------------------------------------------------------------
    def __enter__(self) -> Self:
        if self._hooks._depth == 0:
            self._check_checkpointing()
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)

    def _check_checkpointing(self):
        layer = find_decoder_layers(self.model)[self.model_layer_index]
        func = getattr(layer, "_gradient_checkpointing_func", None)
        reentrant = getattr(func, "keywords", {}).get("use_reentrant", False)
        if torch.is_grad_enabled() and layer.gradient_checkpointing and layer.training and reentrant:
            raise CaptureError(
                "capture_attention needs non-reentrant gradient checkpointing to get gradients (reentrant "
                "checkpointing runs the layer under no_grad); set gradient_checkpointing_kwargs="
                "{'use_reentrant': False}."
            )

    # -- recording ----------------------------------------------------------------------------------------------
    def _observe(self, layer, module, query, key, value, attention_mask, output, kwargs):
        self._record(module, query, key, attention_mask, kwargs)

    def _record(self, module, query, key, attention_mask, kwargs):
        if kwargs.get("position_bias") is not None:
            raise CaptureError(
                f"capture_attention does not support attention with `position_bias` ({type(module).__name__})"
            )
        if kwargs.get("cache") is not None or kwargs.get("block_table") is not None:
            raise CaptureError("capture_attention does not support paged attention (continuous batching)")
        is_causal = kwargs.get("is_causal")
        is_causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
        batch, _, q_len, _ = query.shape
        rows = q_len if self.num_rows is None else min(int(self.num_rows), q_len)
        try:
            mask, is_causal, window = kernel_mask(
                attention_mask, kwargs, batch, rows, q_len, key.shape[2], is_causal, self._varlen, query.device
            )
        except ValueError as err:
            raise CaptureError(f"capture_attention: {err}") from err
        # Identity hooks: keep the capture's saved tensors out of any enclosing checkpoint (see module docstring).
        with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
            probs = attention_rows(
                query,
                key,
                mask,
                kwargs.get("scaling"),
                is_causal,
                rows,
                self.max_heads,
                backend=self.backend,
                softcap=kwargs.get("softcap"),
                sinks=kwargs.get("s_aux"),
                sliding_window=window,
                heads=self.heads,
            )
        self.records.append(probs)

    @property
    def probs(self) -> torch.Tensor:
        """(B, C, T) ((B, H, C, T) with heads="all"): all recorded forwards concatenated along the batch (TRL
        scores a batch in chunks)."""
        if not self.records:
            raise CaptureError("no attention was captured: no forward of the language model ran inside the capture")
        if len(self.records) == 1:
            return self.records[0]
        shapes = {tuple(r.shape[1:]) for r in self.records}
        if len(shapes) > 1:
            raise CaptureError(f"captured forwards have different row/key sizes {sorted(shapes)}; read `records`")
        return torch.cat(self.records, dim=0)

    def clear(self) -> None:
        self.records.clear()


def capture_attention(
    model: nn.Module,
    num_rows: int | None = None,
    layer: int = -1,
    max_heads: int | None = None,
    backend: str = "auto",
    heads: str = "mean",
):
    """Context manager capturing the head-averaged attention of the last `num_rows` queries of decoder `layer`.

    Every forward of the language model inside the block appends one (B, C, T) fp32 tensor to `cap.records`;
    `cap.probs` concatenates them. Rows are differentiable w.r.t. the model when grad is enabled. Entering the same
    capture again keeps accumulating; call `cap.clear()` to start over. `backend`: "auto" (fused Triton kernels on
    CUDA when triton imports, else the torch reference), "torch", or "triton" (a CaptureError where it cannot run).
    `heads`: "mean" (the head average) or "all": one row per query head, (B, H, C, T) (GQA heads each their own).
    """
    return AttentionCapture(model, num_rows=num_rows, layer=layer, max_heads=max_heads, backend=backend, heads=heads)
