"""capture_attention vs eager `output_attentions` (values and gradients) and the kernel against autograd."""

import copy
import importlib

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from trl_attention import CaptureError, capture_attention
from trl_attention.ops import attention_rows
from trl_attention.tiny import build_tiny_lm, build_tiny_qwen_vl, build_tiny_vlm, make_grounding_dataset


def _eager_twin(model):
    twin = copy.deepcopy(model)
    twin.set_attn_implementation("eager")
    return twin


def _eager_rows(model, rows, **inputs):
    out = model(**inputs, output_attentions=True)
    return out.attentions[-1].float().mean(1)[:, -rows:], out


def _lm_inputs(seed=0, batch=3, length=14, pad=(0, 4, 9)):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 200, (batch, length), generator=gen)
    mask = torch.ones(batch, length, dtype=torch.long)
    for row, n in enumerate(pad[:batch]):
        mask[row, :n] = 0  # left padding
    return {"input_ids": ids, "attention_mask": mask}


def _grads(model):
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _assert_grads_close(a, b, atol=1e-5):
    assert a.keys() == b.keys() and len(a) > 0
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=1e-4, msg=name)


@pytest.fixture(scope="module")
def lm():
    model, _ = build_tiny_lm(seed=0)
    return model


@pytest.mark.parametrize("rows", [1, 5, 14])
def test_lm_values_and_grads_match_eager_left_padded_gqa(lm, rows):
    model, eager = copy.deepcopy(lm), _eager_twin(lm)
    assert model.config.num_key_value_heads < model.config.num_attention_heads  # GQA
    inputs = _lm_inputs()
    weight = torch.randn(3, rows, 14, generator=torch.Generator().manual_seed(1))
    with capture_attention(model, num_rows=rows) as cap:
        out = model(**inputs)
    ref, ref_out = _eager_rows(eager, rows, **inputs)
    valid = inputs["attention_mask"].bool()
    torch.testing.assert_close(out.logits[valid], ref_out.logits[valid], atol=1e-5, rtol=1e-5)
    real_rows = valid[:, -rows:]  # fully masked (padding) query rows are 0 here, uniform in eager
    torch.testing.assert_close(cap.probs[real_rows], ref[real_rows], atol=1e-5, rtol=0)
    assert cap.probs.shape == (3, rows, 14) and cap.probs.dtype == torch.float32
    (cap.probs * weight * real_rows[..., None]).sum().backward()
    (ref * weight * real_rows[..., None]).sum().backward()
    _assert_grads_close(_grads(model), _grads(eager))


def test_capture_restores_implementation_and_only_target_layer_runs(lm):
    model = copy.deepcopy(lm)
    seen = []
    with capture_attention(model, num_rows=2, layer=1) as cap:
        assert model.config._attn_implementation != "sdpa"
        hook = model.model.layers[1].self_attn.register_forward_hook(lambda *a: seen.append(1))
        model(**_lm_inputs())
        hook.remove()
    assert model.config._attn_implementation == "sdpa"
    assert len(cap.records) == 1 and len(seen) == 1
    eager = _eager_twin(lm)
    out = eager(**_lm_inputs(), output_attentions=True)
    valid = _lm_inputs()["attention_mask"].bool()[:, -2:]
    torch.testing.assert_close(cap.probs[valid], out.attentions[1].mean(1)[:, -2:][valid], atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["none", "bool", "float"])
def test_mask_forms_match_eager_reference(kind):
    gen = torch.Generator().manual_seed(3)
    q = torch.randn(2, 4, 6, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    k = torch.randn(2, 2, 6, 8, generator=gen, dtype=torch.float64, requires_grad=True)
    keep = torch.ones(6, 6).tril().bool()[None, None].repeat(2, 1, 1, 1)
    keep[1, ..., :2] = False  # left padding of row 1
    keep[1, ..., :2, :2] = torch.eye(2, dtype=torch.bool)  # keep pad rows finite in the reference
    mask = {
        "none": None,
        "bool": keep,
        "float": torch.zeros(keep.shape, dtype=torch.float64).masked_fill(~keep, torch.finfo(torch.float64).min),
    }[kind]
    reference_keep = torch.ones(6, 6).tril().bool() if kind == "none" else keep
    scores = torch.matmul(q, k.repeat_interleave(2, dim=1).transpose(-1, -2)) / 8**0.5
    ref = torch.softmax(scores.masked_fill(~reference_keep, float("-inf")), -1).mean(1)[:, -4:]
    got = attention_rows(q, k, mask, None, True, num_rows=4)
    torch.testing.assert_close(got, ref, atol=1e-12, rtol=0)
    w = torch.randn(got.shape, generator=gen, dtype=torch.float64)
    gq, gk = torch.autograd.grad((got * w).sum(), (q, k))
    rq, rk = torch.autograd.grad((ref * w).sum(), (q, k))
    torch.testing.assert_close(gq, rq, atol=1e-12, rtol=0)
    torch.testing.assert_close(gk, rk, atol=1e-12, rtol=0)


def test_kernel_gradcheck_and_head_chunking():
    gen = torch.Generator().manual_seed(4)
    q = torch.randn(1, 6, 3, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 2, 5, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    for max_heads in (1, 2, 3):
        assert torch.autograd.gradcheck(lambda a, b, m=max_heads: attention_rows(a, b, None, 0.7, True, 3, m), (q, k))
    full = attention_rows(q, k, None, 0.7, True, 3, max_heads=3)
    torch.testing.assert_close(attention_rows(q, k, None, 0.7, True, 3, max_heads=1), full, atol=1e-14, rtol=0)


def test_fp32_softmax_for_bf16_inputs():
    gen = torch.Generator().manual_seed(5)
    q = torch.randn(1, 2, 4, 16, generator=gen).bfloat16()
    k = torch.randn(1, 2, 4, 16, generator=gen).bfloat16()
    got = attention_rows(q, k, None, None, True)
    ref = torch.softmax(
        (q.float() @ k.float().transpose(-1, -2) / 4).masked_fill(~torch.ones(4, 4).tril().bool(), -torch.inf), -1
    ).mean(1)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=0)


def test_gradient_checkpointing_same_grads(lm):
    inputs = _lm_inputs()
    weight = torch.randn(3, 6, 14, generator=torch.Generator().manual_seed(2))
    grads = []
    for checkpointing in (False, True):
        model = copy.deepcopy(lm).train()
        if checkpointing:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        with capture_attention(model, num_rows=6) as cap:
            out = model(**inputs)
        # backward after the capture has exited, as TRL does: the checkpoint recomputes with the plain kernel
        ((cap.probs * weight).sum() + out.logits.float().pow(2).mean()).backward()
        grads.append(_grads(model))
    _assert_grads_close(grads[0], grads[1], atol=1e-6)


def test_reentrant_checkpointing_is_a_clear_error(lm):
    model = copy.deepcopy(lm).train()
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": True})
    with pytest.raises(CaptureError, match="use_reentrant"), capture_attention(model, num_rows=2):
        pass


def test_repeated_entry_accumulates_chunks(lm):
    model = copy.deepcopy(lm)
    inputs = _lm_inputs()
    with torch.no_grad(), capture_attention(model, num_rows=3) as whole:
        model(**inputs)
    cap = capture_attention(model, num_rows=3)
    with torch.no_grad():
        for i in range(3):  # TRL scores a batch in chunks
            with cap:
                model(**{k: v[i : i + 1] for k, v in inputs.items()})
    assert cap.probs.shape == (3, 3, 14) and not cap.probs.requires_grad
    torch.testing.assert_close(cap.probs, whole.probs, atol=1e-6, rtol=0)
    cap.clear()
    with pytest.raises(CaptureError, match="no attention was captured"):
        _ = cap.probs


def test_vlm_values_and_grads_match_eager():
    model, processor = build_tiny_vlm(seed=0)
    eager = _eager_twin(model)
    rows = make_grounding_dataset(2, seed=1)
    texts = [processor.apply_chat_template(r["prompt"], add_generation_prompt=True, tokenize=False) for r in rows]
    texts[1] += "a longer answer"  # different lengths -> left padding
    processor.tokenizer.padding_side = "left"
    inputs = processor(text=texts, images=[r["image"] for r in rows], return_tensors="pt", padding=True)
    assert (inputs["attention_mask"] == 0).any()
    with capture_attention(model, num_rows=8) as cap:
        model(**inputs)
    ref, _ = _eager_rows(eager, 8, **inputs)
    image_id = model.config.image_token_id
    assert (inputs["input_ids"] == image_id).sum() > 0
    torch.testing.assert_close(cap.probs, ref, atol=1e-5, rtol=0)
    w = torch.randn(ref.shape, generator=torch.Generator().manual_seed(0))
    (cap.probs * w).sum().backward()
    (ref * w).sum().backward()
    _assert_grads_close(_grads(model), _grads(eager))
    assert any("visual" in n for n in _grads(model))  # gradients reach the vision tower through image tokens


def test_peft_wrapped_model_is_captured(lm):
    peft = pytest.importorskip("peft")
    model = peft.get_peft_model(copy.deepcopy(lm), peft.LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with capture_attention(model, num_rows=2) as cap:
        model(**_lm_inputs())
    ref, _ = _eager_rows(_eager_twin(lm), 2, **_lm_inputs())  # fresh LoRA B=0: same function as the base model
    torch.testing.assert_close(cap.probs, ref, atol=1e-5, rtol=0)
    (cap.probs * torch.randn(cap.probs.shape)).sum().backward()  # plain .sum() is constant: rows sum to 1
    assert any("lora_B" in n and p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters())


@pytest.mark.parametrize("rows", [-1, 0, 1.5, True, "2"])
def test_num_rows_must_be_a_positive_int(lm, rows):
    with pytest.raises(CaptureError, match=rf"capture_attention\(num_rows={rows!r}\): an int >= 1"):
        capture_attention(lm, num_rows=rows)


def test_unsupported_model_and_implementation_errors(lm):
    with pytest.raises(
        CaptureError, match=r"Linear.*cannot find the decoder layers|cannot find the decoder layers of Linear"
    ):
        capture_attention(torch.nn.Linear(2, 2))
    model = copy.deepcopy(lm)
    model.config._attn_implementation_internal = "no_such_kernel"  # not registered anywhere
    with pytest.raises(
        CaptureError, match="'no_such_kernel' of Qwen2ForCausalLM; supported: eager, .*flash_attention_2.*sdpa"
    ):
        capture_attention(model)
    model.config._attn_implementation_internal = "flex_attention"  # any registered kernel is wrapped now
    capture_attention(model)
    with pytest.raises(CaptureError, match="out of range"):
        capture_attention(lm, layer=99)


def test_other_attention_modules_keep_their_kernel():
    cfg = Qwen2Config(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
    )
    model = Qwen2ForCausalLM(cfg).eval()
    ids = torch.randint(0, 50, (1, 7))
    before = model(input_ids=ids).logits
    with capture_attention(model, num_rows=1):
        during = model(input_ids=ids).logits
    assert torch.equal(before, during)  # the capture does not change the model's output bit for bit


@pytest.mark.parametrize("kind", ["qwen2_vl", "qwen3_vl"])
def test_other_vlm_families_match_eager(kind):
    model, inputs = build_tiny_qwen_vl(kind)
    eager = _eager_twin(model)
    with capture_attention(model, num_rows=5) as cap:
        model(**inputs)
    ref, _ = _eager_rows(eager, 5, **inputs)
    torch.testing.assert_close(cap.probs, ref, atol=1e-5, rtol=0)
    w = torch.randn(ref.shape, generator=torch.Generator().manual_seed(0))
    (cap.probs * w).sum().backward()
    (ref * w).sum().backward()
    _assert_grads_close(_grads(model), _grads(eager))


def test_ddp_wrapped_model_is_captured(lm, tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
    try:
        model = DistributedDataParallel(copy.deepcopy(lm))
        with capture_attention(model, num_rows=3) as cap:
            model(**_lm_inputs())
        ref, _ = _eager_rows(_eager_twin(lm), 3, **_lm_inputs())
        valid = _lm_inputs()["attention_mask"].bool()[:, -3:]
        torch.testing.assert_close(cap.probs[valid], ref[valid], atol=1e-5, rtol=0)
        (cap.probs * torch.randn(cap.probs.shape)).sum().backward()  # DDP's reducer accepts the capture's graph
        assert model.module.model.layers[-1].self_attn.q_proj.weight.grad.abs().sum() > 0
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("mask_kind", ["none", "bool4d"])
def test_memory_is_bounded_by_rows_not_heads(monkeypatch, mask_kind):
    """Nothing of size H*C*T is saved for backward (nor a C*T bias built from a bool mask), and every transient
    (heads x row block x T) piece of forward/backward is at most max_heads heads and a quarter of C*T."""
    module = importlib.import_module("trl_attention.ops.attention_rows")  # the module, not the function

    batch, heads, rows, length, dim = 1, 8, 128, 160, 4
    q = torch.randn(batch, heads, rows, dim, requires_grad=True)
    k = torch.randn(batch, 1, length, dim, requires_grad=True)  # MQA: one key group holds all 8 heads
    mask = None if mask_kind == "none" else torch.ones(rows, length, dtype=torch.bool).tril(length - rows)[None, None]
    pieces, saved = [], []
    original = module._chunk_probs

    def recording(*args):
        result = original(*args)
        pieces.append(result[0].shape)
        return result

    monkeypatch.setattr(module, "_chunk_probs", recording)
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append((t.numel(), t.dtype)) or t, lambda t: t):
        out = attention_rows(q, k, mask, None, True, num_rows=rows, max_heads=2)
    out.mul(torch.randn(out.shape)).sum().backward()
    assert max(p[1] for p in pieces) == 2  # heads per piece
    assert max(p[1] * p[2] * p[3] for p in pieces) <= rows * length // 4
    assert sum(p[1] * p[2] for p in pieces) == 2 * heads * rows  # forward + backward cover every (head, row) once
    float_saved = [n for n, dtype in saved if dtype.is_floating_point]
    assert max(float_saved) <= max(batch * heads * rows * dim, batch * length * dim)  # q, k: no fp32 (C, T) bias
    torch.testing.assert_close(
        out, attention_rows(q, k, mask, None, True, num_rows=rows, max_heads=8), atol=1e-7, rtol=0
    )


def test_eager_base_with_additive_float_mask(lm):
    """An eager model hands the capture an additive float mask (min-value for padding), sdpa a bool one."""
    model = _eager_twin(lm)
    reference = _eager_twin(lm)
    seen = []
    hook = model.model.layers[-1].self_attn.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append(kwargs["attention_mask"].dtype), with_kwargs=True
    )
    inputs = _lm_inputs()
    with capture_attention(model, num_rows=6) as cap:
        model(**inputs)
    hook.remove()
    assert seen == [torch.float32] and model.config._attn_implementation == "eager"
    ref, _ = _eager_rows(reference, 6, **inputs)
    valid = inputs["attention_mask"].bool()[:, -6:]
    torch.testing.assert_close(cap.probs[valid], ref[valid], atol=1e-6, rtol=0)
    w = torch.randn(ref.shape, generator=torch.Generator().manual_seed(7)) * valid[..., None]
    (cap.probs * w).sum().backward()
    (ref * w).sum().backward()
    _assert_grads_close(_grads(model), _grads(reference))
