"""Fused Triton kernels for head-averaged attention rows: forward and backward, FlashAttention-style.

Same math as `AttentionRowsFunction` (the torch reference in `attention_rows.py`), but no per-head probability block
ever reaches GPU memory: scores are recomputed tile by tile in on-chip memory.

Forward, two kernels:
  1. `_stats_kernel`, one program per (row block, batch*head): online max/sum over key tiles, stores the per-row
     log-sum-exp `lse` (B, H, C) (+inf for rows with no visible key, so their probabilities come out 0).
  2. `_probs_kernel`, one program per (row block, key tile, batch): loops over all heads (GQA: each key tile is
     loaded once per key/value group), adds exp(s - lse) into an on-chip accumulator and writes the (B, C, T)
     head mean once. Output written once, no atomics, deterministic.
Backward (dL/dprobs g, per head: ds = p * (g/H - delta) * scaling, delta = sum_t p * g/H):
  3. `_dq_kernel`, per (row block, batch*head): pass 1 over key tiles computes delta (stored, (B, H, C)), pass 2
     computes ds and dq = ds @ k. Two passes rather than dq = scaling*(sum p g k - delta sum p k) in one: the same
     matmul count, and ds is formed as a difference in fp32 before any 16-bit cast, so no cancellation when g
     has a large common offset (which softmax ignores).
  4. `_dk_kernel`, per (key tile, batch*kv head): loops over row blocks and the heads of its group, recomputes
     p from lse, dk += ds^T @ q. Each dk tile is owned by one program: no atomics, deterministic.
Causal masks skip key tiles (forward, dq) and row blocks (dk) that are entirely masked.

Masks are passed compactly: causality is a flag (bottom-right aligned like `normalize_mask`), a 2D padding mask
is a (B, T) byte vector, and 4D masks are read in place with their strides (bool -> keep, float -> additive
bias). Accumulation is fp32 for fp16/bf16/fp32 inputs; fp32 inputs use IEEE (not TF32) dots.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["TritonAttentionRowsFunction", "attention_rows_triton", "compact_mask", "is_interpreted", "SUPPORTED_DTYPES"]

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit
def _dot(a, b, UPCAST: tl.constexpr, PREC: tl.constexpr):
    # UPCAST: Triton's CPU interpreter computes bf16 x bf16 dots wrongly (seen with triton 3.9); fp32 there.
    if UPCAST:
        out = tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision=PREC)
    else:
        out = tl.dot(a, b, input_precision=PREC)
    return out


@triton.jit
def _mask_tile(rows, keys, b, C, T, KEEP, s_keep_b, DENSE, s_den_b, s_den_c, s_den_t,
               CAUSAL: tl.constexpr, KEY_PAD: tl.constexpr, DENSE_KIND: tl.constexpr):  # fmt: skip
    """Additive fp32 (rows, keys) tile: 0 where attended, -inf where masked, plus any dense float bias."""
    in_keys = keys < T
    ok = in_keys[None, :] & (rows[:, None] >= 0)
    if CAUSAL:
        ok = ok & (keys[None, :] <= (T - C) + rows[:, None])
    if KEY_PAD:
        keep = tl.load(KEEP + b * s_keep_b + keys, mask=in_keys, other=0)
        ok = ok & (keep != 0)[None, :]
    bias = tl.zeros((rows.shape[0], keys.shape[0]), tl.float32)
    if DENSE_KIND != 0:
        inside = (rows < C)[:, None] & in_keys[None, :]
        dense = tl.load(DENSE + b * s_den_b + rows[:, None] * s_den_c + keys[None, :] * s_den_t, mask=inside, other=0)
        if DENSE_KIND == 1:
            ok = ok & (dense != 0)
        else:
            bias = dense.to(tl.float32)
    return tl.where(ok, bias, float("-inf"))


@triton.jit
def _key_end(row_start, C, T, CAUSAL: tl.constexpr, BLOCK_C: tl.constexpr):
    """One past the last key any row of the block [row_start, row_start + BLOCK_C) can see."""
    end = T
    if CAUSAL:
        end = tl.minimum(T, tl.maximum(0, T - C + row_start + BLOCK_C))
    return end


@triton.jit
def _stats_kernel(Q, K, LSE, KEEP, DENSE, scaling,
                  s_qb, s_qh, s_qc, s_qd, s_kb, s_kh, s_kt, s_kd, s_keep_b, s_den_b, s_den_c, s_den_t,
                  H, C, T, D, GROUP,
                  CAUSAL: tl.constexpr, KEY_PAD: tl.constexpr, DENSE_KIND: tl.constexpr, UPCAST: tl.constexpr,
                  PREC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):  # fmt: skip
    pid_c, pid_bh = tl.program_id(0), tl.program_id(1)
    b, h = (pid_bh // H).to(tl.int64), pid_bh % H
    rows = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    dims = tl.arange(0, BLOCK_D)
    q_ptrs = Q + b * s_qb + h * s_qh + rows[:, None] * s_qc + dims[None, :] * s_qd
    q = tl.load(q_ptrs, mask=(rows < C)[:, None] & (dims < D)[None, :], other=0)
    k_base = K + b * s_kb + (h // GROUP) * s_kh
    row_max = tl.full((BLOCK_C,), float("-inf"), tl.float32)
    row_sum = tl.zeros((BLOCK_C,), tl.float32)
    for start in range(0, _key_end(pid_c * BLOCK_C, C, T, CAUSAL, BLOCK_C), BLOCK_T):
        keys = start + tl.arange(0, BLOCK_T)
        k = tl.load(k_base + keys[:, None] * s_kt + dims[None, :] * s_kd, mask=(keys < T)[:, None] & (dims < D)[None, :], other=0)
        s = _dot(q, tl.trans(k), UPCAST, PREC) * scaling
        s += _mask_tile(rows, keys, b, C, T, KEEP, s_keep_b, DENSE, s_den_b, s_den_c, s_den_t, CAUSAL, KEY_PAD, DENSE_KIND)
        new_max = tl.maximum(row_max, tl.max(s, 1))
        shift = tl.where(new_max == float("-inf"), 0.0, new_max)  # all-masked so far: avoid -inf - -inf
        row_sum = row_sum * tl.exp(row_max - shift) + tl.sum(tl.exp(s - shift[:, None]), 1)
        row_max = new_max
    # No visible key: lse = +inf makes exp(s - lse) = 0, the torch reference's all-zero row.
    lse = tl.where(row_sum > 0, row_max + tl.log(tl.where(row_sum > 0, row_sum, 1.0)), float("inf"))
    tl.store(LSE + pid_bh.to(tl.int64) * C + rows, lse, mask=rows < C)


@triton.jit
def _probs_kernel(Q, K, LSE, OUT, KEEP, DENSE, scaling,
                  s_qb, s_qh, s_qc, s_qd, s_kb, s_kh, s_kt, s_kd, s_ob, s_oc, s_ot, s_keep_b, s_den_b, s_den_c, s_den_t,
                  H, H_KV, C, T, D, GROUP,
                  CAUSAL: tl.constexpr, KEY_PAD: tl.constexpr, DENSE_KIND: tl.constexpr, UPCAST: tl.constexpr,
                  PREC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):  # fmt: skip
    pid_c, pid_t, b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    rows = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    keys = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    dims = tl.arange(0, BLOCK_D)
    q_mask = (rows < C)[:, None] & (dims < D)[None, :]
    k_mask = (keys < T)[:, None] & (dims < D)[None, :]
    acc = tl.zeros((BLOCK_C, BLOCK_T), tl.float32)
    num_kv = H_KV
    if CAUSAL:  # a tile wholly above the diagonal is all zeros: skip the heads
        num_kv = tl.where(pid_t * BLOCK_T >= _key_end(pid_c * BLOCK_C, C, T, CAUSAL, BLOCK_C), 0, H_KV)
    bias = _mask_tile(rows, keys, b, C, T, KEEP, s_keep_b, DENSE, s_den_b, s_den_c, s_den_t, CAUSAL, KEY_PAD, DENSE_KIND)
    for kv in range(0, num_kv):
        k_t = tl.trans(tl.load(K + b * s_kb + kv * s_kh + keys[:, None] * s_kt + dims[None, :] * s_kd, mask=k_mask, other=0))
        for j in range(0, GROUP):
            h = kv * GROUP + j
            q = tl.load(Q + b * s_qb + h * s_qh + rows[:, None] * s_qc + dims[None, :] * s_qd, mask=q_mask, other=0)
            lse = tl.load(LSE + (b * H + h) * C + rows, mask=rows < C, other=float("inf"))
            acc += tl.exp(_dot(q, k_t, UPCAST, PREC) * scaling + bias - lse[:, None])
    out_ptrs = OUT + b * s_ob + rows[:, None] * s_oc + keys[None, :] * s_ot
    tl.store(out_ptrs, acc / H, mask=(rows < C)[:, None] & (keys < T)[None, :])


@triton.jit
def _dq_kernel(Q, K, LSE, G, DQ, DELTA, KEEP, DENSE, scaling, inv_heads,
               s_qb, s_qh, s_qc, s_qd, s_kb, s_kh, s_kt, s_kd, s_gb, s_gc, s_gt, s_keep_b, s_den_b, s_den_c, s_den_t,
               H, C, T, D, GROUP,
               CAUSAL: tl.constexpr, KEY_PAD: tl.constexpr, DENSE_KIND: tl.constexpr, UPCAST: tl.constexpr,
               PREC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):  # fmt: skip
    pid_c, pid_bh = tl.program_id(0), tl.program_id(1)
    b, h = (pid_bh // H).to(tl.int64), pid_bh % H
    rows = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    dims = tl.arange(0, BLOCK_D)
    q_mask = (rows < C)[:, None] & (dims < D)[None, :]
    q = tl.load(Q + b * s_qb + h * s_qh + rows[:, None] * s_qc + dims[None, :] * s_qd, mask=q_mask, other=0)
    lse = tl.load(LSE + pid_bh.to(tl.int64) * C + rows, mask=rows < C, other=float("inf"))
    k_base = K + b * s_kb + (h // GROUP) * s_kh
    g_base = G + b * s_gb + rows[:, None] * s_gc
    end = _key_end(pid_c * BLOCK_C, C, T, CAUSAL, BLOCK_C)
    delta = tl.zeros((BLOCK_C,), tl.float32)
    for start in range(0, end, BLOCK_T):  # pass 1: delta = sum_t p * g / H
        keys = start + tl.arange(0, BLOCK_T)
        k = tl.load(k_base + keys[:, None] * s_kt + dims[None, :] * s_kd, mask=(keys < T)[:, None] & (dims < D)[None, :], other=0)
        s = _dot(q, tl.trans(k), UPCAST, PREC) * scaling
        s += _mask_tile(rows, keys, b, C, T, KEEP, s_keep_b, DENSE, s_den_b, s_den_c, s_den_t, CAUSAL, KEY_PAD, DENSE_KIND)
        g = tl.load(g_base + keys[None, :] * s_gt, mask=(rows < C)[:, None] & (keys < T)[None, :], other=0)
        delta += tl.sum(tl.exp(s - lse[:, None]) * (g.to(tl.float32) * inv_heads), 1)
    dq = tl.zeros((BLOCK_C, BLOCK_D), tl.float32)
    for start in range(0, end, BLOCK_T):  # pass 2: dq = sum_t ds * k
        keys = start + tl.arange(0, BLOCK_T)
        k = tl.load(k_base + keys[:, None] * s_kt + dims[None, :] * s_kd, mask=(keys < T)[:, None] & (dims < D)[None, :], other=0)
        s = _dot(q, tl.trans(k), UPCAST, PREC) * scaling
        s += _mask_tile(rows, keys, b, C, T, KEEP, s_keep_b, DENSE, s_den_b, s_den_c, s_den_t, CAUSAL, KEY_PAD, DENSE_KIND)
        g = tl.load(g_base + keys[None, :] * s_gt, mask=(rows < C)[:, None] & (keys < T)[None, :], other=0)
        ds = tl.exp(s - lse[:, None]) * (g.to(tl.float32) * inv_heads - delta[:, None]) * scaling
        dq += _dot(ds.to(k.dtype), k, UPCAST, PREC)
    tl.store(DQ + pid_bh.to(tl.int64) * C * D + rows[:, None] * D + dims[None, :], dq.to(DQ.dtype.element_ty), mask=q_mask)
    tl.store(DELTA + pid_bh.to(tl.int64) * C + rows, delta, mask=rows < C)


@triton.jit
def _dk_kernel(Q, K, LSE, DELTA, G, DK, KEEP, DENSE, scaling, inv_heads,
               s_qb, s_qh, s_qc, s_qd, s_kb, s_kh, s_kt, s_kd, s_gb, s_gc, s_gt, s_keep_b, s_den_b, s_den_c, s_den_t,
               H, H_KV, C, T, D, GROUP,
               CAUSAL: tl.constexpr, KEY_PAD: tl.constexpr, DENSE_KIND: tl.constexpr, UPCAST: tl.constexpr,
               PREC: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):  # fmt: skip
    pid_t, pid_bkv = tl.program_id(0), tl.program_id(1)
    b, kv = (pid_bkv // H_KV).to(tl.int64), pid_bkv % H_KV
    keys = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    dims = tl.arange(0, BLOCK_D)
    k_mask = (keys < T)[:, None] & (dims < D)[None, :]
    k_t = tl.trans(tl.load(K + b * s_kb + kv * s_kh + keys[:, None] * s_kt + dims[None, :] * s_kd, mask=k_mask, other=0))
    first = 0
    if CAUSAL:  # rows before (key - (T - C)) see none of this tile
        first = (tl.maximum(0, pid_t * BLOCK_T - (T - C)) // BLOCK_C) * BLOCK_C
    dk = tl.zeros((BLOCK_T, BLOCK_D), tl.float32)
    for row_start in range(first, C, BLOCK_C):
        rows = row_start + tl.arange(0, BLOCK_C)
        q_mask = (rows < C)[:, None] & (dims < D)[None, :]
        bias = _mask_tile(rows, keys, b, C, T, KEEP, s_keep_b, DENSE, s_den_b, s_den_c, s_den_t, CAUSAL, KEY_PAD, DENSE_KIND)
        g = tl.load(G + b * s_gb + rows[:, None] * s_gc + keys[None, :] * s_gt, mask=(rows < C)[:, None] & (keys < T)[None, :], other=0)
        g = g.to(tl.float32) * inv_heads
        for j in range(0, GROUP):
            h = kv * GROUP + j
            q = tl.load(Q + b * s_qb + h * s_qh + rows[:, None] * s_qc + dims[None, :] * s_qd, mask=q_mask, other=0)
            lse = tl.load(LSE + (b * H + h) * C + rows, mask=rows < C, other=float("inf"))
            delta = tl.load(DELTA + (b * H + h) * C + rows, mask=rows < C, other=0)
            p = tl.exp(_dot(q, k_t, UPCAST, PREC) * scaling + bias - lse[:, None])
            ds = p * (g - delta[:, None]) * scaling
            dk += _dot(tl.trans(ds.to(q.dtype)), q, UPCAST, PREC)
    out = DK + pid_bkv.to(tl.int64) * T * D + keys[:, None] * D + dims[None, :]
    tl.store(out, dk.to(DK.dtype.element_ty), mask=k_mask)


def is_interpreted() -> bool:
    """True when the kernels were built by Triton's CPU interpreter (TRITON_INTERPRET=1 before this import)."""
    return type(_stats_kernel).__name__ == "InterpretedFunction"


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


def _strides(tensor, ndim):
    return tensor.stride() if tensor is not None else (0,) * ndim


def _config(query, block_rows, block_keys):
    """Launch constants: tile sizes (>= 16 for tl.dot), fp32 dot precision, interpreter bf16 work-around."""
    interpreted = is_interpreted()
    default = 32 if interpreted else 64
    block_d = max(16, triton.next_power_of_2(query.shape[-1]))
    block_c = block_rows or (32 if block_d > 128 and not interpreted else default)
    block_t = block_keys or (32 if block_d > 128 and not interpreted else default)
    return dict(
        UPCAST=interpreted and query.dtype == torch.bfloat16, PREC="ieee" if query.dtype == torch.float32 else "tf32",
        BLOCK_C=block_c, BLOCK_T=block_t, BLOCK_D=block_d,
    )  # fmt: skip


def _mask_args(b_dim, key_keep, dense):
    """Pointers and strides of the optional masks (a 0-d placeholder when absent; batch stride 0 if broadcast)."""
    keep_stride = key_keep.stride(0) if key_keep is not None and key_keep.shape[0] == b_dim else 0
    den = _strides(dense, 3)
    if dense is not None and dense.shape[0] != b_dim:
        den = (0,) + tuple(den[1:])
    return keep_stride, den


class TritonAttentionRowsFunction(torch.autograd.Function):
    """`AttentionRowsFunction` with fused kernels. Saves q, k, masks and the (B, H, C) lse; never H*C*T."""

    @staticmethod
    def forward(ctx, query, key, key_keep, dense, dense_kind, causal, scaling, block_rows=None, block_keys=None):
        batch, heads, rows, dim = query.shape
        kv_heads, length = key.shape[1], key.shape[2]
        if heads % kv_heads:
            raise ValueError(f"query heads ({heads}) must be a multiple of key/value heads ({kv_heads})")
        cfg = _config(query, block_rows, block_keys)
        flags = dict(CAUSAL=bool(causal), KEY_PAD=key_keep is not None, DENSE_KIND=dense_kind, **cfg)
        keep_stride, den = _mask_args(batch, key_keep, dense)
        placeholder = query.new_empty(1)
        keep_arg = key_keep if key_keep is not None else placeholder
        dense_arg = dense if dense is not None else placeholder
        lse = torch.empty(batch, heads, rows, dtype=torch.float32, device=query.device)
        out = torch.empty(batch, rows, length, dtype=torch.float32, device=query.device)
        blocks_c = triton.cdiv(rows, cfg["BLOCK_C"])
        common = (*query.stride(), *key.stride())
        with _device(query):
            _stats_kernel[(blocks_c, batch * heads)](
                query, key, lse, keep_arg, dense_arg, scaling, *common, keep_stride, *den,
                heads, rows, length, dim, heads // kv_heads, **flags,
            )  # fmt: skip
            _probs_kernel[(blocks_c, triton.cdiv(length, cfg["BLOCK_T"]), batch)](
                query, key, lse, out, keep_arg, dense_arg, scaling, *common, *out.stride(), keep_stride, *den,
                heads, kv_heads, rows, length, dim, heads // kv_heads, **flags,
            )  # fmt: skip
        ctx.save_for_backward(query, key, lse, key_keep, dense)
        ctx.flags, ctx.scaling = flags, scaling
        return out

    @staticmethod
    def backward(ctx, grad_out):
        query, key, lse, key_keep, dense = ctx.saved_tensors
        batch, heads, rows, dim = query.shape
        kv_heads, length = key.shape[1], key.shape[2]
        flags = ctx.flags
        keep_stride, den = _mask_args(batch, key_keep, dense)
        placeholder = query.new_empty(1)
        keep_arg = key_keep if key_keep is not None else placeholder
        dense_arg = dense if dense is not None else placeholder
        grad = grad_out if grad_out.dtype == torch.float32 else grad_out.float()
        common = (*query.stride(), *key.stride(), *grad.stride(), keep_stride, *den)
        dq = torch.empty(batch, heads, rows, dim, dtype=query.dtype, device=query.device)
        delta = torch.empty(batch, heads, rows, dtype=torch.float32, device=query.device)
        dk = torch.empty(batch, kv_heads, length, dim, dtype=key.dtype, device=key.device)
        with _device(query):
            _dq_kernel[(triton.cdiv(rows, flags["BLOCK_C"]), batch * heads)](
                query, key, lse, grad, dq, delta, keep_arg, dense_arg, ctx.scaling, 1.0 / heads, *common,
                heads, rows, length, dim, heads // kv_heads, **flags,
            )  # fmt: skip
            if ctx.needs_input_grad[1]:
                _dk_kernel[(triton.cdiv(length, flags["BLOCK_T"]), batch * kv_heads)](
                    query, key, lse, delta, grad, dk, keep_arg, dense_arg, ctx.scaling, 1.0 / heads, *common,
                    heads, kv_heads, rows, length, dim, heads // kv_heads, **flags,
                )  # fmt: skip
        return (dq if ctx.needs_input_grad[0] else None, dk if ctx.needs_input_grad[1] else None) + (None,) * 7


def _device(tensor):
    """Launch on the tensor's GPU (Triton uses the current device); a no-op on CPU (interpreter)."""
    return torch.cuda.device(tensor.device) if tensor.is_cuda else _NullContext()


class _NullContext:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def attention_rows_triton(q_rows, key, attention_mask, scaling, is_causal, block_rows=None, block_keys=None):
    """(B, C, T) fp32 head-mean probabilities of `q_rows` (B, H, C, D) over `key` (B, H_kv, T, D), differentiable.

    `attention_mask` / `is_causal` as in `normalize_mask` (is_causal already False for single-token queries).
    """
    causal, key_keep, dense, kind = compact_mask(attention_mask, q_rows.shape[2], key.shape[2], is_causal)
    return TritonAttentionRowsFunction.apply(q_rows, key, key_keep, dense, kind, causal, scaling, block_rows, block_keys)
