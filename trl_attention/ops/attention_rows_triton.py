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

The file reads top down: the on-chip helpers (tiles, masks, scores), the four kernels, then the launcher and its
autograd Function. One file on purpose (over 400 lines, listed in tests/test_layout.py): split, each part is a
fragment of the one algorithm above.
"""

from __future__ import annotations

import contextlib

import torch
import triton
import triton.language as tl

__all__ = [
    "SUPPORTED_DTYPES",
    "TritonAttentionRowsFunction",
    "attention_rows_triton",
    "compact_mask",
    "is_interpreted",
    # the kernels and their on-chip helpers (0.1.0 exported them from attention_rows_kernels / _tiles)
    "_dk_kernel",
    "_dot",
    "_dq_kernel",
    "_key_end",
    "_key_start",
    "_load_stats",
    "_mask_tile",
    "_probs_kernel",
    "_scores",
    "_stats_kernel",
    "_tanh",
    "_tile",
]

# -- on-chip helpers: tiles, masks, scores ---------------------------------------------------------------------------
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
def _tanh(x):
    """tanh in fp32 from exp (libdevice is not available in the interpreter); a series near 0 keeps it accurate."""
    a = tl.abs(x)
    e = tl.exp(-2.0 * a)
    big = (1.0 - e) / (1.0 + e)
    x2 = a * a
    small = a * (1.0 - x2 * (1.0 / 3.0 - x2 * (2.0 / 15.0 - x2 * (17.0 / 315.0))))
    t = tl.where(a < 0.125, small, big)
    return tl.where(x < 0, -t, t)


@triton.jit
def _scores(q, k_t, scaling, softcap, SOFTCAP: tl.constexpr, UPCAST: tl.constexpr, PREC: tl.constexpr):
    """(scores, d scores / d raw scores): q k^T * scaling, softcapped to cap * tanh(s / cap) when SOFTCAP."""
    s = _dot(q, k_t, UPCAST, PREC) * scaling
    slope = s * 0.0 + 1.0
    if SOFTCAP:
        t = _tanh(s / softcap)
        s = t * softcap
        slope = 1.0 - t * t
    return s, slope


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
    window,
    CAUSAL: tl.constexpr,
    KEY_PAD: tl.constexpr,
    DENSE_KIND: tl.constexpr,
    WINDOW: tl.constexpr,
):
    """Additive fp32 (rows, keys) tile: 0 where attended, -inf where masked, plus any dense float bias.

    `keep` / `dense` already point at this batch element's (T,) padding vector / (C, T) mask. WINDOW: a row at
    position p sees the keys in (p - window, p].
    """
    ok = (keys < T)[None, :] & (rows[:, None] >= 0)
    if CAUSAL:  # bottom-right aligned: row r sits at absolute position T - C + r
        ok = ok & (keys[None, :] <= (T - C) + rows[:, None])
    if WINDOW:
        ok = ok & (keys[None, :] > (T - C) + rows[:, None] - window)
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
def _key_start(row_start, C, T, window, WINDOW: tl.constexpr):
    """The first key any row of the block [row_start, ...) can see: 0, or the window's start for its first row."""
    start = 0
    if WINDOW:
        start = tl.maximum(0, T - C + row_start - window + 1)
    return start


@triton.jit
def _key_end(row_start, C, T, CAUSAL: tl.constexpr, BLOCK_C: tl.constexpr):
    """One past the last key any row of the block [row_start, row_start + BLOCK_C) can see."""
    end = T
    if CAUSAL:
        end = tl.minimum(T, tl.maximum(0, T - C + row_start + BLOCK_C))
    return end


# -- the kernels -----------------------------------------------------------------------------------------------------
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


# -- the launcher and its autograd Function --------------------------------------------------------------------------
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
