"""On-chip helpers of the attention-rows Triton kernels (`attention_rows_kernels.py`): tiles, masks, scores."""

from __future__ import annotations

import triton
import triton.language as tl

__all__ = ["_dot", "_key_end", "_key_start", "_load_stats", "_mask_tile", "_scores", "_tanh", "_tile"]


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
