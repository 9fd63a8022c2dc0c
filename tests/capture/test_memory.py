"""Peak live tensor memory of `attention_rows` (torch reference), counted per aten op, not timed.

The claim (issue 14, item 8): beyond the gradients of its inputs, forward + backward hold the returned rows, their
gradient (two fp32 (B, C, T) tensors) and a piece-sized workspace, never more: no (B, H, C, T) probabilities, no
broadcast copy of the keys per head, no (C, T) bias, nothing (C, T)-sized saved for backward. The count is a
TorchDispatchMode that adds the bytes of every storage an op creates and subtracts them when the storage is freed:
exact for the tensors ops hand out, blind only to scratch memory inside a single kernel. Every measured call is
also checked against a dense float64 reference, so the pieces cannot buy memory with wrong values.
"""

import gc
import importlib
import weakref

import pytest
import torch

from trl_attention import capture_attention
from trl_attention_recipes.memory import LiveTensorBytes
from trl_attention.ops import attention_rows
from trl_attention.tiny import build_tiny_lm

ops_module = importlib.import_module("trl_attention.ops.attention_rows")  # the package re-exports the function


def _inputs(batch=2, num_heads=4, kv_heads=2, rows=256, length=1024, mask="causal"):
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(batch, num_heads, length, 16, generator=gen, requires_grad=True)
    k = torch.randn(batch, kv_heads, length, 16, generator=gen, requires_grad=True)
    weight = torch.randn(length, generator=gen)
    attention_mask, window = None, None
    if mask == "padding+window":
        attention_mask, window = torch.ones(batch, length, dtype=torch.long), length // 3
        attention_mask[0, : length // 4] = 0
    elif mask == "dead rows":  # a 4D bool mask in which some captured rows see no key at all
        attention_mask = torch.ones(batch, 1, rows, length, dtype=torch.bool).tril(length - rows)
        attention_mask[:, :, ::7] = False
    return q, k, weight, attention_mask, window


def _reference(q, k, attention_mask, window, rows, softcap, heads):
    """Dense eager attention rows of the last `rows` queries (fully masked rows: zeros)."""
    q = q[:, :, -rows:]
    length = k.shape[2]
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    scores = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
    if softcap is not None:
        scores = softcap * torch.tanh(scores / softcap)
    if attention_mask is not None and attention_mask.dim() == 4:
        keep = attention_mask
    else:
        pos, key = torch.arange(length - rows, length)[:, None], torch.arange(length)[None, :]
        keep = key <= pos
        if window is not None:
            keep = keep & (key > pos - window)
        keep = keep[None, None]
        if attention_mask is not None:
            keep = keep & attention_mask[:, None, None, :].bool()
    probs = scores.masked_fill(~keep, float("-inf")).softmax(-1).nan_to_num(0.0)
    return probs if heads == "all" else probs.mean(1)


def _measure(heads="mean", mask="causal", softcap=None, **shape):
    """(peak live bytes of forward, of forward + backward less the dQ/dK it returns, bytes of the rows, fp32
    (B, C, T) bytes), after checking values and gradients against `_reference`."""
    q, k, weight, attention_mask, window = _inputs(mask=mask, **shape)
    rows = shape.get("rows", 256)
    kwargs = {"heads": heads, "softcap": softcap, "sliding_window": window}
    with LiveTensorBytes() as counter:
        out = attention_rows(q, k, attention_mask, None, True, num_rows=rows, backend="torch", **kwargs)
        forward = counter.peak
        grads = torch.autograd.grad((out @ weight).sum(), (q, k))  # the rows' gradient: one (B, C, T) tensor
    total = counter.peak - sum(g.numel() * g.element_size() for g in grads)
    qd, kd = q.detach().double().requires_grad_(), k.detach().double().requires_grad_()
    expected = _reference(qd, kd, attention_mask, window, rows, softcap, heads)
    torch.testing.assert_close(out, expected.float(), atol=1e-5, rtol=1e-4)
    expected_grads = torch.autograd.grad((expected @ weight.double()).sum(), (qd, kd))
    for got, want in zip(grads, expected_grads):
        torch.testing.assert_close(got, want.float(), atol=1e-4, rtol=1e-3)
    batch, length = q.shape[0], k.shape[2]
    return forward, total, out.numel() * 4, batch * rows * length * 4


CASES = [
    {},
    {"mask": "padding+window"},
    {"mask": "dead rows"},
    {"softcap": 30.0},
    {"heads": "all"},
    {"batch": 1, "kv_heads": 1},
]


@pytest.mark.parametrize("piece_elements", [None, 1 << 15], ids=["default pieces", "small pieces"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: ",".join(f"{k}={v}" for k, v in c.items()) or "causal")
def test_peak_is_rows_their_gradient_and_a_piece(case, piece_elements, monkeypatch):
    if piece_elements is not None:  # pieces far below C*T: any (C, T)-sized buffer would stand out
        monkeypatch.setattr(ops_module, "PIECE_ELEMENTS", piece_elements)
    forward, total, rows_bytes, bct = _measure(**case)
    rows, length = case.get("rows", 256), case.get("length", 1024)
    group = min(case.get("num_heads", 4) // case.get("kv_heads", 2), ops_module.DEFAULT_MAX_HEADS)
    # a piece: at most min(PIECE_ELEMENTS, C*T/4) elements of one batch row, but never under 16 rows of a head chunk
    piece = max(min(ops_module.PIECE_ELEMENTS, rows * length // 4), 16 * group * length)
    row_slice = 4 * (piece // (group * length)) * length  # fp32 (block rows x T)
    # softcap keeps its tanh and heads="all" its p * g in a second piece; four row slices: the head sum or g - delta,
    # a block's bias and dead-row flags, the previous block's while the next is built, the q / dQ pieces
    pieces = 2 if case.get("softcap") or case.get("heads") == "all" else 1
    workspace = pieces * 4 * piece + 4 * row_slice
    assert workspace <= bct / 2  # the bounds below cannot pass one more (B, C, T) tensor
    assert forward <= rows_bytes + workspace, ((forward - rows_bytes) / bct, case)
    assert total <= 2 * rows_bytes + workspace, ((total - 2 * rows_bytes) / bct, case)


def test_counter_sees_a_naive_implementation():
    """The counter catches what the kernel avoids: eager softmax rows hold (B, H, C, T) probabilities."""
    q, k, weight, _, _ = _inputs()
    bct = 2 * 256 * 1024 * 4
    with LiveTensorBytes() as counter:
        keep = torch.ones(256, 1024, dtype=torch.bool).tril(1024 - 256)
        scores = (q[:, :, -256:] @ k.repeat_interleave(2, 1).transpose(-1, -2) / 4).masked_fill(~keep, float("-inf"))
        out = scores.softmax(-1).mean(1)
        torch.autograd.grad((out @ weight).sum(), (q, k))
    assert counter.peak > 8 * bct  # 4 heads of scores and probabilities: far above 2 + a piece


def test_a_finished_capture_frees_its_rows_without_the_cyclic_gc():
    """The hooks hold the capture's method weakly: no capture <-> hooks cycle keeps each step's rows (and the
    capture) alive until a full garbage collection, one (B, C, T) tensor per training step."""
    model, _ = build_tiny_lm(seed=0)
    ids = torch.randint(3, 50, (2, 12), generator=torch.Generator().manual_seed(0))
    gc.disable()
    try:
        with capture_attention(model, num_rows=4) as cap:
            model(input_ids=ids).logits.sum().backward()
        rows, capture = weakref.ref(cap.probs), weakref.ref(cap)
        del cap
        assert capture() is None and rows() is None
        with capture_attention(model, num_rows=4) as cap:  # a new capture still records
            model(input_ids=ids)
        assert cap.probs.shape == (2, 4, 12)
    finally:
        gc.enable()
