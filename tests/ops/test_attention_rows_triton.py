"""Fused Triton attention-rows kernels against the torch reference (values, dQ, dK), plus the backend dispatch.

Without CUDA the kernels run in Triton's CPU interpreter. TRITON_INTERPRET=1 must be set before triton is first
imported (trl and transformers import it through torch._dynamo), so conftest.py sets it for the whole session;
the line below only covers running this file without the project's conftest. No other test uses Triton.
"""

import copy
import importlib
import logging
import os
import sys

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

triton = pytest.importorskip("triton", reason="triton is not installed (pip install -e '.[dev]' installs it on Linux)")
if os.environ.get("TRITON_INTERPRET") == "1" and tuple(int(x) for x in triton.__version__.split(".")[:2]) < (3, 7):
    pytest.skip(
        f"triton {triton.__version__}'s CPU interpreter cannot run loops with runtime bounds under NumPy 2 "
        "(fixed in 3.7)",
        allow_module_level=True,
    )

from trl_attention import CaptureError, capture_attention
from trl_attention.ops import attention_rows
from trl_attention.ops.attention_rows import resolve_backend
from trl_attention.ops.attention_rows_triton import attention_rows_triton, is_interpreted
from trl_attention.tiny import build_tiny_lm

rows_module = importlib.import_module("trl_attention.ops.attention_rows")  # the module, not the function
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def test_kernels_run_where_expected():
    assert DEVICE == "cuda" or is_interpreted(), "triton was imported before TRITON_INTERPRET=1 (see conftest.py)"


def _mask(kind, batch, q_len, length, gen):
    """Masks in every form transformers hands over; batch element 0 has 6 keys of left padding."""
    pad = torch.ones(batch, length, dtype=torch.long)
    pad[0, :6] = 0
    if kind in ("none", "nocausal"):
        return None
    if kind in ("pad2d", "pad2d_nocausal"):
        return pad
    causal = torch.ones(q_len, length, dtype=torch.bool).tril(length - q_len)
    keep = causal[None, None] & pad.bool()[:, None, None, :]  # (B, 1, Q, T), as sdpa gets it
    if kind == "bool4d":
        return keep
    if kind == "float4d_padded":  # eager's additive mask with padding: padded query rows are all finfo.min
        return torch.zeros(keep.shape).masked_fill(~keep, torch.finfo(torch.float32).min)
    if kind == "float4d_broadcast":  # eager's additive mask, one row of it shared by the batch
        return torch.zeros(1, 1, q_len, length).masked_fill(~causal[None, None], torch.finfo(torch.float32).min)
    if kind == "bias4d":  # arbitrary additive bias with -inf holes
        bias = torch.randn(batch, 1, q_len, length, generator=gen)
        return bias.masked_fill(~keep, float("-inf"))
    raise ValueError(kind)


def _compare(batch, heads, kv_heads, q_len, length, dim, rows, kind, blocks=(16, 16), dtype=torch.float32, seed=0):
    gen = torch.Generator().manual_seed(seed)
    query = torch.randn(batch, heads, q_len, dim, generator=gen).to(DEVICE, dtype)
    key = torch.randn(batch, kv_heads, length, dim, generator=gen).to(DEVICE, dtype)
    mask = _mask(kind, batch, q_len, length, gen)
    mask = mask.to(DEVICE) if mask is not None else None
    causal = "nocausal" not in kind and q_len > 1
    scaling = dim**-0.5
    q_rows = query[:, :, q_len - rows :].contiguous().requires_grad_()
    key.requires_grad_()
    got = attention_rows_triton(q_rows, key, mask, scaling, causal, *blocks)
    ref = attention_rows(q_rows, key, mask, scaling, causal, backend="torch")
    weight = torch.randn(got.shape, generator=gen).to(DEVICE)
    grads = [torch.autograd.grad((out * weight).sum() + out.sum(-1).pow(2).sum(), (q_rows, key)) for out in (got, ref)]
    return got, ref, grads


CASES = {  # batch, heads, kv_heads, q_len, length, dim, rows, mask kind[, (block rows, block keys)]
    "odd_T_C_gqa_pad2d": (2, 4, 2, 37, 37, 8, 5, "pad2d"),
    "mqa_C_eq_T": (1, 4, 1, 37, 37, 16, 37, "none"),
    "C_eq_1_bool4d": (2, 4, 2, 37, 37, 8, 1, "bool4d"),
    "bool4d_padded_rows": (2, 2, 2, 20, 20, 8, 20, "bool4d"),  # rows 0-5 of batch 0 see nothing: zeros
    "float_min_broadcast": (2, 4, 2, 19, 19, 24, 7, "float4d_broadcast"),  # head dim 24: masked dims
    "float_min_padded_rows": (2, 2, 2, 20, 20, 8, 20, "float4d_padded"),  # as eager: uniform on padded rows
    "additive_bias": (2, 4, 4, 17, 17, 8, 9, "bias4d"),
    "no_causal_padding": (2, 4, 2, 11, 29, 8, 11, "pad2d_nocausal"),
    "single_query_with_cache": (2, 4, 2, 1, 23, 8, 1, "pad2d"),  # one query: no causal mask, like decoding
    "cache_longer_than_query": (1, 4, 2, 37, 45, 8, 37, "pad2d"),  # causal offset T - Q = 8, several row blocks
    "rectangular_tiles": (2, 4, 2, 30, 30, 8, 30, "none", (16, 32)),
    "rectangular_tiles_t": (1, 2, 1, 40, 40, 8, 40, "none", (32, 16)),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_fp32_matches_torch(case):
    got, ref, ((gq, gk), (rq, rk)) = _compare(*CASES[case], dtype=torch.float32)
    assert got.dtype == torch.float32 and got.shape == ref.shape
    if case == "bool4d_padded_rows":  # query rows that see no key are zeros, with zero gradient
        assert got[0, :6].abs().max() == 0 and gq[0, :, :6].abs().max() == 0
    if case == "float_min_padded_rows":  # finfo.min everywhere is not -inf: uniform rows, like eager
        torch.testing.assert_close(got[0, :6], torch.full((6, 20), 1 / 20), atol=1e-7, rtol=0)
    torch.testing.assert_close(got, ref, atol=2e-6, rtol=0)
    torch.testing.assert_close(gq, rq, atol=5e-6, rtol=1e-5)
    torch.testing.assert_close(gk, rk, atol=5e-6, rtol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("case", ["odd_T_C_gqa_pad2d", "mqa_C_eq_T", "float_min_broadcast"])
def test_half_precision_matches_torch(case, dtype):
    got, ref, ((gq, gk), (rq, rk)) = _compare(*CASES[case], dtype=dtype)
    assert got.dtype == torch.float32 and gq.dtype == dtype and gk.dtype == dtype
    torch.testing.assert_close(got, ref, atol=1e-5, rtol=0)  # fp32 softmax on exact half products
    for a, b in ((gq, rq), (gk, rk)):  # backward casts ds to the input dtype for the dot, as FlashAttention
        torch.testing.assert_close(a.float(), b.float(), atol=2e-2 * b.float().abs().max().item(), rtol=2e-2)


def test_default_blocks_and_dispatch_agree():
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(2, 4, 40, 16, generator=gen, device=DEVICE, requires_grad=True)
    k = torch.randn(2, 2, 40, 16, generator=gen, device=DEVICE, requires_grad=True)
    mask = torch.ones(2, 40, dtype=torch.long, device=DEVICE)
    mask[1, :3] = 0
    got = attention_rows(q, k, mask, None, True, num_rows=33, backend="triton")
    ref = attention_rows(q, k, mask, None, True, num_rows=33, backend="torch")
    torch.testing.assert_close(got, ref, atol=2e-6, rtol=0)
    w = torch.randn(got.shape, generator=gen, device=DEVICE)
    for a, b in zip(torch.autograd.grad((got * w).sum(), (q, k)), torch.autograd.grad((ref * w).sum(), (q, k))):
        torch.testing.assert_close(a, b, atol=5e-6, rtol=1e-5)


def test_saves_no_per_head_probabilities():
    batch, heads, rows, length, dim = 1, 8, 32, 64, 16
    q = torch.randn(batch, heads, rows, dim, device=DEVICE, requires_grad=True)
    k = torch.randn(batch, 1, length, dim, device=DEVICE, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.numel()) or t, lambda t: t):
        out = attention_rows(q, k, None, None, True, backend="triton")
    out.mul(torch.randn(out.shape, device=DEVICE)).sum().backward()
    assert max(saved) <= max(batch * heads * rows * dim, batch * length * dim)  # q, k, lse (B, H, C); masks
    assert q.grad.shape == q.shape and k.grad.shape == k.shape


def test_capture_backend_triton_matches_torch():
    """End to end through capture_attention: sdpa (bool mask) and eager (additive float mask), GQA, left padding."""
    base, _ = build_tiny_lm(seed=0)
    base.to(DEVICE)
    gen = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 200, (2, 13), generator=gen).to(DEVICE)
    pad = torch.ones(2, 13, dtype=torch.long, device=DEVICE)
    pad[0, :4] = 0
    weight = torch.randn(2, 6, 13, generator=gen).to(DEVICE)
    for impl in ("sdpa", "eager"):
        results = []
        for backend in ("triton", "torch"):
            model = copy.deepcopy(base)
            model.set_attn_implementation(impl)
            with capture_attention(model, num_rows=6, backend=backend) as cap:
                model(input_ids=ids, attention_mask=pad)
            (cap.probs * weight).sum().backward()
            results.append(
                (cap.probs.detach(), {n: p.grad for n, p in model.named_parameters() if p.grad is not None})
            )
        (got, got_grads), (ref, ref_grads) = results
        torch.testing.assert_close(got, ref, atol=2e-6, rtol=0)
        assert got_grads.keys() == ref_grads.keys()
        for name in ref_grads:
            torch.testing.assert_close(got_grads[name], ref_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_backend_errors_and_auto(monkeypatch):
    q, k = torch.randn(1, 2, 3, 4), torch.randn(1, 2, 3, 4)
    with pytest.raises(ValueError, match="unknown attention-rows backend 'cuda'"):
        attention_rows(q, k, backend="cuda")
    lm, _ = build_tiny_lm(seed=0)
    with pytest.raises(CaptureError, match="unknown attention-rows backend"):
        capture_attention(lm, backend="fast")
    assert resolve_backend("auto", "cpu") == "torch"  # CPU default stays torch, even under the interpreter
    assert resolve_backend("torch", "cpu") == "torch"
    triton_ops = importlib.import_module("trl_attention.ops.attention_rows_triton")
    monkeypatch.setattr(triton_ops, "is_interpreted", lambda: False)  # as on a CPU machine without the interpreter
    with pytest.raises(RuntimeError, match="needs CUDA tensors .*TRITON_INTERPRET=1"):
        attention_rows(q, k, backend="triton")
    with pytest.raises(CaptureError, match="needs CUDA tensors"):
        capture_attention(lm, backend="triton")
    monkeypatch.setitem(sys.modules, "triton", None)  # triton not installed
    monkeypatch.delitem(sys.modules, "trl_attention.ops.attention_rows_triton")
    monkeypatch.delattr(sys.modules["trl_attention.ops"], "attention_rows_triton")
    with pytest.raises(RuntimeError, match=r"triton is not installed.*trl-attention\[triton\]"):
        resolve_backend("triton", "cuda")
    assert resolve_backend("auto", "cuda") == "torch"


def test_float64_falls_back_to_torch_with_a_logged_reason(caplog, monkeypatch):
    monkeypatch.setattr(rows_module, "_warned", set())  # logged once per reason and process
    q = torch.randn(1, 2, 5, 4, dtype=torch.float64, device=DEVICE, requires_grad=True)
    k = torch.randn(1, 1, 5, 4, dtype=torch.float64, device=DEVICE, requires_grad=True)
    with caplog.at_level(logging.WARNING, logger="trl_attention.ops.attention_rows"):
        got = attention_rows(q, k, None, None, True, backend="triton")
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, attention_rows(q, k, None, None, True, backend="torch"), atol=0, rtol=0)
    assert any("falling back to the torch backend for dtypes torch.float64" in r.getMessage() for r in caplog.records)
