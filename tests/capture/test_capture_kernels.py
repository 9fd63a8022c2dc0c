"""capture_attention on softcapped (Gemma2), sink (GPT-OSS) and sliding-window (Qwen2) models, and under a kernel
that follows flash-attention's calling convention, against the same model run with eager `output_attentions`.

"fake_varlen" is a registered stand-in for flash-attention (no flash_attn on this machine): its mask function is
transformers' `flash_attention_mask`, so it gets a 2D padding mask or None, padding-free batches come as packed
`position_ids` or `cu_seq_lens_q/k`, the window as `sliding_window`, and it returns (B, Q, H, D) with no weights.
It rebuilds its own mask from those and runs the model's eager kernel, so its output equals eager's.
"""

import copy
import sys

import pytest
import torch
from transformers import (
    AttentionInterface,
    Gemma2Config,
    Gemma2ForCausalLM,
    GptOssConfig,
    GptOssForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)
from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

from trl_attention import CaptureError, capture_attention
from trl_attention.capture.hooks import ANY, AttentionHooks, attention_hooks, flash_convention

SEEN = {}  # what the stand-in kernel was last given


def _flash_style_keep(query, key, attention_mask, sliding_window, position_ids, cu_q):
    """(B, 1, Q, T) bool for a training forward (Q == T), rebuilt independently of trl_attention."""
    batch, length = query.shape[0], key.shape[2]
    idx = torch.arange(length)
    keep = (idx[None, :] <= idx[:, None])[None].expand(batch, -1, -1)
    if sliding_window is not None:
        keep = keep & (idx[None, :] > idx[:, None] - sliding_window)
    if attention_mask is not None:
        keep = keep & attention_mask.bool()[:, None, :]
    elif batch == 1 and (cu_q is not None or position_ids is not None):  # (flash flattens the batch)
        if cu_q is not None:
            seg = torch.repeat_interleave(torch.arange(len(cu_q) - 1), cu_q.diff())
        else:
            seg = (position_ids[0] == 0).cumsum(0)
        keep = keep & (seg[:, None] == seg[None, :])
    return (keep | torch.eye(length, dtype=torch.bool))[:, None]  # padding rows see themselves: no NaN


def fake_varlen(module, query, key, value, attention_mask, scaling=None, sliding_window=None, **kwargs):
    assert attention_mask is None or attention_mask.dim() == 2, "a flash-style kernel gets no 4D mask"
    SEEN.update(mask=attention_mask, impl=module.config._attn_implementation, kwargs=set(kwargs))
    keep = _flash_style_keep(
        query, key, attention_mask, sliding_window, kwargs.get("position_ids"), kwargs.get("cu_seq_lens_q")
    )
    mask = torch.zeros(keep.shape).masked_fill(~keep, torch.finfo(torch.float32).min)
    eager = sys.modules[type(module).__module__].eager_attention_forward
    softcap = {"softcap": kwargs["softcap"]} if "softcap" in kwargs else {}
    out, _ = eager(module, query, key, value, mask, scaling=scaling, **softcap)
    return out, None  # (B, Q, H, D)


AttentionInterface.register("fake_varlen", fake_varlen)
AttentionMaskInterface.register("fake_varlen", flash_attention_mask)

SMALL = {"vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4}
SMALL.update(num_key_value_heads=2, head_dim=8)
LAYERS = ["sliding_attention", "full_attention"]


def _tiny(family):
    torch.manual_seed(0)
    if family == "gemma2":  # attn_logit_softcapping small enough that tanh bends the scores
        cfg = Gemma2Config(**SMALL, intermediate_size=64, sliding_window=4, layer_types=LAYERS)
        cfg.attn_logit_softcapping, cfg.final_logit_softcapping, cfg.query_pre_attn_scalar = 0.5, None, 8
        model = Gemma2ForCausalLM(cfg)
    elif family == "gpt_oss":
        cfg = GptOssConfig(**SMALL, intermediate_size=32, num_local_experts=4, num_experts_per_tok=2)
        cfg.sliding_window, cfg.layer_types = 4, LAYERS
        model = GptOssForCausalLM(cfg)
        with torch.no_grad():
            for layer in model.model.layers:
                layer.self_attn.sinks.normal_(0.0, 1.0)
    else:
        cfg = Qwen2Config(**SMALL, intermediate_size=64, use_sliding_window=True, sliding_window=4)
        cfg.layer_types = LAYERS
        model = Qwen2ForCausalLM(cfg)
    return model.eval()


def _padded(batch=2, length=11, seed=0):
    gen = torch.Generator().manual_seed(seed)
    mask = torch.ones(batch, length, dtype=torch.long)
    mask[0, :3] = 0
    return {"input_ids": torch.randint(3, 64, (batch, length), generator=gen), "attention_mask": mask}


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _check(model, reference, inputs, layer, rows, valid, ref_inputs=None):
    """Rows and parameter gradients of the capture on `model` against eager output_attentions of `reference`."""
    with capture_attention(model, num_rows=rows, layer=layer, backend="torch") as cap:
        model(**inputs)
    ref = reference(**(ref_inputs or inputs), output_attentions=True).attentions[layer].float().mean(1)[:, -rows:]
    torch.testing.assert_close(cap.probs[valid], ref[valid], atol=1e-5, rtol=0)
    weight = torch.randn(ref.shape, generator=torch.Generator().manual_seed(1)) * valid[..., None]
    (cap.probs * weight).sum().backward()
    (ref * weight).sum().backward()
    got, want = _grads(model), _grads(reference)
    assert got.keys() == want.keys() and got
    for name in want:
        torch.testing.assert_close(got[name], want[name], atol=1e-5, rtol=1e-4, msg=name)
    return cap.probs, got


@pytest.mark.parametrize("base", ["eager", "fake_varlen"])
@pytest.mark.parametrize("layer", [0, 1], ids=["sliding", "full"])
@pytest.mark.parametrize("family", ["gemma2", "gpt_oss", "qwen2"])
def test_families_match_eager_left_padded(family, layer, base):
    """eager: 4D mask (window inside) + softcap / s_aux kwargs; fake_varlen: 2D mask + `sliding_window` kwarg."""
    reference = _tiny(family)
    reference.set_attn_implementation("eager")
    model = copy.deepcopy(reference)
    model.set_attn_implementation(base)
    inputs = _padded()
    valid = inputs["attention_mask"].bool()[:, -6:]
    probs, grads = _check(model, reference, inputs, layer, 6, valid)
    if base == "fake_varlen":
        assert SEEN["impl"] == "fake_varlen" and SEEN["mask"].dim() == 2  # its own name, a 2D mask
    if family == "gpt_oss":  # rows sum to 1 minus the sinks' share; the sinks get gradients
        assert (probs[valid].sum(-1) < 1 - 1e-3).all()
        assert grads[f"model.layers.{layer}.self_attn.sinks"].abs().sum() > 0
    else:
        torch.testing.assert_close(probs[valid].sum(-1), torch.ones(int(valid.sum())), atol=1e-6, rtol=0)


@pytest.mark.parametrize("how", ["position_ids", "cu_seq_lens"])
@pytest.mark.parametrize("family", ["qwen2", "gemma2"])
def test_padding_free_packed_batch_matches_eager(family, how):
    """One row holding three sequences (TRL's padding_free): block-diagonal rows, equal to eager's packed mask."""
    reference = _tiny(family)
    reference.set_attn_implementation("eager")
    model = copy.deepcopy(reference)
    model.set_attn_implementation("fake_varlen")
    lengths = torch.tensor([5, 3, 6])
    position_ids = torch.cat([torch.arange(n) for n in lengths])[None]
    ids = torch.randint(3, 64, (1, int(lengths.sum())), generator=torch.Generator().manual_seed(2))
    inputs = {"input_ids": ids, "position_ids": position_ids, "use_cache": False}  # as in training
    if how == "cu_seq_lens":
        cu = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)]).int()
        inputs.update(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=6, max_length_k=6)
        assert flash_convention("fake_varlen")
    ref_inputs = {"input_ids": ids, "position_ids": position_ids, "use_cache": False}  # eager: packed 4D mask
    probs, _ = _check(model, reference, inputs, 1, 10, torch.ones(1, 10, dtype=torch.bool), ref_inputs)
    assert SEEN["mask"] is None
    assert probs[0, -1, :8].abs().max() == 0  # the last sequence sees nothing of the first two


def test_packed_batch_of_several_rows_is_an_error():
    model = _tiny("qwen2")
    model.set_attn_implementation("fake_varlen")
    cu = torch.tensor([0, 3, 8], dtype=torch.int32)
    kwargs = {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": 5, "max_length_k": 5}
    with pytest.raises(CaptureError, match="batch of one row"), capture_attention(model, num_rows=2):
        model(input_ids=torch.randint(3, 64, (2, 4)), **kwargs)


def test_steering_hooks_accept_only_what_they_declare():
    """AttentionHooks built directly (VRGA) accepts sdpa/eager only; attention_hooks(implementations=...) says more."""
    model = _tiny("qwen2")
    model.set_attn_implementation("fake_varlen")
    with pytest.raises(CaptureError, match="'fake_varlen' of Qwen2ForCausalLM; supported: sdpa, eager"):
        AttentionHooks(model, lambda *a: None)
    with pytest.raises(CaptureError, match="supported: sdpa$|supported: sdpa \\("):
        attention_hooks(model, lambda *a: None, implementations=("sdpa",))
    seen = []
    hooks = attention_hooks(model, lambda *a: seen.append(a[6][0].shape) and None, layers=[1], implementations=ANY)
    with hooks:
        model(**_padded())
        assert model.config._attn_implementation == "trl_attention_capture_fake_varlen"
    assert model.config._attn_implementation == "fake_varlen"
    assert seen == [torch.Size([2, 11, 4, 8])]  # the hook sees the kernel's (B, Q, H, D) output


@pytest.mark.parametrize("family", ["gemma2", "gpt_oss"])
def test_triton_backend_matches_torch_on_families(family):
    """The fused kernels with softcap / sinks / a window passed as a kwarg, end to end (interpreter on CPU)."""
    pytest.importorskip("triton")
    from trl_attention.ops.attention_rows_triton import is_interpreted

    if not (torch.cuda.is_available() or is_interpreted()):
        pytest.skip("triton was imported before TRITON_INTERPRET=1")
    results = []
    for backend in ("triton", "torch"):
        model = _tiny(family)
        model.set_attn_implementation("fake_varlen")
        with capture_attention(model, num_rows=5, layer=0, backend=backend) as cap:
            model(**_padded())
        (cap.probs * torch.randn(cap.probs.shape, generator=torch.Generator().manual_seed(0))).sum().backward()
        results.append((cap.probs.detach(), _grads(model)))
    (got, got_grads), (ref, ref_grads) = results
    torch.testing.assert_close(got, ref, atol=2e-6, rtol=0)
    assert got_grads.keys() == ref_grads.keys()
    for name in ref_grads:
        torch.testing.assert_close(got_grads[name], ref_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_flex_block_mask_is_materialised():
    """A flex-attention BlockMask is evaluated on the captured rows (its mask_mod holds causality and padding)."""
    from torch.nn.attention.flex_attention import create_block_mask

    from trl_attention.ops.masks import kernel_mask

    pad = torch.tensor([[0, 0, 1, 1, 1, 1, 1, 1], [1] * 8]).bool()

    def mask_mod(b, h, q, kv):
        return (kv <= q) & (kv > q - 3) & pad[b, kv]

    block = create_block_mask(mask_mod, 2, None, 8, 8, device="cpu", _compile=False)
    keep, causal, window = kernel_mask(block, {"sliding_window": 3}, 2, 5, 8, 8, True, False, "cpu")
    q, kv = torch.arange(3, 8)[:, None], torch.arange(8)[None, :]
    want = ((kv <= q) & (kv > q - 3))[None] & pad[:, None, :]
    assert torch.equal(keep[:, 0], want) and causal is False and window is None


def test_paged_attention_is_refused():
    model = _tiny("qwen2")
    with pytest.raises(CaptureError, match="paged attention"), capture_attention(model, num_rows=2):
        model(input_ids=torch.randint(3, 64, (1, 4)), block_table=torch.zeros(1, 1, dtype=torch.int32))
