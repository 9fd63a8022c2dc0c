"""Head-averaged (or per-head) attention rows, torch reference kernel + autograd Function.

`attention_rows(query, key, bias, scaling)` returns, for every query row given, the post-softmax attention over
all keys averaged over heads: (B, C, T) in float32; with `heads="all"` one row per query head, (B, H, C, T). It is
the one numeric primitive of the capture layer, and its
dispatcher: `backend="triton"` runs the fused kernels of `attention_rows_triton.py` (same math, no per-head
blocks in memory), `"torch"` this file's reference, `"auto"` Triton on CUDA when importable, else torch.

Memory is O(B*C*T) (O(B*H*C*T) for the per-head output): the torch reference works in (row block x head chunk x
key span) pieces of at most min(`PIECE_ELEMENTS`, C*T/4) elements in one reused workspace, head chunks never exceed
one key/value group (or `max_heads`), and the backward recomputes each piece instead of saving H*C*T
probabilities. Beyond the returned rows and their gradient, forward + backward hold one piece (two with softcap or
heads="all") and the gradients of q and k (tests/capture/test_memory.py counts it).
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

# Upper bound on the query heads of one piece (they share a key head, so one gemm computes all of them).
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

    For pieces under `_FUSED_SOFTMAX` elements and off CPU. Composite rather than torch.softmax, whose CPU kernel
    opens a thread-parallel region even for tiny tensors (ms per call on a busy machine, which makes small models
    and gradcheck crawl); large CPU pieces use the fused kernel in place (one pass per row, in cache).
    """
    row_max = scores.amax(dim=-1, keepdim=True)
    row_max.masked_fill_(row_max == float("-inf"), 0.0)
    probs = scores.sub_(row_max).exp_()
    denom = probs.sum(dim=-1, keepdim=True)
    return probs.div_(denom.masked_fill_(denom == 0, 1.0))


def _softmax_sink_rows_(scores: torch.Tensor, sinks: torch.Tensor):
    """`_softmax_rows_` with one extra logit per head (broadcast over rows and keys, e.g. (1, h, 1) for (r, h, L)
    scores) in the denominator; also returns its share."""
    row_max = torch.maximum(scores.amax(dim=-1, keepdim=True), sinks)  # sinks are finite: no all -inf row
    probs = scores.sub_(row_max).exp_()
    sink = (sinks - row_max).exp_()
    denom = probs.sum(dim=-1, keepdim=True).add_(sink)
    return probs.div_(denom), sink.div_(denom)


# A (heads x row block x keys) piece holds at most min(PIECE_ELEMENTS, C*T/4) elements, and >= 16 rows: 8 MiB in fp32
# at most, at long T a few hundred gemm rows (the gemms are most of the time; fewer rows run them well below peak).
PIECE_ELEMENTS = 1 << 21
_FUSED_SOFTMAX = 1 << 15  # CPU pieces at least this big use torch's fused softmax in place; others the composite


def _row_blocks(rows: int, heads: int, length: int):
    """Row blocks [r0, r1): a (heads, block, length) piece within min(PIECE_ELEMENTS, C*T/4), >= 16 rows."""
    budget = min(PIECE_ELEMENTS, rows * length // 4)
    step = max(1, min(rows, max(16, budget // max(1, heads * length))))
    for start in range(0, rows, step):
        yield start, min(start + step, rows)


def _chunk_probs(work, qs, keys, pieces, dead, sinks, softcap, tanh_out):
    """Probabilities of one piece, in place in `work` (r * h, L): softmax(cap(qs @ keys^T) + bias [, sink]).

    qs (r, h, D): the piece's query rows, head-minor, already scaled; keys (L, D): its key span. `pieces`: the
    additive bias of `RowMask.pieces` for this batch row ((r|1, 1, w) each, at column offsets), `dead` (r|1,) rows
    that see no key. `softcap`: scores -> softcap * tanh(scores / softcap) before the bias (Gemma2); its tanh goes
    to `tanh_out` when given (the backward needs 1 - tanh^2). `sinks` (h,): one extra logit per head in the
    denominator (GPT-OSS), not part of the rows. Returns (probs viewed (1, h, r, L), sink share (r, h, 1) | None,
    tanh | None); the scores live head-minor, (r, h, L), so one gemm serves every head of a key/value group.
    """
    rows, heads, _ = qs.shape
    scores = torch.mm(qs.view(rows * heads, -1), keys.T, out=work)
    tanh = None
    if softcap is not None:
        scores.div_(softcap).tanh_()
        tanh = tanh_out.copy_(scores.view(tanh_out.shape)) if tanh_out is not None else None
        scores.mul_(softcap)
    by_head = scores.view(rows, heads, -1)
    for c0, c1, bias in pieces:
        by_head[..., c0:c1] += bias
    sink = None
    if sinks is not None:
        sink = _softmax_sink_rows_(by_head, sinks.view(1, -1, 1))[1]  # (r, h, 1)
    elif scores.numel() >= _FUSED_SOFTMAX and scores.device.type == "cpu":
        # out= aliasing the input: the CPU kernel reads a row before writing it (tests/capture/test_memory.py checks
        # the values and gradients at this size); rows with every key -inf come out NaN and are zeroed
        torch.ops.aten._softmax.out(scores, -1, False, out=scores)
        if dead is not None and bool(dead.any()):
            by_head.masked_fill_(dead.view(-1, 1, 1), 0.0)
    else:
        _softmax_rows_(scores)
    return by_head.transpose(0, 1).unsqueeze(0), sink, tanh


class _Plan:
    """The pieces of one call: batch row, key/value head, row block, head chunk; one workspace for all of them."""

    def __init__(self, query, key, mask, rows, max_heads, scaling, sinks):
        self.batch, self.num_heads, q_len, dim = query.shape
        self.query_device = query.device
        self.offset, self.rows, self.length, self.scaling = q_len - rows, rows, key.shape[2], scaling
        self.acc = _acc_dtype(query)
        self.chunks = list(_head_chunks(self.num_heads, key.shape[1], max_heads))
        widest = max(h1 - h0 for _, h0, h1 in self.chunks)
        self.blocks, self.mask = list(_row_blocks(rows, widest, self.length)), mask
        self.most_rows = max((r1 - r0 for r0, r1 in self.blocks), default=0)
        self.piece = self.most_rows * widest * self.length  # elements of the largest piece
        self.work = self.buffer(self.piece)  # the piece's scores / probabilities / dS
        self.qs = self.buffer(self.most_rows * widest * dim)
        self.query, self.key, self.sinks = query, key, sinks

    def buffer(self, numel):
        return torch.empty(numel, dtype=self.acc, device=self.query_device)

    def _pieces(self, r0, r1, b):
        """`RowMask.pieces` of batch row b, with column offsets into the span and (r|1, 1, w) biases."""
        lo, hi, pieces, dead = self.mask.pieces(r0, r1, b)
        local = [(c0 - lo, c1 - lo, bias[0, 0].unsqueeze(1)) for c0, c1, bias in pieces]
        return lo, hi, local, None if dead is None else dead[0]

    def __iter__(self):
        """(b, kv, h0, h1, r0, r1, lo, hi, args): `_chunk_probs`'s first six arguments for that piece."""
        groups = {}
        for kv, h0, h1 in self.chunks:
            groups.setdefault(kv, []).append((h0, h1))
        # causal / window biases are the same for every batch row and key head: built once per block (r x r each)
        shared = self.mask.dense is None and self.mask.pad is None
        cached = [self._pieces(r0, r1, 0) for r0, r1 in self.blocks] if shared else None
        for b in range(self.batch):
            for kv, chunks in groups.items():
                keys = self.key[b, kv].to(self.acc)  # a view unless the dtype differs: one (T, D) copy per group
                for i, (r0, r1) in enumerate(self.blocks):
                    lo, hi, local, dead = cached[i] if shared else self._pieces(r0, r1, b)
                    if hi <= lo:
                        continue
                    rows, span = r1 - r0, hi - lo
                    for h0, h1 in chunks:
                        q = self.query[b, h0:h1, self.offset + r0 : self.offset + r1].transpose(0, 1)
                        qs = self.qs[: q.numel()].view(q.shape).copy_(q).mul_(self.scaling)
                        work = self.work[: rows * (h1 - h0) * span].view(rows * (h1 - h0), span)
                        sinks = None if self.sinks is None else self.sinks[h0:h1].to(self.acc)
                        yield b, kv, h0, h1, r0, r1, lo, hi, (work, qs, keys[lo:hi], local, dead, sinks)


class AttentionRowsFunction(torch.autograd.Function):
    """Forward: mean over heads of softmax(cap(q k^T * scaling) + bias [, sink]). Backward recomputes per piece.

    Inputs: query (B, H, Q, D) (the last `num_rows` rows are the captured ones; all of them when None), key
    (B, H_kv, T, D), bias (an additive (B|1, 1, C, T) tensor, a `RowMask`, or None), scaling, max_heads, softcap
    (float | None), sinks ((H,) | None, differentiable), per_head (bool: the (B, H, C, T) rows of every query head
    instead of their mean). With sinks a row sums to 1 minus the (head-mean) sink share.

    Memory: work goes in (head chunk x row block x key span) pieces of at most `PIECE_ELEMENTS` (or C*T/4) in one
    reused workspace, the scores of a piece turn into its probabilities and then into dS in place, and nothing
    (C, T)-sized is saved for backward (the rows are recomputed), so forward and backward hold the returned rows,
    their gradient and one piece (two with softcap or heads="all"). Keys no row of a block sees (after the last
    query under causality, before the window) are neither computed nor masked.
    """

    @staticmethod
    def forward(ctx, query, key, bias, scaling, max_heads, softcap=None, sinks=None, per_head=False, num_rows=None):
        rows = query.shape[2] if num_rows is None else num_rows
        if isinstance(bias, RowMask):
            mask = bias
        else:
            none = RowMask(None, rows, key.shape[2], False, None, query.device)
            mask = none if bias is None else RowMask.from_bias(bias)
        plan = _Plan(query, key, mask, rows, max_heads, scaling, sinks)
        shape = (plan.batch, plan.num_heads, rows, plan.length) if per_head else (plan.batch, rows, plan.length)
        out = torch.zeros(shape, dtype=plan.acc, device=query.device)
        head_sum = None if per_head else plan.buffer(plan.most_rows * plan.length)
        for b, _, h0, h1, r0, r1, lo, hi, args in plan:
            probs = _chunk_probs(*args, softcap, None)[0][0]  # (h, r, L)
            if per_head:
                out[b, h0:h1, r0:r1, lo:hi] = probs
            else:
                total = head_sum[: (r1 - r0) * (hi - lo)].view(r1 - r0, hi - lo)
                out[b, r0:r1, lo:hi] += torch.sum(probs.transpose(0, 1), dim=1, out=total)
        if not per_head:
            out /= plan.num_heads
        ctx.save_for_backward(query, key, sinks, *mask.tensors())
        ctx.mask, ctx.scaling, ctx.max_heads, ctx.softcap, ctx.per_head = mask, scaling, max_heads, softcap, per_head
        ctx.rows = rows
        return out

    @staticmethod
    def backward(ctx, grad_out):
        query, key, sinks = ctx.saved_tensors[:3]
        softcap, per_head = ctx.softcap, ctx.per_head
        plan = _Plan(query, key, ctx.mask, ctx.rows, ctx.max_heads, ctx.scaling, sinks)
        acc, num_heads = plan.acc, plan.num_heads
        need_q, need_k = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        need_sink = sinks is not None and ctx.needs_input_grad[6]
        dq = torch.zeros(query.shape, dtype=acc, device=query.device) if need_q else None
        dk = torch.zeros(key.shape, dtype=acc, device=key.device) if need_k else None
        dsink = torch.zeros(num_heads, dtype=acc, device=query.device) if need_sink else None
        # second piece-sized buffers: softcap's tanh, heads="all"'s p * g; a row slice for g - delta; a dQ piece
        tanh_buf = plan.buffer(plan.piece) if softcap is not None else None
        pg_buf = plan.buffer(plan.piece) if per_head else None
        row = None if per_head else plan.buffer(plan.most_rows * plan.length)
        dq_piece = torch.empty_like(plan.qs) if need_q else None
        inv = 1.0 if per_head else 1.0 / num_heads  # the head mean's 1/H, applied to dQ, dK, d sinks
        for b, kv, h0, h1, r0, r1, lo, hi, args in plan:
            work, qs, keys = args[:3]
            rows, heads, span = r1 - r0, h1 - h0, hi - lo
            tanh_out = None if tanh_buf is None else tanh_buf[: work.numel()].view(rows, heads, span)
            probs, sink, tanh = _chunk_probs(*args, softcap, tanh_out)
            probs = probs[0].transpose(0, 1)  # (r, h, L), contiguous: the work buffer
            # softmax backward dS = p * (g - sum(p * g)), in place in the work buffer. A sink's own gradient is 0
            # (not in the rows), so it only enters through its share of the denominator: d sink = -p_sink * delta.
            if per_head:
                grad = grad_out[b, h0:h1, r0:r1, lo:hi].transpose(0, 1).to(acc)  # (r, h, L): each head its own
                pg = torch.mul(probs, grad, out=pg_buf[: work.numel()].view(probs.shape))
                delta = pg.sum(dim=-1, keepdim=True)
                dscores = pg.addcmul_(probs, delta, value=-1.0)
            else:
                grad = grad_out[b, r0:r1, lo:hi].to(acc)  # (r, L), the same for every head
                delta = torch.bmm(probs, grad.unsqueeze(-1))  # (r, h, 1)
                tmp = row[: rows * span].view(rows, span)
                for j in range(heads):
                    probs[:, j].mul_(torch.sub(grad, delta[:, j], out=tmp))
                dscores = probs
            if need_sink:
                dsink[h0:h1] -= (sink * delta).sum(dim=(0, 2)) * inv
            if tanh is not None:  # d(cap * tanh(s / cap)) / ds = 1 - tanh^2
                dscores.mul_(tanh.mul_(tanh).neg_().add_(1.0))
            flat = dscores.view(rows * heads, span)
            if need_q:
                piece = torch.mm(flat, keys, out=dq_piece[: qs.numel()].view(rows * heads, -1))
                dq[b, h0:h1, plan.offset + r0 : plan.offset + r1] = piece.view(qs.shape).transpose(0, 1)
            if need_k:
                dk[b, kv, lo:hi].addmm_(flat.T, qs.view(rows * heads, -1), alpha=inv)
        if need_q:
            dq.mul_(ctx.scaling * inv)
        dq = dq.to(query.dtype) if need_q else None
        dk = dk.to(key.dtype) if need_k else None
        dsink = dsink.to(sinks.dtype) if need_sink else None
        return dq, dk, None, None, None, None, dsink, None, None


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
    if resolve_backend(backend, query.device) == "triton":
        module, _ = _triton_module()
        if query.dtype in module.SUPPORTED_DTYPES and key.dtype == query.dtype:
            extras = {"softcap": softcap, "sinks": sinks, "sliding_window": sliding_window, "per_head": per_head}
            q_rows = query[:, :, q_len - rows :].contiguous()
            return module.attention_rows_triton(q_rows, key, attention_mask, scaling, causal, **extras)
        reason = f"dtypes {query.dtype}/{key.dtype} (Triton kernels take matching fp16, bf16 or fp32)"
        if reason not in _warned:
            _warned.add(reason)
            logger.warning("attention rows: falling back to the torch backend for %s", reason)
    bias = RowMask(attention_mask, rows, key.shape[2], causal, sliding_window, query.device)
    softcap = None if softcap is None else float(softcap)
    max_heads = max_heads or DEFAULT_MAX_HEADS
    return AttentionRowsFunction.apply(query, key, bias, scaling, max_heads, softcap, sinks, per_head, rows)
