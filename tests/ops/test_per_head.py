"""`attention_rows(..., heads="all")`: per-query-head rows (B, H, C, T) against eager softmax(q k^T) per head.

Values and gradients (dQ, dK, the sinks) of the torch reference and of the Triton kernels (Triton's CPU interpreter
without CUDA: conftest.py sets TRITON_INTERPRET=1), with GQA, padding, 4D masks, softcapping, sinks and sliding
windows; fp64 gradcheck of the reference; the capture's `heads` option against eager `output_attentions`.
"""

import copy
import os

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from trl_attention import CaptureError, capture_attention
from trl_attention.ops import attention_rows
from trl_attention.tiny import build_tiny_lm

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
BACKENDS = ["torch", "triton"]


def _triton_or_skip(backend):
    if backend != "triton":
        return
    triton = pytest.importorskip("triton")
    version = tuple(int(x) for x in triton.__version__.split(".")[:2])
    if os.environ.get("TRITON_INTERPRET") == "1" and version < (3, 7):
        pytest.skip("triton's CPU interpreter needs triton >= 3.7 under NumPy 2")


def _keep(batch, q_len, length, window, pad, causal=True):
    """(B, 1, Q, T) bool: causal bottom-right aligned, keys in (p - w, p] with a window, left padding in row 0."""
    pos = torch.arange(length - q_len, length)[:, None]
    key = torch.arange(length)[None, :]
    keep = key <= pos if causal else torch.ones(q_len, length, dtype=torch.bool)
    if window is not None:
        keep = keep & (key > pos - window)
    keep = keep[None, None].expand(batch, 1, q_len, length)
    if pad:
        pad_mask = torch.ones(batch, length, dtype=torch.bool)
        pad_mask[0, :pad] = False
        keep = keep & pad_mask[:, None, None, :]
    return keep


def _eager_heads(q, k, keep, scaling, softcap=None, sinks=None):
    """(B, H, Q, T) eager per-head probabilities: softmax(cap(q k^T * scaling) + finfo.min mask [, sink])."""
    heads, kv_heads = q.shape[1], k.shape[1]
    scores = torch.matmul(q, k.repeat_interleave(heads // kv_heads, 1).transpose(-1, -2)) * scaling
    if softcap is not None:
        scores = torch.tanh(scores / softcap) * softcap
    scores = scores + torch.zeros(keep.shape, device=q.device).masked_fill(~keep, torch.finfo(torch.float32).min)
    if sinks is None:
        return torch.softmax(scores, dim=-1)
    logits = torch.cat([scores, sinks.view(1, -1, 1, 1).expand(*scores.shape[:3], 1)], dim=-1)
    return torch.softmax(logits, dim=-1)[..., :-1]


CASES = {  # batch, heads, kv_heads, q_len, length, dim, rows, softcap, sinks, window, left padding, mask given
    "gqa_pad2d": (2, 4, 2, 19, 19, 8, 7, None, False, None, 5, "pad2d"),
    "mqa_all_rows": (1, 4, 1, 20, 20, 8, 20, None, False, None, 0, "none"),
    "padded_rows_bool4d": (2, 2, 2, 20, 20, 8, 20, None, False, None, 6, "bool4d"),  # rows that see no key: 0
    "no_causal_pad2d": (2, 4, 2, 11, 23, 8, 11, None, False, None, 3, "pad2d_nocausal"),
    "softcap_window": (1, 4, 2, 24, 24, 8, 24, 2.0, False, 9, 0, "none"),
    "sinks_window_cache": (1, 4, 1, 20, 37, 8, 20, None, True, 6, 0, "none"),  # 17 cached keys
    "all_three_bool4d": (2, 4, 2, 19, 19, 8, 7, 1.0, True, 4, 5, "bool4d"),  # the window lives in the mask
}


def _inputs(case, seed=0):
    batch, heads, kv_heads, q_len, length, dim, rows, softcap, sink, window, pad, mask_kind = CASES[case]
    gen = torch.Generator().manual_seed(seed)
    q = (torch.randn(batch, heads, q_len, dim, generator=gen) * 2).to(DEVICE).requires_grad_()
    k = (torch.randn(batch, kv_heads, length, dim, generator=gen) * 2).to(DEVICE).requires_grad_()
    sinks = torch.randn(heads, generator=gen).to(DEVICE).requires_grad_() if sink else None
    causal = "nocausal" not in mask_kind
    keep = _keep(batch, q_len, length, window, pad, causal).to(DEVICE)
    pad_mask = torch.ones(batch, length, dtype=torch.long, device=DEVICE)
    pad_mask[0, :pad] = 0
    mask = {"none": None, "pad2d": pad_mask, "pad2d_nocausal": pad_mask, "bool4d": keep}[mask_kind]
    extras = {"softcap": softcap, "sinks": sinks, "sliding_window": window}
    return q, k, sinks, keep, mask, rows, causal, extras


def _grads(out, weight, inputs):
    return torch.autograd.grad((out * weight).sum() + out.sum(-1).pow(2).sum(), inputs)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(CASES))
def test_per_head_rows_match_eager(case, backend):
    _triton_or_skip(backend)
    q, k, sinks, keep, mask, rows, causal, extras = _inputs(case)
    ref = _eager_heads(q, k, keep, q.shape[-1] ** -0.5, extras["softcap"], sinks)[:, :, -rows:]
    got = attention_rows(q, k, mask, None, causal, num_rows=rows, backend=backend, heads="all", **extras)
    assert got.dtype == torch.float32 and got.shape == (q.shape[0], q.shape[1], rows, k.shape[2])
    valid = keep[:, :, -rows:].any(-1, keepdim=True)  # (B, 1, C, 1): padded query rows are 0 here, uniform in eager
    assert valid.any() and (got * ~valid).abs().max() == 0
    torch.testing.assert_close(got * valid, ref * valid, atol=2e-6, rtol=0)
    weight = torch.randn(got.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    inputs = (q, k) if sinks is None else (q, k, sinks)
    for a, b in zip(_grads(got * valid, weight, inputs), _grads(ref * valid, weight, inputs)):
        torch.testing.assert_close(a, b, atol=5e-6, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", ["gqa_pad2d", "all_three_bool4d"])
def test_head_mean_of_per_head_rows_is_the_mean_option(case, backend):
    _triton_or_skip(backend)
    q, k, _, _, mask, rows, causal, extras = _inputs(case, seed=3)
    per_head = attention_rows(q, k, mask, None, causal, num_rows=rows, backend=backend, heads="all", **extras)
    mean = attention_rows(q, k, mask, None, causal, num_rows=rows, backend=backend, heads="mean", **extras)
    default = attention_rows(q, k, mask, None, causal, num_rows=rows, backend=backend, **extras)
    assert torch.equal(mean, default)
    torch.testing.assert_close(per_head.mean(1), mean, atol=1e-7, rtol=0)
    # A gradient that is the same for every head equals the mean option's gradient times H.
    weight = torch.randn(mean.shape, generator=torch.Generator().manual_seed(4)).to(DEVICE)
    heads = q.shape[1]
    inputs = (q, k) if extras["sinks"] is None else (q, k, extras["sinks"])
    a = torch.autograd.grad((per_head * weight[:, None]).sum() / heads, inputs)
    b = torch.autograd.grad((mean * weight).sum(), inputs)
    for x, y in zip(a, b):
        torch.testing.assert_close(x, y, atol=2e-6, rtol=1e-5)


@pytest.mark.parametrize("case", ["gqa_pad2d", "sinks_window_cache", "all_three_bool4d"])
def test_triton_per_head_matches_torch_reference(case):
    """Small tiles (several row blocks and key tiles), and a broadcast (stride-0) incoming gradient."""
    _triton_or_skip("triton")
    from trl_attention.ops.attention_rows_triton import attention_rows_triton

    q, k, sinks, _, mask, rows, causal, extras = _inputs(case, seed=2)
    q_rows = q[:, :, -rows:].detach().contiguous().requires_grad_()
    got = attention_rows_triton(q_rows, k, mask, q.shape[-1] ** -0.5, causal, 16, 16, per_head=True, **extras)
    ref = attention_rows(q_rows, k, mask, None, causal, backend="torch", heads="all", **extras)
    torch.testing.assert_close(got, ref, atol=2e-6, rtol=0)
    inputs = (q_rows, k) if sinks is None else (q_rows, k, sinks)
    weight = torch.randn(got.shape[-2:], generator=torch.Generator().manual_seed(5)).to(DEVICE)  # broadcast
    for a, b in zip(_grads(got, weight, inputs), _grads(ref, weight, inputs)):
        torch.testing.assert_close(a, b, atol=5e-6, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_triton_per_head_half_precision(dtype):
    _triton_or_skip("triton")
    gen = torch.Generator().manual_seed(6)
    q = torch.randn(2, 4, 19, 16, generator=gen).to(DEVICE, dtype).requires_grad_()
    k = torch.randn(2, 2, 19, 16, generator=gen).to(DEVICE, dtype).requires_grad_()
    pad = torch.ones(2, 19, dtype=torch.long, device=DEVICE)
    pad[0, :4] = 0
    got = attention_rows(q, k, pad, None, True, num_rows=7, backend="triton", heads="all")
    ref = attention_rows(q, k, pad, None, True, num_rows=7, backend="torch", heads="all")
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)
    weight = torch.randn(got.shape, generator=gen).to(DEVICE)
    for a, b in zip(_grads(got, weight, (q, k)), _grads(ref, weight, (q, k))):
        assert a.dtype == dtype
        torch.testing.assert_close(a.float(), b.float(), atol=2e-2 * b.float().abs().max().item(), rtol=2e-2)


def test_per_head_gradcheck_float64_and_head_chunking():
    gen = torch.Generator().manual_seed(7)
    q = torch.randn(1, 4, 5, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 2, 7, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    s = torch.randn(4, generator=gen, dtype=torch.float64, requires_grad=True)
    for max_heads in (1, 2):

        def fn(a, b, c, m=max_heads):
            return attention_rows(a, b, None, 0.7, True, 3, m, softcap=1.3, sinks=c, sliding_window=3, heads="all")

        assert torch.autograd.gradcheck(fn, (q, k, s))
    plain = lambda a, b: attention_rows(a, b, None, 0.7, True, 3, heads="all")  # noqa: E731
    assert torch.autograd.gradcheck(plain, (q, k))
    one = attention_rows(q, k, None, 0.7, True, 3, max_heads=1, heads="all")
    torch.testing.assert_close(attention_rows(q, k, None, 0.7, True, 3, max_heads=3, heads="all"), one)
    keep = _keep(1, 5, 7, None, 0)
    torch.testing.assert_close(one, _eager_heads(q, k, keep, 0.7)[:, :, -3:], atol=1e-12, rtol=0)


def test_bad_heads_are_errors():
    q, k = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4)
    with pytest.raises(ValueError, match="unknown attention-rows heads 'per_head'"):
        attention_rows(q, k, heads="per_head")
    lm, _ = build_tiny_lm(seed=0)
    with pytest.raises(CaptureError, match="heads='sum'"):
        capture_attention(lm, heads="sum")


@pytest.mark.parametrize("backend", BACKENDS)
def test_capture_per_head_matches_eager_output_attentions(backend):
    """Through capture_attention on the tiny GQA LM (left padding): rows and parameter gradients per head."""
    _triton_or_skip(backend)
    model, _ = build_tiny_lm(seed=0)
    model.to(DEVICE)
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 200, (2, 13), generator=gen).to(DEVICE)
    pad = torch.ones(2, 13, dtype=torch.long, device=DEVICE)
    pad[0, :4] = 0
    rows, heads = 6, model.config.num_attention_heads
    with capture_attention(model, num_rows=rows, backend=backend, heads="all") as cap:
        model(input_ids=ids, attention_mask=pad)
    ref = eager(input_ids=ids, attention_mask=pad, output_attentions=True).attentions[-1][:, :, -rows:]
    assert cap.probs.shape == (2, heads, rows, 13) and cap.probs.dtype == torch.float32
    torch.testing.assert_close(cap.probs, ref, atol=2e-6, rtol=0)
    weight = torch.randn(cap.probs.shape, generator=gen).to(DEVICE)
    (cap.probs * weight).sum().backward()
    (ref * weight).sum().backward()
    got = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    want = {n: p.grad for n, p in eager.named_parameters() if p.grad is not None}
    assert got.keys() == want.keys() and got
    for name in got:
        torch.testing.assert_close(got[name], want[name], atol=1e-5, rtol=1e-4, msg=name)
    with torch.no_grad(), capture_attention(model, num_rows=rows, backend=backend) as mean:
        model(input_ids=ids, attention_mask=pad)
    torch.testing.assert_close(cap.probs.detach().mean(1), mean.probs, atol=1e-7, rtol=0)
