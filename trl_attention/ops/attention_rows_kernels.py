"""The Triton kernels behind `attention_rows_triton` (the launcher, its autograd Function and the algorithm are
described in `attention_rows_triton.py`). Kept apart so each file reads on its own: here the on-chip math only."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["SUPPORTED_DTYPES", "_dk_kernel", "_dq_kernel", "_probs_kernel", "_stats_kernel"]

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
def _tile(base, idx, n, s_idx, cols, n_cols, s_col):
    """Rows `idx` x columns `cols` of an (n, n_cols) matrix at `base`; zeros past its edges."""
    mask = (idx < n)[:, None] & (cols < n_cols)[None, :]
    return tl.load(base + idx[:, None] * s_idx + cols[None, :] * s_col, mask=mask, other=0)


@triton.jit
def _mask_tile(
    rows,
    keys,
    C,
    T,
    keep,
    dense,
    s_den_c,
    s_den_t,
    CAUSAL: tl.constexpr,
    KEY_PAD: tl.constexpr,
    DENSE_KIND: tl.constexpr,
):
    """Additive fp32 (rows, keys) tile: 0 where attended, -inf where masked, plus any dense float bias.

    `keep` / `dense` already point at this batch element's (T,) padding vector / (C, T) mask.
    """
    ok = (keys < T)[None, :] & (rows[:, None] >= 0)
    if CAUSAL:  # bottom-right aligned: row r sits at absolute position T - C + r
        ok = ok & (keys[None, :] <= (T - C) + rows[:, None])
    if KEY_PAD:
        ok = ok & (tl.load(keep + keys, mask=keys < T, other=0) != 0)[None, :]
    bias = tl.zeros((rows.shape[0], keys.shape[0]), tl.float32)
    if DENSE_KIND == 1:
        ok = ok & (_tile(dense, rows, C, s_den_c, keys, T, s_den_t) != 0)
    if DENSE_KIND == 2:
        bias = _tile(dense, rows, C, s_den_c, keys, T, s_den_t).to(tl.float32)
    return tl.where(ok, bias, float("-inf"))


@triton.jit
def _load_stats(STATS, bh, C, rows):
    """(row max, 1/row sum) of one head; rows past C get (+inf, 0): probability 0 whatever the score."""
    base = STATS + bh.to(tl.int64) * 2 * C + rows
    return tl.load(base, mask=rows < C, other=float("inf")), tl.load(base + C, mask=rows < C, other=0.0)


@triton.jit
def _key_end(row_start, C, T, CAUSAL: tl.constexpr, BLOCK_C: tl.constexpr):
    """One past the last key any row of the block [row_start, row_start + BLOCK_C) can see."""
    end = T
    if CAUSAL:
        end = tl.minimum(T, tl.maximum(0, T - C + row_start + BLOCK_C))
    return end


@triton.jit
def _stats_kernel(
    Q,
    K,
    STATS,
    KEEP,
    DENSE,
    scaling,
    s_qb,
    s_qh,
    s_qc,
    s_qd,
    s_kb,
    s_kh,
    s_kt,
    s_kd,
    s_keep_b,
    s_den_b,
    s_den_c,
    s_den_t,
    H,
    C,
    T,
    D,
    GROUP,
    CAUSAL: tl.constexpr,
    KEY_PAD: tl.constexpr,
    DENSE_KIND: tl.constexpr,
    UPCAST: tl.constexpr,
    PREC: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_c, pid_bh = tl.program_id(0), tl.program_id(1)
    b, h = (pid_bh // H).to(tl.int64), pid_bh % H
    keep, dense = KEEP + b * s_keep_b, DENSE + b * s_den_b
    rows, dims = pid_c * BLOCK_C + tl.arange(0, BLOCK_C), tl.arange(0, BLOCK_D)
    q = _tile(Q + b * s_qb + h * s_qh, rows, C, s_qc, dims, D, s_qd)
    k_base = K + b * s_kb + (h // GROUP) * s_kh
    row_max = tl.full((BLOCK_C,), float("-inf"), tl.float32)
    row_sum = tl.zeros((BLOCK_C,), tl.float32)
    for start in range(0, _key_end(pid_c * BLOCK_C, C, T, CAUSAL, BLOCK_C), BLOCK_T):
        keys = start + tl.arange(0, BLOCK_T)
        k = _tile(k_base, keys, T, s_kt, dims, D, s_kd)
        s = _dot(q, tl.trans(k), UPCAST, PREC) * scaling
        s += _mask_tile(rows, keys, C, T, keep, dense, s_den_c, s_den_t, CAUSAL, KEY_PAD, DENSE_KIND)
        new_max = tl.maximum(row_max, tl.max(s, 1))
        shift = tl.where(new_max == float("-inf"), 0.0, new_max)  # all masked so far: avoid -inf - -inf
        row_sum = row_sum * tl.exp(row_max - shift) + tl.sum(tl.exp(s - shift[:, None]), 1)
        row_max = new_max
    base = STATS + pid_bh.to(tl.int64) * 2 * C + rows
    tl.store(base, tl.where(row_max == float("-inf"), 0.0, row_max), mask=rows < C)
    tl.store(base + C, tl.where(row_sum > 0, 1.0 / tl.where(row_sum > 0, row_sum, 1.0), 0.0), mask=rows < C)


@triton.jit
def _probs_kernel(
    Q,
    K,
    STATS,
    OUT,
    KEEP,
    DENSE,
    scaling,
    s_qb,
    s_qh,
    s_qc,
    s_qd,
    s_kb,
    s_kh,
    s_kt,
    s_kd,
    s_ob,
    s_oc,
    s_ot,
    s_keep_b,
    s_den_b,
    s_den_c,
    s_den_t,
    H,
    H_KV,
    C,
    T,
    D,
    GROUP,
    CAUSAL: tl.constexpr,
    KEY_PAD: tl.constexpr,
    DENSE_KIND: tl.constexpr,
    UPCAST: tl.constexpr,
    PREC: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_c, pid_t, b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    rows, dims = pid_c * BLOCK_C + tl.arange(0, BLOCK_C), tl.arange(0, BLOCK_D)
    keys = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    bias = _mask_tile(
        rows, keys, C, T, KEEP + b * s_keep_b, DENSE + b * s_den_b, s_den_c, s_den_t, CAUSAL, KEY_PAD, DENSE_KIND
    )
    num_kv = H_KV
    if CAUSAL:  # a tile wholly above the diagonal is all zeros: skip the heads
        num_kv = tl.where(pid_t * BLOCK_T >= _key_end(pid_c * BLOCK_C, C, T, CAUSAL, BLOCK_C), 0, H_KV)
    acc = tl.zeros((BLOCK_C, BLOCK_T), tl.float32)
    for kv in range(num_kv):
        k_t = tl.trans(_tile(K + b * s_kb + kv * s_kh, keys, T, s_kt, dims, D, s_kd))
        for j in range(GROUP):  # the heads sharing this key tile
            h = kv * GROUP + j
            q = _tile(Q + b * s_qb + h * s_qh, rows, C, s_qc, dims, D, s_qd)
            row_max, inv_sum = _load_stats(STATS, b * H + h, C, rows)
            acc += tl.exp(_dot(q, k_t, UPCAST, PREC) * scaling + bias - row_max[:, None]) * inv_sum[:, None]
    out_ptrs = OUT + b * s_ob + rows[:, None] * s_oc + keys[None, :] * s_ot
    tl.store(out_ptrs, acc / H, mask=(rows < C)[:, None] & (keys < T)[None, :])


@triton.jit
def _dq_kernel(
    Q,
    K,
    STATS,
    G,
    DQ,
    DELTA,
    KEEP,
    DENSE,
    scaling,
    inv_heads,
    s_qb,
    s_qh,
    s_qc,
    s_qd,
    s_kb,
    s_kh,
    s_kt,
    s_kd,
    s_gb,
    s_gc,
    s_gt,
    s_keep_b,
    s_den_b,
    s_den_c,
    s_den_t,
    H,
    C,
    T,
    D,
    GROUP,
    CAUSAL: tl.constexpr,
    KEY_PAD: tl.constexpr,
    DENSE_KIND: tl.constexpr,
    UPCAST: tl.constexpr,
    PREC: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_c, pid_bh = tl.program_id(0), tl.program_id(1)
    b, h = (pid_bh // H).to(tl.int64), pid_bh % H
    keep, dense = KEEP + b * s_keep_b, DENSE + b * s_den_b
    rows, dims = pid_c * BLOCK_C + tl.arange(0, BLOCK_C), tl.arange(0, BLOCK_D)
    q = _tile(Q + b * s_qb + h * s_qh, rows, C, s_qc, dims, D, s_qd)
    row_max, inv_sum = _load_stats(STATS, pid_bh, C, rows)
    k_base, g_base = K + b * s_kb + (h // GROUP) * s_kh, G + b * s_gb
    end = _key_end(pid_c * BLOCK_C, C, T, CAUSAL, BLOCK_C)
    delta = tl.zeros((BLOCK_C,), tl.float32)
    for start in range(0, end, BLOCK_T):  # pass 1: delta = sum_t p * g / H
        keys = start + tl.arange(0, BLOCK_T)
        s = _dot(q, tl.trans(_tile(k_base, keys, T, s_kt, dims, D, s_kd)), UPCAST, PREC) * scaling
        s += _mask_tile(rows, keys, C, T, keep, dense, s_den_c, s_den_t, CAUSAL, KEY_PAD, DENSE_KIND)
        g = _tile(g_base, rows, C, s_gc, keys, T, s_gt).to(tl.float32) * inv_heads
        delta += tl.sum(tl.exp(s - row_max[:, None]) * inv_sum[:, None] * g, 1)
    dq = tl.zeros((BLOCK_C, BLOCK_D), tl.float32)
    for start in range(0, end, BLOCK_T):  # pass 2: dq = sum_t ds * k, ds formed in fp32
        keys = start + tl.arange(0, BLOCK_T)
        k = _tile(k_base, keys, T, s_kt, dims, D, s_kd)
        s = _dot(q, tl.trans(k), UPCAST, PREC) * scaling
        s += _mask_tile(rows, keys, C, T, keep, dense, s_den_c, s_den_t, CAUSAL, KEY_PAD, DENSE_KIND)
        g = _tile(g_base, rows, C, s_gc, keys, T, s_gt).to(tl.float32) * inv_heads
        ds = tl.exp(s - row_max[:, None]) * inv_sum[:, None] * (g - delta[:, None]) * scaling
        dq += _dot(ds.to(k.dtype), k, UPCAST, PREC)
    dq_ptrs = DQ + pid_bh.to(tl.int64) * C * D + rows[:, None] * D + dims[None, :]
    tl.store(dq_ptrs, dq.to(DQ.dtype.element_ty), mask=(rows < C)[:, None] & (dims < D)[None, :])
    tl.store(DELTA + pid_bh.to(tl.int64) * C + rows, delta, mask=rows < C)


@triton.jit
def _dk_kernel(
    Q,
    K,
    STATS,
    DELTA,
    G,
    DK,
    KEEP,
    DENSE,
    scaling,
    inv_heads,
    s_qb,
    s_qh,
    s_qc,
    s_qd,
    s_kb,
    s_kh,
    s_kt,
    s_kd,
    s_gb,
    s_gc,
    s_gt,
    s_keep_b,
    s_den_b,
    s_den_c,
    s_den_t,
    H,
    H_KV,
    C,
    T,
    D,
    GROUP,
    CAUSAL: tl.constexpr,
    KEY_PAD: tl.constexpr,
    DENSE_KIND: tl.constexpr,
    UPCAST: tl.constexpr,
    PREC: tl.constexpr,
    BLOCK_C: tl.constexpr,
    BLOCK_T: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    pid_t, pid_bkv = tl.program_id(0), tl.program_id(1)
    b, kv = (pid_bkv // H_KV).to(tl.int64), pid_bkv % H_KV
    keep, dense = KEEP + b * s_keep_b, DENSE + b * s_den_b
    keys, dims = pid_t * BLOCK_T + tl.arange(0, BLOCK_T), tl.arange(0, BLOCK_D)
    k_t = tl.trans(_tile(K + b * s_kb + kv * s_kh, keys, T, s_kt, dims, D, s_kd))
    first = 0
    if CAUSAL:  # rows before (first key - (T - C)) see none of this tile
        first = (tl.maximum(0, pid_t * BLOCK_T - (T - C)) // BLOCK_C) * BLOCK_C
    dk = tl.zeros((BLOCK_T, BLOCK_D), tl.float32)
    for row_start in range(first, C, BLOCK_C):
        rows = row_start + tl.arange(0, BLOCK_C)
        bias = _mask_tile(rows, keys, C, T, keep, dense, s_den_c, s_den_t, CAUSAL, KEY_PAD, DENSE_KIND)
        g = _tile(G + b * s_gb, rows, C, s_gc, keys, T, s_gt).to(tl.float32) * inv_heads  # shared by the group
        for j in range(GROUP):
            h = kv * GROUP + j
            q = _tile(Q + b * s_qb + h * s_qh, rows, C, s_qc, dims, D, s_qd)
            row_max, inv_sum = _load_stats(STATS, b * H + h, C, rows)
            delta = tl.load(DELTA + (b * H + h) * C + rows, mask=rows < C, other=0)
            p = tl.exp(_dot(q, k_t, UPCAST, PREC) * scaling + bias - row_max[:, None]) * inv_sum[:, None]
            ds = p * (g - delta[:, None]) * scaling
            dk += _dot(tl.trans(ds.to(q.dtype)), q, UPCAST, PREC)
    dk_ptrs = DK + pid_bkv.to(tl.int64) * T * D + keys[:, None] * D + dims[None, :]
    tl.store(dk_ptrs, dk.to(DK.dtype.element_ty), mask=(keys < T)[:, None] & (dims < D)[None, :])
