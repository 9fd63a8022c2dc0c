"""VRGA: statistics, stage-1 selection on constructed maps, and generation on the tiny VLMs against references."""

import copy
import math

import pytest
import torch

from tests.testing_utils import ROOT
from trl_attention import CaptureError
from trl_attention.capture import attention_hooks
from trl_attention.tiny import build_tiny_lm, build_tiny_qwen_vl, build_tiny_vlm, make_grounding_dataset
from trl_attention.vrga import VRGAConfig, enable_vrga, head_statistics
from trl_attention.vrga.runtime import _split_grids
from trl_attention.vrga.select import dilate, focus_tokens, refined_map, select_heads, sink_mask

GEN = {
    "max_new_tokens": 5,
    "min_new_tokens": 5,
    "do_sample": False,
    "output_scores": True,
    "return_dict_in_generate": True,
}


# -- statistics and stage 1 on constructed inputs ------------------------------------------------------------------
def test_head_statistics_against_direct_computation():
    gen = torch.Generator().manual_seed(0)
    attn = torch.softmax(torch.randn(3, 4, 20, generator=gen, dtype=torch.float64) * 2, -1)
    image = torch.zeros(20, dtype=torch.bool)
    image[[2, 3, 4, 9, 10, 15]] = True
    r_img, h_img, efr = head_statistics(attn, image)
    for layer in range(3):
        for head in range(4):
            row = attn[layer, head].tolist()
            img = [row[i] for i in range(20) if image[i]]
            r = (sum(img) / len(img)) / (sum(row) / len(row))
            h = -sum(a / sum(img) * math.log(a / sum(img) + 1e-8) for a in img)
            assert r_img[layer, head].item() == pytest.approx(r, rel=1e-12)
            assert h_img[layer, head].item() == pytest.approx(h, rel=1e-12)
            assert efr[layer, head].item() == pytest.approx(h / r, rel=1e-12)
    with pytest.raises(ValueError, match="image_mask"):
        head_statistics(attn, image[:5])


def test_select_heads_known_answer_and_fallback():
    r_img = torch.full((10, 10), 1.0)  # 100 (layer, head) pairs
    efr = torch.full((10, 10), 3.0) + torch.arange(100.0).view(10, 10) / 100
    r_img[7, 3], efr[7, 3] = 5.0, 0.5  # the only focused, image-heavy head
    r_img[0, 5] = r_img[6, 3] = 0.001  # low-R heads: (0, 5) is among the first 64 pairs, (6, 3) = pair 63 too
    r_img[6, 4] = 0.001  # pair 64: outside the early window
    visual, background, fallback = select_heads(r_img, efr, VRGAConfig(preset="paper"))
    assert not fallback
    assert torch.nonzero(visual).tolist() == [[7, 3]] or set(map(tuple, torch.nonzero(visual).tolist())) >= {(7, 3)}
    assert set(map(tuple, torch.nonzero(background).tolist())) == {(0, 5), (6, 3)}
    # no head is both low-EFR and high-R: visual heads come from the R_img percentile alone
    efr2 = efr.clone()
    efr2[7, 3] = 10.0
    efr2[1, 1] = 0.1  # focused but with an ordinary R_img
    visual2, _, fallback2 = select_heads(r_img, efr2, VRGAConfig(preset="paper", visual_r_percentile=99.0))
    assert fallback2 and torch.equal(visual2, r_img >= torch.quantile(r_img.flatten().double(), 0.99).float())


def test_refined_map_and_focus_tokens_known_answer():
    grid = [(1, 6, 6)]
    target = torch.zeros(6, 6)
    target[3:5, 2:4] = 1.0  # the question-relevant region: 4 tokens
    distractor = torch.zeros(6, 6)
    distractor[1:3, 4:6] = 1.0
    maps = torch.full((2, 2, 36), 0.01)
    maps[1, 0] += 0.2 * target.flatten() + 0.1 * distractor.flatten()  # visual head: target + distractor
    maps[0, 1] += 0.2 * distractor.flatten()  # background head: the distractor only
    maps[:, :, 0] = 0.5  # an attention sink in the corner
    visual = torch.tensor([[False, False], [True, False]])
    background = torch.tensor([[False, True], [False, False]])
    cfg = VRGAConfig(preset="paper", min_focus_tokens=2)
    sink = sink_mask(grid, cfg.sink_exclusion)
    assert sink.view(6, 6)[0].all() and sink.view(6, 6)[:, 0].all() and sink.view(6, 6)[1, 1] and sink.sum() == 12
    refined = refined_map(maps, visual, background, sink, cfg)
    assert refined.sum().item() == pytest.approx(1.0) and (refined >= 0).all()
    assert torch.equal(refined.view(6, 6) > 0, target > 0)  # background subtraction removed the distractor
    assert torch.equal(focus_tokens(refined, sink, cfg).view(6, 6), target > 0)
    # without background heads the distractor survives; min_focus_tokens tops up from the largest values
    kept = refined_map(maps, visual, torch.zeros_like(background), sink, cfg)
    assert (kept.view(6, 6)[1:3, 4:6] > 0).all()
    many = focus_tokens(refined, sink, VRGAConfig(preset="paper", min_focus_tokens=10))
    assert many.sum() == 10 and (many.view(6, 6) >= (target > 0)).all() and not (many & sink).any()


def test_neighbourhood_2d_and_1d():
    selected = torch.zeros(2 * 5 * 5, dtype=torch.bool)  # two 5x5 images
    selected[2 * 5 + 4] = True  # image 0, row 2, col 4 (right edge)
    grids = [(1, 5, 5), (1, 5, 5)]
    two_d = dilate(selected, grids, "2d", 1).view(2, 5, 5)
    expected = torch.zeros(2, 5, 5, dtype=torch.bool)
    expected[0, 1:4, 3:5] = True
    assert torch.equal(two_d, expected)
    one_d = dilate(selected, grids, "1d", 2)
    assert torch.nonzero(one_d).flatten().tolist() == [12, 13, 14, 15, 16]  # wraps rows, stays in image 0
    last = torch.zeros(50, dtype=torch.bool)
    last[24] = True
    assert torch.nonzero(dilate(last, grids, "1d", 2)).flatten().tolist() == [22, 23, 24]  # never into image 1


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="neighborhood"):
        VRGAConfig(neighborhood="3d")
    with pytest.raises(ValueError, match="gamma"):
        VRGAConfig(gamma=-1.0)
    with pytest.raises(ValueError, match="visual_r_percentile"):
        VRGAConfig(visual_r_percentile=120.0)


# -- generation on the tiny VLM ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vlm():
    return build_tiny_vlm(seed=0)


def _batch(processor, n=3, seed=1, two_images=True):
    """Left-padded batch; sample 0 holds two images when `two_images`. Returns (inputs, texts, images per sample)."""
    rows = make_grounding_dataset(n + 1, seed=seed)
    images = [[rows[i]["image"]] for i in range(n)]
    prompts = [copy.deepcopy(rows[i]["prompt"]) for i in range(n)]
    if two_images:
        images[0].append(rows[n]["image"].resize((112, 84)))
        prompts[0][0]["content"].insert(1, {"type": "image"})
    texts = [processor.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts]
    texts[-1] += "Answer with one word."
    inputs = processor(text=texts, images=[im for ims in images for im in ims], return_tensors="pt", padding=True)
    assert (inputs["attention_mask"] == 0).any()
    return inputs, texts, images


def test_gamma_zero_is_plain_generate(vlm):
    model, processor = vlm
    inputs, _, _ = _batch(processor)
    plain = model.generate(**inputs, **GEN)
    with enable_vrga(model, VRGAConfig(gamma=0.0)) as vrga:
        steered = model.generate(**inputs, **GEN)
    assert torch.equal(plain.sequences, steered.sequences)
    for a, b in zip(plain.scores, steered.scores):
        assert torch.equal(a, b)
    assert sum(int(c.sum()) for c in (d.boost_counts for d in vrga.diagnostics)) > 0  # the path ran and boosted
    assert model.config.text_config._attn_implementation == "sdpa"
    assert "get_image_features" not in vars(model.model)


def test_boosted_rows_are_reweighted_and_renormalised(vlm):
    """Every decoding layer's output equals p' @ V with p' the eager-style row, focus tokens (+ neighbours)
    multiplied by 1+gamma in the heads that pass the boost test, renormalised."""
    model, processor = vlm
    inputs, _, _ = _batch(processor)
    gamma, seen = 0.5, []

    def observe(layer, module, query, key, value, mask, output, kwargs):
        if query.shape[2] == 1:
            seen.append((query, key, value, mask, output[0], module.scaling))

    # the paper's boost test (image-only keys, renormalised entropy); the reference's is in test_reference.py
    cfg = VRGAConfig(preset="paper", gamma=gamma, boost_r_min=1.0)  # tiny model's R_img ~1: some heads pass
    with enable_vrga(model, cfg) as vrga, attention_hooks(model, observe):
        model.generate(**inputs, **GEN)
    image = inputs["input_ids"] == model.config.image_token_id
    boosted_any = kept_any = False
    for query, key, value, mask, out, scaling in seen:
        group = query.shape[1] // key.shape[1]
        k, v = key.double().repeat_interleave(group, 1), value.double().repeat_interleave(group, 1)
        scores = query.double() @ k.transpose(-1, -2) * scaling
        keep = mask[:, :, -1:].expand_as(scores) if mask is not None else torch.ones_like(scores, dtype=torch.bool)
        probs = torch.softmax(scores.masked_fill(~keep, -math.inf), -1)[:, :, 0]  # (B, H, T)
        for b in range(query.shape[0]):
            valid = keep[b, 0, 0]
            img = torch.zeros(valid.shape, dtype=torch.bool)
            img[: image.shape[1]] = image[b]
            r, h, _ = head_statistics(probs[b][None][..., valid], img[valid])
            boost = (r[0] > cfg.boost_r_min) & (r[0] > cfg.boost_r_over_h * h[0])
            boosted_any |= bool(boost.any())
            kept_any |= bool((~boost).any())
            factor = torch.ones_like(probs[b])
            factor[boost.nonzero().flatten()[:, None], vrga.diagnostics[b].focus_positions[None, :]] = 1 + gamma
            row = probs[b] * factor
            row = row / row.sum(-1, keepdim=True)
            expected = torch.einsum("ht,htd->hd", row, v[b])
            torch.testing.assert_close(out[b, 0].double(), expected, atol=2e-6, rtol=1e-5)
    assert boosted_any and kept_any and len(seen) == 4 * (GEN["max_new_tokens"] - 1)


def test_stage_one_statistics_match_eager_attentions(vlm):
    model, processor = vlm
    inputs, _, _ = _batch(processor)
    with enable_vrga(model, VRGAConfig(preset="paper")) as vrga:  # last prompt token, image tokens only
        model(**inputs)
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    attentions = eager(**inputs, output_attentions=True).attentions
    rows = torch.stack([a[:, :, -1] for a in attentions], 1)  # (B, L, H, T) of the last prompt token
    for b, diag in enumerate(vrga.diagnostics):
        valid = inputs["attention_mask"][b].bool()
        image = (inputs["input_ids"][b] == model.config.image_token_id)[valid]
        r, h, efr = head_statistics(rows[b][..., valid], image)
        torch.testing.assert_close(diag.r_img, r, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(diag.h_img, h, atol=1e-5, rtol=1e-5)
        visual, background, _ = select_heads(r, efr, VRGAConfig(preset="paper"))
        assert diag.visual_heads == [tuple(p) for p in torch.nonzero(visual).tolist()]
        assert diag.background_heads == [tuple(p) for p in torch.nonzero(background).tolist()]
    assert [m.shape for m in vrga.diagnostics[0].focus] == [(4, 4), (3, 4)]  # two images: 112x112 and 112x84


@pytest.mark.parametrize("preset", ["reference", "paper"])
def test_batch_with_left_padding_equals_one_at_a_time(vlm, preset):
    model, processor = vlm
    inputs, texts, images = _batch(processor)
    cfg = VRGAConfig(preset=preset, gamma=2.0, sink_exclusion="none", min_focus_tokens=3)
    with enable_vrga(model, cfg) as vrga:
        batched = model.generate(**inputs, **GEN)
        together = vrga.diagnostics
        for b, (text, ims) in enumerate(zip(texts, images)):
            single_inputs = processor(text=[text], images=ims, return_tensors="pt")
            single = model.generate(**single_inputs, **GEN)
            alone = vrga.diagnostics[0]
            n = single.sequences.shape[1]
            assert torch.equal(batched.sequences[b, -GEN["max_new_tokens"] :], single.sequences[0, n - 5 :])
            for a, s in zip(batched.scores, single.scores):
                torch.testing.assert_close(a[b], s[0], atol=1e-4, rtol=1e-4)
            assert together[b].visual_heads == alone.visual_heads
            for key in ("focus", "boosted_tokens"):
                assert all(torch.equal(x, y) for x, y in zip(getattr(together[b], key), getattr(alone, key)))
            assert torch.equal(together[b].boost_counts, alone.boost_counts)
            pad = int((inputs["attention_mask"][b] == 0).sum())
            assert torch.equal(together[b].focus_positions - pad, alone.focus_positions)
            assert together[b].query_position - pad == alone.query_position


def test_gamma_changes_the_distribution_and_explicit_modes_agree(vlm):
    model, processor = vlm
    inputs, _, _ = _batch(processor, two_images=False)
    plain = model.generate(**inputs, **GEN)
    cfg = VRGAConfig(gamma=3.0)
    with enable_vrga(model, cfg):
        fast = model.generate(**inputs, **GEN)
    with enable_vrga(model, VRGAConfig(gamma=3.0, mode="explicit")):
        explicit = model.generate(**inputs, **GEN)
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    with enable_vrga(eager, VRGAConfig(gamma=3.0, mode="explicit")):
        all_eager = eager.generate(**inputs, **GEN)
    finite = [(a - b)[a.isfinite()].abs().max().item() for a, b in zip(plain.scores[1:], fast.scores[1:])]
    assert max(finite) > 1e-3  # the boost moved the next-token distribution from the second token on
    for other in (explicit, all_eager):
        for a, b in zip(fast.scores, other.scores):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", ["qwen2_vl", "qwen3_vl"])
def test_other_families(kind):
    model, inputs = build_tiny_qwen_vl(kind)
    gen = {**GEN, "max_new_tokens": 3, "min_new_tokens": 3}
    plain = model.generate(**inputs, **gen)
    # hand-made ids without a chat turn: the reference preset's question row does not exist, so query='last'
    with enable_vrga(model, VRGAConfig(gamma=0.0, query="last")):
        same = model.generate(**inputs, **gen)
    steer = VRGAConfig(preset="paper", gamma=4.0, min_focus_tokens=1, radius=0, sink_exclusion="none")
    with enable_vrga(model, steer) as vrga:
        steered = model.generate(**inputs, **gen)
    assert torch.equal(plain.sequences, same.sequences)
    assert all(torch.equal(a, b) for a, b in zip(plain.scores, same.scores))
    assert [d.focus[0].shape for d in vrga.diagnostics] == [(2, 2), (2, 2)]
    assert any(not torch.equal(a, b) for a, b in zip(plain.scores[1:], steered.scores[1:]))


def test_unsupported_models_are_clear_errors(vlm):
    lm, _ = build_tiny_lm()
    with pytest.raises(CaptureError, match="Qwen2ForCausalLM has no image_token_id"):
        enable_vrga(lm)
    model = copy.deepcopy(vlm[0])
    model.config.text_config._attn_implementation_internal = "flash_attention_2"
    with pytest.raises(CaptureError, match="Qwen2_5_VLForConditionalGeneration.*sdpa, eager"):
        enable_vrga(model)
    ids = torch.tensor([[7, 5, 5, 5, 5, 8], [7, 5, 5, 9, 9, 8]])
    with pytest.raises(ValueError, match=r"sample 1 has 2 image tokens.*\[\[1, 4, 4\]\]"):
        _split_grids(ids, 5, torch.tensor([[1, 4, 4], [1, 4, 4]]), 2)
    with pytest.raises(ValueError, match="3 images but the input_ids hold only 2"):
        _split_grids(ids[:1].repeat(2, 1), 5, torch.tensor([[1, 4, 4]] * 3), 2)
    model = vlm[0]
    with enable_vrga(model), pytest.raises(ValueError, match="use_cache=True"):
        model(input_ids=ids, use_cache=False)
    assert model.config.text_config._attn_implementation == "sdpa"  # the with block restored everything


def test_readme_snippet_runs(vlm):
    import re

    readme = (ROOT / "docs" / "vrga.md").read_text()
    code = re.search(r"# VRGA.*?```python\n(.*?)```", readme, re.DOTALL).group(1)
    model, processor = vlm
    inputs, _, _ = _batch(processor)
    attn = torch.softmax(torch.randn(2, 3, 10), -1)
    namespace = {"model": model, "inputs": inputs, "attn": attn, "image_mask": torch.arange(10) < 4}
    exec(compile(code.replace("max_new_tokens=128", "max_new_tokens=3"), "docs/vrga.md", "exec"), namespace)
    assert namespace["d"].focus[0].shape == (4, 4) and namespace["r_img"].shape == (2, 3)
    assert namespace["out"].shape[1] == inputs["input_ids"].shape[1] + 3
