"""Fused Triton kernels for head-averaged (or per-head) attention rows: forward and backward, FlashAttention-style.

Same math as `AttentionRowsFunction` (the torch reference in `attention_rows.py`), but no per-head probability block
ever reaches GPU memory: scores are recomputed tile by tile in on-chip memory.

Forward, two kernels:
  1. `_stats_kernel`, one program per (row block, batch*head): online max/sum over key tiles, stores per row the
     max m and 1/sum (B, H, 2, C). Not a single log-sum-exp: with eager's finfo.min masks a fully masked row has
     m ~ -3.4e38, where m + log(sum) rounds back to m and exp(s - lse) would give 1 per key instead of 1/T.
     Rows with no visible key store 1/sum = 0, so their probabilities come out 0 as in the torch reference.
  2. `_probs_kernel`, one program per (row block, key tile, batch): loops over all heads (GQA: each key tile is
     loaded once per key/value group), adds exp(s - m) / sum into an on-chip accumulator and writes the (B, C, T)
     head mean once. Output written once, no atomics, deterministic. PER_HEAD (`per_head=True`): each head's
     tile is stored to the (B, H, C, T) output instead of being summed.
Backward (dL/dprobs g, per head: ds = p * (g/H - delta) * scaling, delta = sum_t p * g/H):
  3. `_dq_kernel`, per (row block, batch*head): pass 1 over key tiles computes delta (stored, (B, H, C)), pass 2
     computes ds and dq = ds @ k. Two passes rather than dq = scaling*(sum p g k - delta sum p k) in one: the same
     matmul count, and ds is formed as a difference in fp32 before any 16-bit cast, so no cancellation when g
     has a large common offset (which softmax ignores).
  4. `_dk_kernel`, per (key tile, batch*kv head): loops over row blocks and the heads of its group, recomputes
     p from the stats, dk += ds^T @ q. Each dk tile is owned by one program: no atomics, deterministic.
With PER_HEAD g is (B, H, C, T), read per head and not divided by H (in the mean it is shared: head stride 0).
Causal masks skip key tiles (forward, dq) and row blocks (dk) that are entirely masked.

Masks are passed compactly: causality is a flag (bottom-right aligned like `normalize_mask`), a 2D padding mask
is a (B, T) byte vector, and 4D masks are read in place with their strides (bool -> keep, float -> additive
bias). Accumulation is fp32 for fp16/bf16/fp32 inputs; fp32 inputs use IEEE (not TF32) dots.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

from .attention_rows_kernels import SUPPORTED_DTYPES, _dk_kernel, _dq_kernel, _probs_kernel, _stats_kernel

__all__ = ["TritonAttentionRowsFunction", "attention_rows_triton", "compact_mask", "is_interpreted"]


def is_interpreted() -> bool:
    """True when Triton's CPU interpreter runs these kernels: TRITON_INTERPRET=1 was set before triton was imported.

    Both checks matter: set after triton's import but before this module's, our kernels are interpreted but
    triton's own @jit helpers (tl.zeros, ...) are not, and the kernels fail inside the interpreter.
    """
    ours = type(_stats_kernel).__name__ == "InterpretedFunction"
    return ours and not isinstance(getattr(tl, "zeros", None), triton.runtime.jit.JITFunction)


def compact_mask(attention_mask, rows: int, kv_len: int, is_causal: bool):
    """The mask in the kernels' compact form: (causal, key_keep (B, T) uint8 | None, dense | None, dense_kind).

    Same semantics as `normalize_mask`: None -> causal flag; 2D padding (1 = keep) -> byte vector + causal flag;
    4D bool (True = attend) -> read in place as bytes (kind 1); 4D float -> additive bias read in place (kind 2).
    """
    if attention_mask is None:
        return is_causal, None, None, 0
    if attention_mask.dim() == 2:
        return is_causal, attention_mask[:, -kv_len:].bool().to(torch.uint8).contiguous(), None, 0
    if attention_mask.dim() != 4:
        raise ValueError(f"unsupported attention mask of shape {tuple(attention_mask.shape)}")
    if attention_mask.shape[1] != 1:
        raise ValueError(f"per-head attention masks are not supported (mask shape {tuple(attention_mask.shape)})")
    dense = attention_mask[:, 0, -rows:, -kv_len:]
    if dense.dtype == torch.bool:
        return False, None, dense.view(torch.uint8), 1
    if dense.dtype not in SUPPORTED_DTYPES:
        dense = dense.float()
    return False, None, dense, 2


def _config(query, block_rows, block_keys):
    """Launch constants: tile sizes (>= 16 for tl.dot), fp32 dot precision, interpreter bf16 work-around."""
    interpreted = is_interpreted()
    block_d = max(16, triton.next_power_of_2(query.shape[-1]))
    # 64x64 tiles for 16-bit inputs and head dims <= 128; fp32 or larger head dims double the registers and shared
    # memory per tile, so 32. Untuned guesses: no GPU was available when these kernels were written.
    default = 32 if interpreted or block_d > 128 or query.dtype == torch.float32 else 64
    return {
        "UPCAST": interpreted and query.dtype == torch.bfloat16,
        "PREC": "ieee" if query.dtype == torch.float32 else "tf32",
        "BLOCK_C": block_rows or default,
        "BLOCK_T": block_keys or default,
        "BLOCK_D": block_d,
    }


def _mask_args(query, key_keep, dense):
    """Mask pointers (a placeholder when absent: never read) and strides (batch stride 0 when broadcast)."""
    batch = query.shape[0]
    keep_stride = key_keep.stride(0) if key_keep is not None and key_keep.shape[0] == batch else 0
    den = tuple(dense.stride()) if dense is not None else (0, 0, 0)
    if dense is not None and dense.shape[0] != batch:
        den = (0,) + den[1:]
    placeholder = query.new_empty(1)
    keep = key_keep if key_keep is not None else placeholder
    return (keep, dense if dense is not None else placeholder), (keep_stride, *den)


def _device(tensor):
    """Launch on the tensor's GPU (Triton uses the current device); nothing to do on CPU (interpreter)."""
    return torch.cuda.device(tensor.device) if tensor.is_cuda else contextlib.nullcontext()


class TritonAttentionRowsFunction(torch.autograd.Function):
    """`AttentionRowsFunction` with fused kernels. Saves q, k, masks and the (B, H, 2, C) stats; never H*C*T
    (`per_head`: the output itself is (B, H, C, T))."""

    @staticmethod
    def forward(
        ctx,
        query,
        key,
        key_keep,
        dense,
        dense_kind,
        causal,
        scaling,
        block_rows=None,
        block_keys=None,
        softcap=None,
        sinks=None,
        window=None,
        per_head=False,
    ):
        batch, heads, rows, dim = query.shape
        kv_heads, length = key.shape[1], key.shape[2]
        if heads % kv_heads:
            raise ValueError(f"query heads ({heads}) must be a multiple of key/value heads ({kv_heads})")
        cfg = _config(query, block_rows, block_keys)
        flags = {"CAUSAL": bool(causal), "KEY_PAD": key_keep is not None, "DENSE_KIND": dense_kind}
        flags.update(WINDOW=window is not None, SOFTCAP=softcap is not None, SINK=sinks is not None, **cfg)
        flags["PER_HEAD"] = bool(per_head)
        sink_values = sinks.detach().float().contiguous() if sinks is not None else None
        masks, mask_strides = _mask_args(query, key_keep, dense)
        masks = (*masks, sink_values if sink_values is not None else masks[1])
        extras = (float(softcap or 1.0), int(window or 0))
        stats = torch.empty(batch, heads, 2, rows, dtype=torch.float32, device=query.device)
        shape = (batch, heads, rows, length) if per_head else (batch, rows, length)
        out = torch.zeros(shape, dtype=torch.float32, device=query.device)  # contiguous: the kernel relies on it
        out_strides = out.stride() if per_head else (out.stride(0), 0, *out.stride()[1:])
        sizes = (heads, rows, length, dim, heads // kv_heads)
        if out.numel():
            blocks_c, qk = triton.cdiv(rows, cfg["BLOCK_C"]), (*query.stride(), *key.stride())
            with _device(query):
                _stats_kernel[(blocks_c, batch * heads)](
                    query, key, stats, *masks, scaling, *extras, *qk, *mask_strides, *sizes, **flags
                )
                _probs_kernel[(blocks_c, triton.cdiv(length, cfg["BLOCK_T"]), batch)](
                    query,
                    key,
                    stats,
                    out,
                    *masks,
                    scaling,
                    *extras,
                    *qk,
                    *out_strides,
                    *mask_strides,
                    heads,
                    kv_heads,
                    *sizes[1:],
                    **flags,
                )
        ctx.save_for_backward(query, key, stats, key_keep, dense, sinks, sink_values)
        ctx.flags, ctx.scaling, ctx.extras = flags, scaling, extras
        return out

    @staticmethod
    def backward(ctx, grad_out):
        query, key, stats, key_keep, dense, sinks, sink_values = ctx.saved_tensors
        batch, heads, rows, dim = query.shape
        kv_heads, length = key.shape[1], key.shape[2]
        flags, need_q, need_k = ctx.flags, ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        masks, mask_strides = _mask_args(query, key_keep, dense)
        masks = (*masks, sink_values if sink_values is not None else masks[1])
        grad = grad_out if grad_out.dtype == torch.float32 else grad_out.float()
        per_head = flags["PER_HEAD"]
        grad_strides = grad.stride() if per_head else (grad.stride(0), 0, *grad.stride()[1:])  # head stride 0
        strides = (*query.stride(), *key.stride(), *grad_strides, *mask_strides)
        dq = torch.zeros_like(query)  # computed even when only dk is asked for: its pass 1 yields delta
        delta = torch.zeros(batch, heads, rows, dtype=torch.float32, device=query.device)
        dk = torch.zeros_like(key) if need_k else None
        if grad.numel():
            args = (ctx.scaling, *ctx.extras, 1.0 if per_head else 1.0 / heads, *strides)
            with _device(query):
                _dq_kernel[(triton.cdiv(rows, flags["BLOCK_C"]), batch * heads)](
                    query,
                    key,
                    stats,
                    grad,
                    dq,
                    delta,
                    *masks,
                    *args,
                    heads,
                    rows,
                    length,
                    dim,
                    heads // kv_heads,
                    **flags,
                )
                if need_k:
                    _dk_kernel[(triton.cdiv(length, flags["BLOCK_T"]), batch * kv_heads)](
                        query,
                        key,
                        stats,
                        delta,
                        grad,
                        dk,
                        *masks,
                        *args,
                        heads,
                        kv_heads,
                        rows,
                        length,
                        dim,
                        heads // kv_heads,
                        **flags,
                    )
        dsink = None
        if sinks is not None and ctx.needs_input_grad[10]:  # d sink = -sum p_sink * delta, p_sink from the stats
            row_max, inv_sum = stats[:, :, 0], stats[:, :, 1]
            p_sink = torch.exp(sink_values[None, :, None] - row_max) * inv_sum
            dsink = -(p_sink * delta).sum(dim=(0, 2)).to(sinks.dtype)
        return (dq if need_q else None, dk) + (None,) * 8 + (dsink, None, None)


def attention_rows_triton(
    q_rows,
    key,
    attention_mask,
    scaling,
    is_causal,
    block_rows=None,
    block_keys=None,
    *,
    softcap=None,
    sinks=None,
    sliding_window=None,
    per_head=False,
):
    """(B, C, T) fp32 head-mean probabilities of `q_rows` (B, H, C, D) over `key` (B, H_kv, T, D), differentiable.

    `attention_mask` / `is_causal` / `sliding_window` as in `normalize_mask` (is_causal already False for
    single-token queries); `softcap` and `sinks` (H,) as in `attention_rows`. `per_head`: (B, H, C, T), every
    query head's rows (`attention_rows(..., heads="all")`).
    """
    causal, key_keep, dense, kind = compact_mask(attention_mask, q_rows.shape[2], key.shape[2], is_causal)
    if sliding_window is not None and (dense is not None or key.shape[2] <= sliding_window):
        sliding_window = None  # a 4D mask already holds the window; a short sequence fits in it
    blocks = (block_rows, block_keys)
    softcap = None if softcap is None else float(softcap)
    return TritonAttentionRowsFunction.apply(
        q_rows, key, key_keep, dense, kind, causal, scaling, *blocks, softcap, sinks, sliding_window, per_head
    )
