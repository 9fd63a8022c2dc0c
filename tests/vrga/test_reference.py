"""VRGA's two presets: what the released code computes (preset="reference", items 1-9 of docs/vrga-fidelity.md)
against hand-computed values, and the paper's rules where they differ."""

import copy
import math

import pytest
import torch

from trl_attention.tiny import build_tiny_vlm, make_grounding_dataset
from trl_attention.vrga import VRGAConfig, enable_vrga
from trl_attention.vrga.config import PRESETS
from trl_attention.vrga.reference import focus_ratio, mirrored_focus, mirrored_positions, mirrored_threshold
from trl_attention.vrga.select import (
    boosted_heads,
    focus_tokens,
    image_statistics,
    refined_map,
    select_focus,
    select_heads,
    sink_mask,
)


def test_presets_fill_only_the_fields_left_at_none():
    ref, paper = VRGAConfig(), VRGAConfig(preset="paper")
    assert ref.preset == "reference"
    assert {k: getattr(ref, k) for k in PRESETS["reference"]} == PRESETS["reference"]
    assert {k: getattr(paper, k) for k in PRESETS["paper"]} == PRESETS["paper"]
    mixed = VRGAConfig(neighborhood="2d", background_pairs=64)  # explicit fields win over the preset
    assert (mixed.neighborhood, mixed.background_pairs, mixed.focus_threshold) == ("2d", 64, "mirrored")
    with pytest.raises(ValueError, match="preset='released'"):
        VRGAConfig(preset="released")
    with pytest.raises(ValueError, match="focus_threshold"):
        VRGAConfig(focus_threshold="mean")
    with pytest.raises(ValueError, match="q_end_pos"):
        VRGAConfig(q_end_pos=0)


# -- item 1: the threshold statistics over att_ratio[~mask_flat] -----------------------------------------------------
def test_mirrored_positions_are_the_bitwise_not_indices():
    sink = torch.zeros(13, dtype=torch.bool)
    sink[[0, 1, 4]] = True
    assert mirrored_positions(sink).tolist() == [12, 11, 8]
    ratio = torch.arange(13.0)
    assert torch.equal(ratio[mirrored_positions(sink)], ratio[~torch.tensor([0, 1, 4])])  # the code's expression


def test_mirrored_threshold_finite_case_by_hand():
    """3x4 grid + <|vision_start|>: span 13, sinks int(0.2 * 13) = 2 -> span {0, 1}; mirrored {12, 11}."""
    sink = sink_mask([(1, 3, 4)], "edge+corner", fraction=0.2, slot=True)
    assert torch.nonzero(sink).flatten().tolist() == [0, 1]
    refined = torch.tensor([5.0, 5.0] + [1.0] * 9 + [2.0, 4.0])  # the sinks' 5s stay out of the mean
    ratio = focus_ratio(refined, sink)
    assert ratio[2].item() == pytest.approx(11 / 15) and ratio[12].item() == pytest.approx(44 / 15)
    assert ratio[0].item() == -1e9
    # mean and Bessel std of {22/15, 44/15}: 2.2 and (22/15)/sqrt(2)
    assert mirrored_threshold(ratio, sink, 0.6).item() == pytest.approx(2.2 + 0.6 * 22 / 15 / math.sqrt(2))
    assert torch.nonzero(mirrored_focus(refined, sink, 0.6, 1)).flatten().tolist() == [12]
    # the stated rule (mean + 0.6 std over the 11 non-sinks) keeps span 11 and 12
    stated = focus_tokens(refined, sink, VRGAConfig(preset="paper", min_focus_tokens=1))
    assert torch.nonzero(stated).flatten().tolist() == [11, 12]


def test_mirrored_threshold_near_minus_1e8_selects_every_non_sink():
    """10x10 grid: the 20 sinks are the whole list; 9 of their mirrors (S-1-i for i = 10, 20, ..., 90) are sinks."""
    sink = sink_mask([(1, 10, 10)], "edge+corner", fraction=0.2, slot=True)
    assert int(sink.sum()) == 20 and int(sink[mirrored_positions(sink)].sum()) == 9
    refined = torch.rand(101, generator=torch.Generator().manual_seed(0)) + 0.5
    ratio = focus_ratio(refined, sink)
    values = [-1e9] * 9 + [float(ratio[i]) for i in mirrored_positions(sink) if not sink[i]]
    mean = sum(values) / 20
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / 19)
    threshold = mirrored_threshold(ratio, sink, 0.6).item()
    assert threshold == pytest.approx(mean + 0.6 * std, rel=1e-6) and threshold == pytest.approx(-1.4375e8, rel=1e-3)
    focus = mirrored_focus(refined, sink, 0.6, 10)
    assert torch.equal(focus, ~sink) and int(focus.sum()) == 81


def test_mirrored_threshold_large_positive_keeps_exactly_the_top_ten():
    """8x8 grid: 13 sinks; of their mirrors only span 32 (its own mirror) is a sink: threshold ~ +8.95e7."""
    sink = sink_mask([(1, 8, 8)], "edge+corner", fraction=0.2, slot=True)
    assert torch.nonzero(sink).flatten().tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 24, 32]
    assert sorted(mirrored_positions(sink).tolist()) == [32, 40, 48, 55, 56, 57, 58, 59, 60, 61, 62, 63, 64]
    refined = torch.rand(65, generator=torch.Generator().manual_seed(1)) + 0.5
    ratio = focus_ratio(refined, sink)
    assert mirrored_threshold(ratio, sink, 0.6).item() == pytest.approx(8.949e7, rel=1e-3)
    focus = mirrored_focus(refined, sink, 0.6, 10)
    top = torch.where(sink, -torch.inf, refined).topk(10).indices
    assert int(focus.sum()) == 10 and focus[top].all()


# -- item 2: Norm = divide by the sum, sinks included ----------------------------------------------------------------
def test_sum_all_norm_by_hand():
    maps = torch.tensor([[[4.0, 2.0, 1.0, 1.0], [1.0, 1.0, 2.0, 0.0]]])  # (L=1, H=2, S=4): visual 0, background 1
    visual, background = torch.tensor([[True, False]]), torch.tensor([[False, True]])
    sink = torch.tensor([True, False, False, False])
    ref = refined_map(maps, visual, background, sink, VRGAConfig())
    # [.5, .25, .125, .125] - [.25, .25, .5, 0] -> clamp [.25, 0, 0, .125] -> / .375 (the sink keeps its share)
    torch.testing.assert_close(ref, torch.tensor([2 / 3, 0.0, 0.0, 1 / 3]))
    paper = refined_map(maps, visual, background, sink, VRGAConfig(preset="paper"))
    # min-max over the non-sinks: [0, 1, 0, 0] - [0, .5, 1, 0] -> [0, .5, 0, 0] -> [0, 1, 0, 0]
    torch.testing.assert_close(paper, torch.tensor([0.0, 1.0, 0.0, 0.0]))
    alone = refined_map(maps, visual, torch.zeros_like(background), sink, VRGAConfig())
    torch.testing.assert_close(alone, torch.tensor([0.5, 0.25, 0.125, 0.125]))


# -- items 3 and 7: the sink grid from <|vision_start|>, cut to int(0.2 * span) -------------------------------------
def test_sink_grid_one_token_early_and_cut():
    image_only = sink_mask([(1, 3, 4)], "edge+corner")
    assert torch.nonzero(image_only).flatten().tolist() == [0, 1, 2, 3, 4, 5, 8]
    early = sink_mask([(1, 3, 4)], "edge+corner", slot=True)  # span index p is image token p - 1
    assert early.numel() == 13 and torch.nonzero(early).flatten().tolist() == [0, 1, 2, 3, 4, 5, 8]
    assert (torch.nonzero(early).flatten() - 1).tolist() == [-1, 0, 1, 2, 3, 4, 7]  # the slot, row 1 col 3 ...
    assert torch.nonzero(sink_mask([(1, 4, 4)], "edge+corner", fraction=0.2, slot=True)).flatten().tolist() == [
        0,
        1,
        4,
    ]
    assert int(sink_mask([(1, 16, 16)], "edge+corner", fraction=0.2, slot=True).sum()) == 32  # int(51.4) >= 32


# -- items 5 and 6: the boost test's entropy, the background window ------------------------------------------------
def test_boost_entropy_of_the_unrenormalised_row():
    """100 keys: 50 image keys at 0.007 (mass 0.35), 50 text keys at 0.013. R_img = 0.007 / 0.01 = 0.7."""
    probs = torch.full((1, 50), 0.007, dtype=torch.float64)
    mean_all = torch.tensor([0.01], dtype=torch.float64)
    r, h_image, _ = image_statistics(probs, mean_all)
    _, h_row, _ = image_statistics(probs, mean_all, entropy="row")
    assert r.item() == pytest.approx(0.7)
    assert h_image.item() == pytest.approx(math.log(50), rel=1e-6)  # 0.2 * 3.912 > 0.7: not boosted
    assert h_row.item() == pytest.approx(-0.35 * math.log(0.007), rel=1e-9)  # 0.2 * 1.737 < 0.7: boosted
    assert not boosted_heads(r, h_image, VRGAConfig(preset="paper")).item()
    assert boosted_heads(r, h_row, VRGAConfig()).item()


def test_background_heads_among_the_first_63_pairs():
    r_img = torch.ones(10, 10)
    efr = torch.full((10, 10), 3.0)
    r_img[7, 3], efr[7, 3] = 5.0, 0.5
    r_img[0, 5] = r_img[6, 2] = r_img[6, 3] = 0.001  # pairs 5, 62, 63 (0-based, layer-major)
    pairs = lambda m: set(map(tuple, torch.nonzero(m).tolist()))  # noqa: E731
    assert pairs(select_heads(r_img, efr, VRGAConfig())[1]) == {(0, 5), (6, 2)}
    assert pairs(select_heads(r_img, efr, VRGAConfig(preset="paper"))[1]) == {(0, 5), (6, 2), (6, 3)}


# -- items 8 and 9: 1-D neighbourhood, no centre below span index 3 --------------------------------------------------
def test_no_neighbourhood_centre_below_span_index_three():
    """1x8 image + slot (span 9); focus at span 2 and 4 = image tokens 1 and 3; only span 4 is a centre."""
    r_img, efr = torch.tensor([[5.0, 1.0]]), torch.tensor([[0.1, 3.0]])  # head 0 visual, no background head
    maps = torch.full((1, 2, 9), 0.01)
    maps[0, 0, 2], maps[0, 0, 4] = 1.0, 0.8
    cfg = VRGAConfig(sink_exclusion="none", min_focus_tokens=2)  # no sinks: NaN threshold, the top 2
    sel = select_focus(r_img, efr, maps, [(1, 1, 8)], cfg, slot=True)
    assert torch.nonzero(sel.focus).flatten().tolist() == [1, 3]
    assert torch.nonzero(sel.boosted).flatten().tolist() == [1, 2, 3, 4, 5]  # token 1 boosted as a neighbour
    every = select_focus(r_img, efr, maps, [(1, 1, 8)], VRGAConfig(**{**vars(cfg), "min_centre_index": 0}), True)
    assert torch.nonzero(every.boosted).flatten().tolist() == [0, 1, 2, 3, 4, 5]


# -- the whole reference mode on the tiny VLM ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def vlm():
    return build_tiny_vlm(seed=0)


def _one(processor, seed=3):
    row = make_grounding_dataset(1, seed=seed)[0]
    text = processor.apply_chat_template(row["prompt"], add_generation_prompt=True, tokenize=False)
    return processor(text=[text], images=[row["image"]], return_tensors="pt"), row["prompt"][0]["content"][1]["text"]


def test_reference_stage_one_row_keys_and_mean(vlm):
    """Query row vision_end + len(question ids) - 1 (eval_qwen.py), keys from <|vision_start|>, R_img's mean over
    all T prompt keys; checked against eager attentions."""
    model, processor = vlm
    inputs, question = _one(processor)
    ids = inputs["input_ids"][0]
    vision_start = int(torch.nonzero(ids == model.config.vision_start_token_id)[0])
    vision_end = int(torch.nonzero(ids == model.config.vision_end_token_id)[0])
    row = vision_end + len(processor.tokenizer(question, add_special_tokens=False).input_ids) - 1
    assert row < len(ids) - 1
    with enable_vrga(model, VRGAConfig()) as vrga:
        model(**inputs)
    diag = vrga.diagnostics[0]
    assert diag.query_position == row
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    att = torch.stack([a[0, :, row] for a in eager(**inputs, output_attentions=True).attentions]).double()
    span = att[..., vision_start:vision_end]  # (L, H, V + 1)
    r_img = span.mean(-1) / (att.sum(-1) / len(ids))
    torch.testing.assert_close(diag.r_img.double(), r_img, atol=1e-5, rtol=1e-5)
    renorm = span / span.sum(-1, keepdim=True)
    torch.testing.assert_close(diag.h_img.double(), -(renorm * (renorm + 1e-8).log()).sum(-1), atol=1e-5, rtol=1e-5)
    for given in (dict(q_end_pos=vision_end + 2), {}):  # the keyword, then the config field
        cfg = VRGAConfig(q_end_pos=vision_end + 2) if not given else VRGAConfig()
        with enable_vrga(model, cfg, **given) as vrga:
            model(**inputs)
        assert vrga.diagnostics[0].query_position == vision_end + 1


@pytest.mark.parametrize("preset", ["reference", "paper"])
def test_boosted_rows_follow_the_preset_statistics(vlm, preset):
    """Each decoding layer's output = p' @ V, p' boosted (x1.5 on focus_positions) in the heads whose statistics
    pass the preset's test: reference keys from <|vision_start|>, entropy of the unrenormalised row."""
    model, processor = vlm
    inputs, _ = _one(processor)
    seen = []

    def observe(layer, module, query, key, value, mask, output, kwargs):
        if query.shape[2] == 1:
            seen.append((query, key, value, output[0], module.scaling))

    from trl_attention.capture import attention_hooks

    cfg = VRGAConfig(preset=preset, boost_r_min=1.0)
    with enable_vrga(model, cfg) as vrga, attention_hooks(model, observe):
        model.generate(**inputs, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    ids = inputs["input_ids"][0]
    keys = ids == model.config.image_token_id
    if preset == "reference":
        keys[int(torch.nonzero(keys)[0]) - 1] = True
    boosted = kept = 0
    for query, key, value, out, scaling in seen:
        group = query.shape[1] // key.shape[1]
        k, v = key.double().repeat_interleave(group, 1), value.double().repeat_interleave(group, 1)
        probs = torch.softmax(query.double() @ k.transpose(-1, -2) * scaling, -1)[0, :, 0]  # (H, T)
        image = torch.zeros(probs.shape[-1], dtype=torch.bool)
        image[: len(ids)] = keys
        entropy = "row" if preset == "reference" else "image"
        r, h, _ = image_statistics(probs[:, image], probs.mean(-1), entropy=entropy)
        boost = boosted_heads(r, h, cfg)
        boosted, kept = boosted + int(boost.sum()), kept + int((~boost).sum())
        factor = torch.ones_like(probs)
        factor[boost.nonzero().flatten()[:, None], vrga.diagnostics[0].focus_positions[None, :]] = 1.5
        row = probs * factor
        expected = torch.einsum("ht,htd->hd", row / row.sum(-1, keepdim=True), v[0])
        torch.testing.assert_close(out[0, 0].double(), expected, atol=2e-6, rtol=1e-5)
    assert boosted and kept and len(seen) == 4 * 3
