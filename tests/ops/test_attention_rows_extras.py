"""Softcapping, attention sinks and sliding windows: torch reference and fused Triton kernels against eager.

The eager references are the models' own `eager_attention_forward` (Gemma2: softcap; GPT-OSS: sinks), given the
4D mask transformers builds for a sliding window; the kernels get the window as `sliding_window` and no mask, or a
2D padding mask. Values and gradients w.r.t. q, k (and the sinks) in fp32; Triton in the CPU interpreter.
"""

import os
import types

import pytest
import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from transformers.models.gemma2.modeling_gemma2 import eager_attention_forward as gemma2_eager
from transformers.models.gpt_oss.modeling_gpt_oss import eager_attention_forward as gpt_oss_eager

from trl_attention.ops import attention_rows
from trl_attention.ops.attention_rows import normalize_mask

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _keep(batch, q_len, length, window, pad):
    """(B, 1, Q, T) bool as transformers' sliding-window causal mask: keys in (p - w, p], p = T - Q + j."""
    pos = torch.arange(length - q_len, length)[:, None]
    key = torch.arange(length)[None, :]
    keep = key <= pos
    if window is not None:
        keep = keep & (key > pos - window)
    keep = keep[None, None].expand(batch, 1, q_len, length)
    if pad:
        pad_mask = torch.ones(batch, length, dtype=torch.bool)
        pad_mask[0, :pad] = False
        keep = keep & pad_mask[:, None, None, :]
    return keep


def _eager(kind, q, k, keep, scaling, softcap, sinks):
    """Head-mean eager probabilities of the model family `kind`, (B, Q, T)."""
    heads, kv_heads = q.shape[1], k.shape[1]
    module = types.SimpleNamespace(
        num_key_value_groups=heads // kv_heads, head_dim=q.shape[-1], training=False, sinks=sinks
    )
    mask = torch.zeros(keep.shape, device=q.device).masked_fill(~keep, torch.finfo(torch.float32).min)
    v = torch.zeros_like(k)
    if kind == "gpt_oss" and softcap is not None:  # no model family has both: GPT-OSS's eager with Gemma2's cap
        scores = torch.matmul(q, k.repeat_interleave(heads // kv_heads, 1).transpose(-1, -2)) * scaling
        scores = torch.tanh(scores / softcap) * softcap + mask
        logits = torch.cat([scores, sinks.view(1, -1, 1, 1).expand(*scores.shape[:3], 1)], dim=-1)
        weights = torch.softmax(logits, dim=-1)[..., :-1]
    elif kind == "gpt_oss":
        _, weights = gpt_oss_eager(module, q, k, v, mask, scaling=scaling)
    else:
        _, weights = gemma2_eager(module, q, k, v, mask, scaling=scaling, softcap=softcap)
    return weights.mean(1)


CASES = {  # batch, heads, kv_heads, q_len, length, dim, rows, softcap, sinks, window, left padding, mask given
    "softcap": (2, 4, 2, 19, 19, 8, 7, 0.8, False, None, 5, "pad2d"),
    "softcap_window": (1, 4, 2, 37, 37, 8, 37, 2.0, False, 9, 0, "none"),
    "sinks": (2, 4, 2, 19, 19, 8, 7, None, True, None, 5, "pad2d"),
    "sinks_window_cache": (1, 4, 1, 20, 37, 8, 20, None, True, 6, 0, "none"),  # 17 cached keys
    "window_only_pad": (2, 2, 2, 33, 33, 8, 33, None, False, 5, 4, "pad2d"),
    "all_three": (2, 4, 2, 24, 24, 8, 9, 1.5, True, 7, 3, "pad2d"),
    "window_4d_mask": (2, 4, 2, 19, 19, 8, 7, 1.0, True, 4, 5, "bool4d"),  # the window lives in the mask
}


def _inputs(case, seed=0):
    batch, heads, kv_heads, q_len, length, dim, rows, softcap, sink, window, pad, mask_kind = CASES[case]
    gen = torch.Generator().manual_seed(seed)
    q = (torch.randn(batch, heads, q_len, dim, generator=gen) * 2).to(DEVICE).requires_grad_()
    k = (torch.randn(batch, kv_heads, length, dim, generator=gen) * 2).to(DEVICE).requires_grad_()
    sinks = torch.randn(heads, generator=gen).to(DEVICE).requires_grad_() if sink else None
    keep = _keep(batch, q_len, length, window, pad).to(DEVICE)
    pad_mask = None
    if pad:  # the 2D padding mask a flash-style kernel gets (the window and causality are not in it)
        pad_mask = torch.ones(batch, length, dtype=torch.long, device=DEVICE)
        pad_mask[0, :pad] = 0
    mask = {"none": None, "pad2d": pad_mask, "bool4d": keep}[mask_kind]
    extras = {"softcap": softcap, "sinks": sinks, "sliding_window": window}
    return q, k, sinks, keep, mask, rows, extras


def _grads(out, weight, inputs):
    return torch.autograd.grad((out * weight).sum() + out.sum(-1).pow(2).sum(), inputs)


@pytest.mark.parametrize("case", list(CASES))
def test_torch_reference_matches_eager(case):
    q, k, sinks, keep, mask, rows, extras = _inputs(case)
    kind = "gpt_oss" if sinks is not None else "gemma2"
    ref = _eager(kind, q, k, keep, q.shape[-1] ** -0.5, extras["softcap"], sinks)[:, -rows:]
    got = attention_rows(q, k, mask, None, True, num_rows=rows, backend="torch", **extras)
    valid = keep[:, 0, -rows:].any(-1)  # padding query rows: zeros here, uniform in eager
    torch.testing.assert_close(got[valid], ref[valid], atol=2e-6, rtol=0)
    weight = torch.randn(got.shape, generator=torch.Generator().manual_seed(1)).to(DEVICE) * valid[..., None]
    inputs = (q, k) if sinks is None else (q, k, sinks)
    for a, b in zip(_grads(got * valid[..., None], weight, inputs), _grads(ref * valid[..., None], weight, inputs)):
        torch.testing.assert_close(a, b, atol=5e-6, rtol=1e-5)
    if sinks is not None:  # rows sum to 1 minus the sink's head-mean share
        assert (got[valid].sum(-1) < 1 - 1e-4).all()


@pytest.mark.parametrize("case", list(CASES))
def test_triton_matches_torch_reference(case):
    pytest.importorskip("triton")
    from trl_attention.ops.attention_rows_triton import attention_rows_triton

    q, k, sinks, keep, mask, rows, extras = _inputs(case, seed=2)
    q_rows = q[:, :, -rows:].detach().contiguous().requires_grad_()
    got = attention_rows_triton(q_rows, k, mask, q.shape[-1] ** -0.5, q.shape[2] > 1, 16, 16, **extras)
    ref = attention_rows(q_rows, k, mask, None, True, backend="torch", **extras)
    torch.testing.assert_close(got, ref, atol=2e-6, rtol=0)
    weight = torch.randn(got.shape, generator=torch.Generator().manual_seed(3)).to(DEVICE)
    inputs = (q_rows, k) if sinks is None else (q_rows, k, sinks)
    for a, b in zip(_grads(got, weight, inputs), _grads(ref, weight, inputs)):
        torch.testing.assert_close(a, b, atol=5e-6, rtol=1e-5)


def test_sliding_window_convention_and_gradcheck():
    """Window w keeps keys (p - w, p] (transformers' sliding_window_overlay, flash's window_size=(w-1, 0))."""
    bias = normalize_mask(None, 1, 4, 6, 6, True, "cpu", sliding_window=3)[0, 0]
    assert (bias == 0).tolist() == [[q - 3 < t <= q for t in range(6)] for q in range(2, 6)]
    assert normalize_mask(None, 1, 4, 6, 6, True, "cpu", sliding_window=6) is not None  # causal still
    gen = torch.Generator().manual_seed(4)
    q = torch.randn(1, 4, 5, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 2, 7, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    s = torch.randn(4, generator=gen, dtype=torch.float64, requires_grad=True)
    fn = lambda a, b, c: attention_rows(a, b, None, 0.7, True, 3, 1, softcap=1.3, sinks=c, sliding_window=3)  # noqa: E731
    assert torch.autograd.gradcheck(fn, (q, k, s))
