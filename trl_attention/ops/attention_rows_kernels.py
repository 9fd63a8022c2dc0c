"""The Triton kernels behind `attention_rows_triton` (the launcher, its autograd Function and the algorithm are
described in `attention_rows_triton.py`). Kept apart so each file reads on its own: here the on-chip math only."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .attention_rows_tiles import _dot, _key_end, _key_start, _load_stats, _mask_tile, _scores, _tile

__all__ = ["SUPPORTED_DTYPES", "_dk_kernel", "_dq_kernel", "_probs_kernel", "_stats_kernel"]

SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit
def _stats_kernel(
    Q,
    K,
    STATS,
    KEEP,
    DENSE,
    SINKS,
    scaling,
    softcap,
    window,
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
    WINDOW: tl.constexpr,
    SOFTCAP: tl.constexpr,
    SINK: tl.constexpr,
    PER_HEAD: tl.constexpr,
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
    if SINK:  # the sink is one more logit of the softmax: start the running max/sum from it
        row_max = tl.zeros((BLOCK_C,), tl.float32) + tl.load(SINKS + h).to(tl.float32)
        row_sum = row_sum + 1.0
    first = _key_start(pid_c * BLOCK_C, C, T, window, WINDOW)
    for start in range(first, _key_end(pid_c * BLOCK_C, C, T, CAUSAL, BLOCK_C), BLOCK_T):
        keys = start + tl.arange(0, BLOCK_T)
        k = _tile(k_base, keys, T, s_kt, dims, D, s_kd)
        s, _ = _scores(q, tl.trans(k), scaling, softcap, SOFTCAP, UPCAST, PREC)
        s += _mask_tile(rows, keys, C, T, keep, dense, s_den_c, s_den_t, window, CAUSAL, KEY_PAD, DENSE_KIND, WINDOW)
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
    SINKS,
    scaling,
    softcap,
    window,
    s_qb,
    s_qh,
    s_qc,
    s_qd,
    s_kb,
    s_kh,
    s_kt,
    s_kd,
    s_ob,
    s_oh,
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
    WINDOW: tl.constexpr,
    SOFTCAP: tl.constexpr,
    SINK: tl.constexpr,
    PER_HEAD: tl.constexpr,
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
        rows,
        keys,
        C,
        T,
        KEEP + b * s_keep_b,
        DENSE + b * s_den_b,
        s_den_c,
        s_den_t,
        window,
        CAUSAL,
        KEY_PAD,
        DENSE_KIND,
        WINDOW,
    )
    num_kv = H_KV
    if CAUSAL:  # a tile wholly above the diagonal is all zeros: skip the heads
        num_kv = tl.where(pid_t * BLOCK_T >= _key_end(pid_c * BLOCK_C, C, T, CAUSAL, BLOCK_C), 0, num_kv)
    if WINDOW:  # ... and so is a tile wholly before the window of the block's first row
        num_kv = tl.where(pid_t * BLOCK_T + BLOCK_T <= _key_start(pid_c * BLOCK_C, C, T, window, WINDOW), 0, num_kv)
    acc = tl.zeros((BLOCK_C, BLOCK_T), tl.float32)
    out_mask = (rows < C)[:, None] & (keys < T)[None, :]
    tile_offsets = rows[:, None] * s_oc + keys[None, :] * s_ot
    for kv in range(num_kv):
        k_t = tl.trans(_tile(K + b * s_kb + kv * s_kh, keys, T, s_kt, dims, D, s_kd))
        for j in range(GROUP):  # the heads sharing this key tile
            h = kv * GROUP + j
            q = _tile(Q + b * s_qb + h * s_qh, rows, C, s_qc, dims, D, s_qd)
            row_max, inv_sum = _load_stats(STATS, b * H + h, C, rows)
            scores, _ = _scores(q, k_t, scaling, softcap, SOFTCAP, UPCAST, PREC)
            p = tl.exp(scores + bias - row_max[:, None]) * inv_sum[:, None]
            if PER_HEAD:  # OUT is a contiguous (B, H, C, T): head h of batch b at (b * H + h) * s_oh
                tl.store(OUT + (b * H + h) * s_oh + tile_offsets, p, mask=out_mask)
            else:
                acc += p
    if not PER_HEAD:
        tl.store(OUT + b * s_ob + tile_offsets, acc / H, mask=out_mask)


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
    SINKS,
    scaling,
    softcap,
    window,
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
    s_gh,
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
    WINDOW: tl.constexpr,
    SOFTCAP: tl.constexpr,
    SINK: tl.constexpr,
    PER_HEAD: tl.constexpr,
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
    k_base, g_base = K + b * s_kb + (h // GROUP) * s_kh, G + b * s_gb + h.to(tl.int64) * s_gh  # s_gh 0: mean
    first, end = _key_start(pid_c * BLOCK_C, C, T, window, WINDOW), _key_end(pid_c * BLOCK_C, C, T, CAUSAL, BLOCK_C)
    delta = tl.zeros((BLOCK_C,), tl.float32)
    for start in range(first, end, BLOCK_T):  # pass 1: delta = sum_t p * g (g / H for the mean)
        keys = start + tl.arange(0, BLOCK_T)
        s, _ = _scores(
            q, tl.trans(_tile(k_base, keys, T, s_kt, dims, D, s_kd)), scaling, softcap, SOFTCAP, UPCAST, PREC
        )
        s += _mask_tile(rows, keys, C, T, keep, dense, s_den_c, s_den_t, window, CAUSAL, KEY_PAD, DENSE_KIND, WINDOW)
        g = _tile(g_base, rows, C, s_gc, keys, T, s_gt).to(tl.float32) * inv_heads
        delta += tl.sum(tl.exp(s - row_max[:, None]) * inv_sum[:, None] * g, 1)
    dq = tl.zeros((BLOCK_C, BLOCK_D), tl.float32)
    for start in range(first, end, BLOCK_T):  # pass 2: dq = sum_t ds * k, ds formed in fp32
        keys = start + tl.arange(0, BLOCK_T)
        k = _tile(k_base, keys, T, s_kt, dims, D, s_kd)
        s, slope = _scores(q, tl.trans(k), scaling, softcap, SOFTCAP, UPCAST, PREC)
        s += _mask_tile(rows, keys, C, T, keep, dense, s_den_c, s_den_t, window, CAUSAL, KEY_PAD, DENSE_KIND, WINDOW)
        g = _tile(g_base, rows, C, s_gc, keys, T, s_gt).to(tl.float32) * inv_heads
        ds = tl.exp(s - row_max[:, None]) * inv_sum[:, None] * (g - delta[:, None]) * slope * scaling
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
    SINKS,
    scaling,
    softcap,
    window,
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
    s_gh,
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
    WINDOW: tl.constexpr,
    SOFTCAP: tl.constexpr,
    SINK: tl.constexpr,
    PER_HEAD: tl.constexpr,
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
    last = C
    if WINDOW:  # rows past (last key + window - (T - C)) have left this tile behind
        last = tl.minimum(C, tl.maximum(0, pid_t * BLOCK_T + BLOCK_T - 1 + window - (T - C)))
    dk = tl.zeros((BLOCK_T, BLOCK_D), tl.float32)
    for row_start in range(first, last, BLOCK_C):
        rows = row_start + tl.arange(0, BLOCK_C)
        bias = _mask_tile(rows, keys, C, T, keep, dense, s_den_c, s_den_t, window, CAUSAL, KEY_PAD, DENSE_KIND, WINDOW)
        if not PER_HEAD:  # the head mean's gradient is shared by the group
            g = _tile(G + b * s_gb, rows, C, s_gc, keys, T, s_gt).to(tl.float32) * inv_heads
        for j in range(GROUP):
            h = kv * GROUP + j
            if PER_HEAD:
                g = _tile(G + b * s_gb + h.to(tl.int64) * s_gh, rows, C, s_gc, keys, T, s_gt).to(tl.float32)
            q = _tile(Q + b * s_qb + h * s_qh, rows, C, s_qc, dims, D, s_qd)
            row_max, inv_sum = _load_stats(STATS, b * H + h, C, rows)
            delta = tl.load(DELTA + (b * H + h) * C + rows, mask=rows < C, other=0)
            scores, slope = _scores(q, k_t, scaling, softcap, SOFTCAP, UPCAST, PREC)
            p = tl.exp(scores + bias - row_max[:, None]) * inv_sum[:, None]
            ds = p * (g - delta[:, None]) * slope * scaling
            dk += _dot(tl.trans(ds.to(q.dtype)), q, UPCAST, PREC)
    dk_ptrs = DK + pid_bkv.to(tl.int64) * T * D + keys[:, None] * D + dims[None, :]
    tl.store(dk_ptrs, dk.to(DK.dtype.element_ty), mask=(keys < T)[:, None] & (dims < D)[None, :])
