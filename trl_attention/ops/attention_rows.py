"""Head-averaged (or per-head) attention rows, torch reference kernel + autograd Function.

`attention_rows(query, key, bias, scaling)` returns, for every query row given, the post-softmax attention over
all keys averaged over heads: (B, C, T) in float32; with `heads="all"` one row per query head, (B, H, C, T). It is
the one numeric primitive of the capture layer, and its
dispatcher: `backend="triton"` runs the fused kernels of `attention_rows_triton.py` (same math, no per-head
blocks in memory), `"torch"` this file's reference, `"auto"` Triton on CUDA when importable, else torch.

Memory is O(B*C*T) (O(B*H*C*T) for the per-head output): heads are processed in chunks that never exceed one key/value group (or `max_heads`), and
the backward recomputes the softmax chunk by chunk instead of saving H*C*T probabilities.
"""

from __future__ import annotations

import logging

import torch

from .masks import RowMask

__all__ = [
    "BACKENDS",
    "DEFAULT_MAX_HEADS",
    "HEADS",
    "AttentionRowsFunction",
    "attention_rows",
    "normalize_mask",
    "resolve_backend",
]

logger = logging.getLogger(__name__)
BACKENDS = ("auto", "torch", "triton")
# `heads` of `attention_rows`: "mean" -> (B, C, T) head average, "all" -> (B, H, C, T) one row per query head.
HEADS = ("mean", "all")

# Upper bound on query heads held at once: bounds the transient (max_heads, B, C, T) fp32 buffers.
DEFAULT_MAX_HEADS = 4


def _head_chunks(num_heads: int, num_kv_heads: int, max_heads: int):
    """Yield (kv_head, first_query_head, last_query_head) chunks; GQA heads of one chunk share one key head."""
    if num_heads % num_kv_heads:
        raise ValueError(f"query heads ({num_heads}) must be a multiple of key/value heads ({num_kv_heads})")
    group = num_heads // num_kv_heads
    step = max(1, min(group, max_heads))
    for kv in range(num_kv_heads):
        for start in range(kv * group, (kv + 1) * group, step):
            yield kv, start, min(start + step, (kv + 1) * group)


def _acc_dtype(tensor: torch.Tensor) -> torch.dtype:
    """fp32 for half types and fp32; fp64 stays fp64 so gradcheck can run."""
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


def _softmax_rows_(scores: torch.Tensor) -> torch.Tensor:
    """In-place softmax over the last dim; rows whose every key is -inf become zeros (not NaN).

    In place because the (h, C, T) block dominates on CPU: fresh buffers cost page faults. Composite rather than
    torch.softmax, whose CPU kernel opens a thread-parallel region even for tiny tensors (ms per call on a busy
    machine, which makes small models and gradcheck crawl).
    """
    row_max = scores.amax(dim=-1, keepdim=True)
    row_max.masked_fill_(row_max == float("-inf"), 0.0)
    probs = scores.sub_(row_max).exp_()
    denom = probs.sum(dim=-1, keepdim=True)
    return probs.div_(denom.masked_fill_(denom == 0, 1.0))


def _softmax_sink_rows_(scores: torch.Tensor, sinks: torch.Tensor):
    """`_softmax_rows_` with one extra logit per head (B|1, h, 1, 1) in the denominator; also returns its share."""
    row_max = torch.maximum(scores.amax(dim=-1, keepdim=True), sinks)  # sinks are finite: no all -inf row
    probs = scores.sub_(row_max).exp_()
    sink = (sinks - row_max).exp_()
    denom = probs.sum(dim=-1, keepdim=True).add_(sink)
    return probs.div_(denom), sink.div_(denom)


def _chunk_probs(q, k, bias, scaling, kv, h0, h1, softcap=None, sinks=None, keep_tanh=False):
    """Probabilities (B, h, C, T) of query heads [h0, h1) against key head kv, in fp32 (fp64 for fp64 input).

    Scaling is applied to q (C x D) rather than to the (h, C, T) scores, and the bias is added in place. `softcap`:
    scores -> softcap * tanh(scores / softcap) before the bias (Gemma2). `sinks` (H,): one extra logit per head in
    the denominator (GPT-OSS), not part of the rows. Returns (probs, sink share (B, h, C, 1) | None, tanh | None);
    the tanh block only when `keep_tanh` (the backward needs 1 - tanh^2).
    """
    acc = _acc_dtype(q)
    scores = torch.matmul(q[:, h0:h1].to(acc) * scaling, k[:, kv : kv + 1].to(acc).transpose(-1, -2))
    tanh = None
    if softcap is not None:
        scores.div_(softcap).tanh_()
        tanh = scores.clone() if keep_tanh else None
        scores.mul_(softcap)
    if bias is not None:
        scores += bias
    if sinks is None:
        return _softmax_rows_(scores), None, tanh
    probs, sink = _softmax_sink_rows_(scores, sinks[h0:h1].to(acc).view(1, -1, 1, 1))
    return probs, sink, tanh


def _row_blocks(rows: int, heads: int):
    """Row blocks [r0, r1) of at most max(16, rows / (4 * heads)) rows: a (heads, block, T) chunk is <= C*T / 4."""
    step = max(16, rows // (4 * max(1, heads)))
    for start in range(0, rows, step):
        yield start, min(start + step, rows)


class AttentionRowsFunction(torch.autograd.Function):
    """Forward: mean over heads of softmax(cap(q k^T * scaling) + bias [, sink]). Backward recomputes per chunk.

    Inputs: query (B, H, C, D), key (B, H_kv, T, D), bias (an additive (B|1, 1, C, T) tensor, a `RowMask`, or
    None), scaling, max_heads, softcap (float | None), sinks ((H,) | None, differentiable), per_head (bool: the
    (B, H, C, T) rows of every query head instead of their mean). With sinks a row sums to 1 minus the (head-mean)
    sink share. Work goes in (row block x head chunk) pieces of at most C*T/4 elements, so beyond the returned rows
    and their gradient forward and backward hold about one (C, T) matrix.
    """

    @staticmethod
    def forward(ctx, query, key, bias, scaling, max_heads, softcap=None, sinks=None, per_head=False):
        batch, num_heads, rows, _ = query.shape
        mask = bias if isinstance(bias, RowMask) else RowMask.from_bias(bias)
        chunks = list(_head_chunks(num_heads, key.shape[1], max_heads))
        shape = (batch, num_heads, rows, key.shape[2]) if per_head else (batch, rows, key.shape[2])
        out = torch.zeros(shape, dtype=_acc_dtype(query), device=query.device)
        for r0, r1 in _row_blocks(rows, max(h1 - h0 for _, h0, h1 in chunks)):
            block_bias, q = mask.block(r0, r1), query[:, :, r0:r1]
            for kv, h0, h1 in chunks:
                probs = _chunk_probs(q, key, block_bias, scaling, kv, h0, h1, softcap, sinks)[0]
                if per_head:
                    out[:, h0:h1, r0:r1] = probs
                else:
                    out[:, r0:r1] += probs.sum(dim=1)
        if not per_head:
            out /= num_heads
        ctx.save_for_backward(query, key, sinks, *mask.tensors())
        ctx.mask, ctx.scaling, ctx.max_heads, ctx.softcap, ctx.per_head = mask, scaling, max_heads, softcap, per_head
        return out

    @staticmethod
    def backward(ctx, grad_out):
        query, key, sinks = ctx.saved_tensors[:3]
        mask, num_heads, softcap = ctx.mask, query.shape[1], ctx.softcap
        acc = _acc_dtype(query)
        need_q, need_k = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_sink = sinks is not None and ctx.needs_input_grad[6]
        dq = torch.zeros(query.shape, dtype=acc, device=query.device) if need_q else None
        dk = torch.zeros(key.shape, dtype=acc, device=key.device) if need_k else None
        dsink = torch.zeros(num_heads, dtype=acc, device=query.device) if need_sink else None
        chunks = list(_head_chunks(num_heads, key.shape[1], ctx.max_heads))
        for r0, r1 in _row_blocks(query.shape[2], max(h1 - h0 for _, h0, h1 in chunks)):
            block_bias, q = mask.block(r0, r1), query[:, :, r0:r1]
            if not ctx.per_head:
                grad = (grad_out[:, r0:r1].to(acc) / num_heads).unsqueeze(1)  # (B, 1, r, T), same for every head
            for kv, h0, h1 in chunks:
                if ctx.per_head:  # (B, h, r, T): each head its own gradient
                    grad = grad_out[:, h0:h1, r0:r1].to(acc)
                probs, sink, tanh = _chunk_probs(q, key, block_bias, ctx.scaling, kv, h0, h1, softcap, sinks, True)
                # softmax backward p * (g - sum(p * g)), as p*g - p*sum(p*g) in two passes; scaling goes on the
                # small (r x D) / (T x D) products instead of the (h, r, T) block. A sink's own gradient is 0 (not
                # in the rows), so it only enters through its share of the denominator: d sink = -p_sink * sum(p*g).
                dscores = probs * grad
                delta = dscores.sum(dim=-1, keepdim=True)
                dscores.addcmul_(probs, delta, value=-1.0)
                del probs
                if need_sink:
                    dsink[h0:h1] += -(sink * delta).sum(dim=(0, 2, 3))
                if tanh is not None:  # d(cap * tanh(s / cap)) / ds = 1 - tanh^2
                    dscores.mul_(tanh.mul_(tanh).neg_().add_(1.0))
                    del tanh
                if need_q:
                    dq[:, h0:h1, r0:r1] = torch.matmul(dscores, key[:, kv : kv + 1].to(acc)) * ctx.scaling
                if need_k:
                    dk_chunk = torch.matmul(dscores.transpose(-1, -2), q[:, h0:h1].to(acc)).sum(dim=1)
                    dk[:, kv] += dk_chunk * ctx.scaling
                del dscores
        dq = dq.to(query.dtype) if need_q else None
        dk = dk.to(key.dtype) if need_k else None
        dsink = dsink.to(sinks.dtype) if need_sink else None
        return dq, dk, None, None, None, None, dsink, None


def normalize_mask(
    attention_mask, batch: int, rows: int, q_len: int, kv_len: int, is_causal: bool, device, sliding_window=None
):
    """Turn any transformers mask for the last `rows` queries into an additive fp32 bias (B|1, 1, C, T) or None.

    Accepted: None (causal when `is_causal`), a 4D bool mask (True = attend), a 4D additive float mask, or a 2D
    padding mask (B, T) with 1 = keep (flash-attention style, causal applied on top when `is_causal`). Query rows
    are the last `rows` of the query; causality is bottom-right aligned (query j sits at kv_len - q_len + j).
    `sliding_window` w (None or 2D masks only: a 4D mask already holds it) keeps the keys in (pos - w, pos] of a
    query at position pos, transformers' and flash-attention's convention.
    """
    return RowMask(attention_mask, rows, kv_len, is_causal, sliding_window, device).block(0, rows)


def _triton_module():
    """The Triton kernels module, or the reason it cannot be used (imported lazily: triton is optional)."""
    try:
        from . import attention_rows_triton
    except ImportError as err:
        return None, f"triton is not installed ({err}); pip install 'trl-attention[triton]'"
    return attention_rows_triton, None


def resolve_backend(backend: str, device) -> str:
    """The backend that runs: `torch` or `triton`. "auto" picks triton for CUDA tensors when it imports.

    Errors: ValueError for an unknown name; RuntimeError when "triton" is forced where it cannot run (triton not
    installed, or a non-CUDA device outside Triton's CPU interpreter), with the reason.
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown attention-rows backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if backend == "torch":
        return "torch"
    device = torch.device(device)
    if backend == "auto" and device.type != "cuda":  # CPU default stays the torch reference, interpreter or not
        return "torch"
    module, reason = _triton_module()
    if module is not None and device.type != "cuda" and not module.is_interpreted():
        reason = (
            f"the triton backend needs CUDA tensors (got {device.type}); to run its kernels on CPU set "
            "TRITON_INTERPRET=1 before triton is imported (slow, for tests)"
        )
    if reason is None:
        return "triton"
    if backend == "triton":
        raise RuntimeError(reason)
    logger.info("attention rows: using the torch backend: %s", reason)
    return "torch"


_warned: set = set()


def attention_rows(
    query,
    key,
    attention_mask=None,
    scaling=None,
    is_causal=True,
    num_rows=None,
    max_heads=None,
    backend="auto",
    *,
    softcap=None,
    sinks=None,
    sliding_window=None,
    heads="mean",
):
    """Head-averaged post-softmax attention of the last `num_rows` queries: (B, C, T) float32, differentiable.

    query: (B, H, Q, D); key: (B, H_kv, T, D) (GQA not repeated). `attention_mask` as in `normalize_mask`.
    Softmax runs in fp32 whatever the input dtype. `backend`: "auto" | "torch" | "triton" (see `resolve_backend`);
    `max_heads` bounds the torch backend's head chunks (the Triton kernels never hold per-head blocks).
    `softcap`: scores -> softcap * tanh(scores / softcap) before the mask (Gemma2's attn_logit_softcapping).
    `sinks` (H,): a learned extra logit per head in the softmax denominator (GPT-OSS's `s_aux`), differentiable;
    rows then sum to 1 - mean over heads of the sink's share. `sliding_window` w: a query at position p sees the
    keys in (p - w, p] (applied with a None or 2D mask; a 4D mask already holds it). `heads`: "mean" (the head
    average, (B, C, T)) or "all": (B, H, C, T), the rows of every query head (GQA: query heads sharing a key/value
    head each get their own row; with sinks each row sums to 1 minus that head's sink share); both backends.
    """
    if heads not in HEADS:
        raise ValueError(f"unknown attention-rows heads {heads!r}; choose one of {', '.join(HEADS)}")
    per_head = heads == "all"
    batch, _, q_len, head_dim = query.shape
    rows = q_len if num_rows is None else min(int(num_rows), q_len)
    scaling = head_dim**-0.5 if scaling is None else float(scaling)
    causal = is_causal and q_len > 1
    q_rows = query[:, :, q_len - rows :].contiguous()
    if resolve_backend(backend, query.device) == "triton":
        module, _ = _triton_module()
        if query.dtype in module.SUPPORTED_DTYPES and key.dtype == query.dtype:
            extras = {"softcap": softcap, "sinks": sinks, "sliding_window": sliding_window, "per_head": per_head}
            return module.attention_rows_triton(q_rows, key, attention_mask, scaling, causal, **extras)
        reason = f"dtypes {query.dtype}/{key.dtype} (Triton kernels take matching fp16, bf16 or fp32)"
        if reason not in _warned:
            _warned.add(reason)
            logger.warning("attention rows: falling back to the torch backend for %s", reason)
    bias = RowMask(attention_mask, rows, key.shape[2], causal, sliding_window, query.device)
    softcap = None if softcap is None else float(softcap)
    max_heads = max_heads or DEFAULT_MAX_HEADS
    return AttentionRowsFunction.apply(q_rows, key, bias, scaling, max_heads, softcap, sinks, per_head)
