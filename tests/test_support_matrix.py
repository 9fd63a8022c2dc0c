"""docs/support-matrix.md is computed here: each cell runs the tiny model of that family through the feature, and
the committed page must equal the rendering. Rewrite it with `TRL_ATTENTION_WRITE_MATRIX=1 pytest
tests/test_support_matrix.py`."""

import copy
import math
import os
import warnings

import numpy as np
import torch
from datasets import Dataset

from tests.testing_utils import PROMPTS, ROOT, gkd_args, length_reward, trainer_args
from trl_attention import AttentionGRPOConfig, AttentionGRPOTrainer, CaptureError, capture_attention
from trl_attention.capture import unwrap_model
from trl_attention.visual.layouts import LayoutError, visual_layout
from trl_attention.tiny import build_tokenizer
from trl_attention_recipes.families import (
    HYBRID_FAMILIES,
    IMAGE_TOKEN_ID,
    TEXT_FAMILIES,
    available_families,
    build_tiny_family,
    dummy_inputs,
)

PAGE = ROOT / "docs" / "support-matrix.md"
FEATURES = ["capture", "RAL", "SAYO", "GKD", "VRGA", "heatmap", "video"]
NOTES = {
    "gemma3": "fixed grid: `mm_tokens_per_image` pooled tokens per image (pan-and-scan crops refused)",
    "gemma4": "dynamic grid: `image_position_ids` patches / `pooling_kernel_size`",
    "llava": "fixed grid: (image_size / patch_size)^2 patch tokens (center-cropped non-square images refused)",
    "llava_onevision": "anyres tiles: base image + tiles' unpadded grid + one newline token per row",
    "internvl": "tiles of `image_seq_length` tokens (pixel shuffle)",
    "idefics3": "tiles (image splitting) of `image_seq_length` tokens each",
    "smolvlm": "tiles (image splitting) of `image_seq_length` tokens each",
    "qwen2_vl": "dynamic grid: `image_grid_thw` / `spatial_merge_size` (14 px patches)",
    "qwen3_vl": "dynamic grid: `image_grid_thw` / `spatial_merge_size` (16 px patches, DeepStack features)",
    "qwen3_5_vl": "dynamic grid: `image_grid_thw` / `spatial_merge_size`",
    "qwen2_5_vl": "dynamic grid; video: grid.prod() / merge^2 tokens per clip, M-RoPE temporal positions",
}


def _capture_cell(model, inputs):
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    try:
        with capture_attention(model, num_rows=3) as cap:
            model(**inputs)
    except CaptureError:
        return "clear error"
    ref = eager(**inputs, output_attentions=True).attentions[-1].float().mean(1)[:, -3:]
    valid = inputs["attention_mask"].bool()[:, -3:]
    torch.testing.assert_close(cap.probs[valid], ref[valid], atol=1e-5, rtol=0)
    return "supported"


def _ral_cell(model, tokenizer, tmp_path):
    args = trainer_args(
        AttentionGRPOConfig,
        tmp_path,
        max_steps=1,
        per_device_train_batch_size=2,
        num_generations=2,
        max_completion_length=4,
        attn_coef=1.0,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            trainer = AttentionGRPOTrainer(
                model=model,
                reward_funcs=length_reward,
                args=args,
                train_dataset=Dataset.from_dict({"prompt": PROMPTS[:2]}),
                processing_class=tokenizer,
            )
        except CaptureError:
            return "clear error"
        trainer.train()
    jsd = [h["attention/jsd"] for h in trainer.state.log_history if "attention/jsd" in h]
    assert len(jsd) == 1 and 0 <= jsd[0] < 1e-6  # one step on its own rollouts: p_theta == p_old
    return "supported"


def _gkd_cell(name, model, tokenizer, tmp_path):
    """One AttentionGKDTrainer step with attention distillation on text prompts (on-policy: the student generates),
    the teacher the family's tiny model of another seed; the CaptureError at construction where unsupported."""
    from trl_attention import AttentionGKDConfig, AttentionGKDTrainer

    rows = [{"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": "red"}]} for p in PROMPTS]
    args = gkd_args(AttentionGKDConfig, tmp_path, max_steps=1, lmbda=1.0, attn_distill_coef=1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            trainer = AttentionGKDTrainer(
                model=model,
                teacher_model=build_tiny_family(name, seed=1)[0],
                args=args,
                train_dataset=Dataset.from_list(rows[:2]),
                processing_class=tokenizer,
            )
        except CaptureError:
            return "clear error"
        trainer.train()
    jsd = [h["attention/distill_jsd"] for h in trainer.state.log_history if "attention/distill_jsd" in h]
    assert len(jsd) == 1 and 0 < jsd[0] < math.log(2), jsd  # two random models attend differently
    return "supported"


def _eager_last_rows(model, inputs, rows: int):
    """Eager `output_attentions` of the last attention layer, head-averaged: (B, rows, T), the reference."""
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    with torch.no_grad():
        return eager(**inputs, output_attentions=True).attentions[-1].float().mean(1)[:, -rows:]


def _image_positions(inputs, sample: int):
    return torch.nonzero(inputs["input_ids"][sample] == IMAGE_TOKEN_ID).flatten()


def _sayo_cell(model, inputs, tokenizer, tmp_path):
    """Construction with RegionAttentionReward (refused, naming the class, for tiled layouts), then the reward's own
    path on a captured batch: the region share of the right half of each 2 x 2-token image against eager
    attention summed by hand over the image's tokens 1 and 3 (row-major)."""
    from trl_attention.sayo import RegionAttentionReward, completion_attention
    from trl_attention.tiny import make_grounding_dataset

    args = trainer_args(AttentionGRPOConfig, tmp_path, attn_coef=0.0, max_steps=1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            AttentionGRPOTrainer(
                model=copy.deepcopy(model),
                reward_funcs=[RegionAttentionReward()],
                args=args,
                train_dataset=make_grounding_dataset(2),
                processing_class=tokenizer,
            )
    except LayoutError as error:
        assert type(unwrap_model(model)).__name__ in str(error), error
        return "clear error"
    rows = 3  # the last 3 positions stand for the completion
    with torch.no_grad(), capture_attention(model, num_rows=rows) as cap:
        model(**inputs)
    scoring = {"probs": cap.probs, "rows": rows, "entropies": None, "num_images": [1, 1], **inputs}
    items = completion_attention(model, scoring, visual_layout(model))
    logged = []
    image = type("Image", (), {"size": (56, 56)})()
    RegionAttentionReward()(
        ["a", "b"],
        attention=items,
        boxes=[[[[28, 0, 56, 56]]]] * 2,
        image=[image] * 2,
        log_metric=lambda *kv: logged.append(kv),
    )
    ref = _eager_last_rows(model, inputs, rows)
    for b, (_, share) in enumerate(kv for kv in logged if kv[0] == "sayo/region_share"):
        positions = _image_positions(inputs, b)
        hand = ref[b][:, positions[[1, 3]]].sum() / ref[b][:, positions].sum()
        assert abs(share - hand.item()) < 1e-5, (share, hand)
    assert len([kv for kv in logged if kv[0] == "sayo/region_share"]) == 2
    return "supported"


def _heatmap_cell(model, inputs):
    """`image_token_grids` (what `capture_image_attention` draws) for each row against eager attention of its last
    position on the image's 4 tokens reshaped by hand to 2 x 2 (row-major)."""
    from trl_attention.plotting import image_token_grids

    try:
        grids = [image_token_grids(model, inputs, sample=b)[0] for b in range(2)]
    except LayoutError as error:
        assert type(unwrap_model(model)).__name__ in str(error), error
        return "clear error"
    ref = _eager_last_rows(model, inputs, 1)
    for b, grid in enumerate(grids):
        hand = ref[b, 0, _image_positions(inputs, b)].reshape(2, 2).numpy()
        np.testing.assert_allclose(grid, hand, atol=1e-5, rtol=0)
    return "supported"


def _vrga_cell(model, inputs):
    """enable_vrga: the CaptureError at entry, or generation where gamma=0 is plain generation, stage 1's R_img /
    H_img equal those of eager attention at the last prompt token, and a boost changes the scores."""
    from trl_attention.vrga import VRGAConfig, enable_vrga, head_statistics

    try:
        enable_vrga(model).disable()
    except CaptureError:
        return "clear error"
    gen = {"max_new_tokens": 3, "min_new_tokens": 3, "do_sample": False, "output_scores": True}
    gen["return_dict_in_generate"] = True
    plain = model.generate(**inputs, **gen)
    with enable_vrga(model, VRGAConfig(gamma=0.0, query="last")):
        same = model.generate(**inputs, **gen)
    assert torch.equal(plain.sequences, same.sequences)
    # every image token in focus: in Gemma3's 8-token sliding windows the first image token has left the window by
    # the first decoding step (so boosting it alone rightly changes nothing)
    steer = VRGAConfig(preset="paper", gamma=4.0, min_focus_tokens=4, radius=0, sink_exclusion="none")
    with enable_vrga(model, steer) as vrga:
        steered = model.generate(**inputs, **gen)
    assert any(not torch.equal(a, b) for a, b in zip(plain.scores[1:], steered.scores[1:]))
    with enable_vrga(model, VRGAConfig(preset="paper")) as vrga:
        model(**inputs)
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    with torch.no_grad():
        attentions = eager(**inputs, output_attentions=True).attentions
    heads = torch.stack([a[:, :, -1] for a in attentions], 1)  # (B, attention layers, H, T)
    for b, diag in enumerate(vrga.diagnostics):
        valid = inputs["attention_mask"][b].bool()
        r, h, _ = head_statistics(heads[b][..., valid], (inputs["input_ids"][b] == IMAGE_TOKEN_ID)[valid])
        torch.testing.assert_close(diag.r_img, r, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(diag.h_img, h, atol=1e-5, rtol=1e-5)
    return "supported"


def _video_cell(model, processing_class, tmp_path):
    """One RAL step on moving-shape clips, or the VideoError naming the model at construction."""
    from trl_attention.tiny.video_data import make_motion_dataset
    from trl_attention.video import VideoError

    args = trainer_args(
        AttentionGRPOConfig,
        tmp_path,
        max_steps=1,
        per_device_train_batch_size=2,
        num_generations=2,
        max_completion_length=4,
        num_iterations=2,
        video_nframes=4,
        video_min_pixels=56 * 56,
        video_max_pixels=112 * 112,
    )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            trainer = AttentionGRPOTrainer(
                model=model,
                reward_funcs=length_reward,
                args=args,
                train_dataset=make_motion_dataset(2, frames=4),
                processing_class=processing_class,
            )
    except VideoError as error:
        assert "model_type=" in str(error), error
        return "clear error"
    trainer.train()
    assert 0 < trainer.state.log_history[0]["attention/video_mass"] <= 1
    return "supported"


def compute_matrix(tmp_path) -> dict:
    rows = {}
    for name in available_families():
        model, extra = build_tiny_family(name)
        text = name in TEXT_FAMILIES
        tokenizer = extra if text else build_tokenizer()
        inputs = dummy_inputs() if text else extra
        cells = {"capture": _capture_cell(model, inputs)}
        cells["RAL"] = _ral_cell(copy.deepcopy(model), tokenizer, tmp_path / name)
        cells["GKD"] = _gkd_cell(name, copy.deepcopy(model), tokenizer, tmp_path / f"{name}_gkd")
        if text:
            cells.update(dict.fromkeys(("SAYO", "VRGA", "heatmap", "video"), "n/a (text)"))
        else:
            cells["SAYO"] = _sayo_cell(model, inputs, tokenizer, tmp_path / f"{name}_sayo")
            cells["VRGA"] = _vrga_cell(model, inputs)
            cells["heatmap"] = _heatmap_cell(model, inputs)
            cells["video"] = _video_cell(copy.deepcopy(model), tokenizer, tmp_path / f"{name}_v")
        rows[name] = cells
    from trl_attention.tiny import build_tiny_vlm

    model, processor = build_tiny_vlm()  # the project's own tiny Qwen2.5-VL: the other cells are the suite's
    rows["qwen2_5_vl"] = {f: "suite" for f in FEATURES}  # the tests of each method, not a cell computed here
    rows["qwen2_5_vl"]["video"] = _video_cell(model, processor, tmp_path / "qwen2_5_vl_v")
    return rows


def render(rows: dict) -> str:
    lines = [
        "# Support matrix",
        "",
        "<!-- generated by tests/test_support_matrix.py; rewrite: TRL_ATTENTION_WRITE_MATRIX=1 pytest "
        "tests/test_support_matrix.py -->",
        "",
        "Each cell runs a tiny offline model of the family (`trl_attention_recipes.families`) through the feature on "
        "this transformers version, on hand-made inputs (VLMs: one image per row, row 0 left-padded). "
        "**supported**: it ran and matched its reference. capture: eager `output_attentions` of the last attention "
        "layer. RAL: one `AttentionGRPOTrainer` step with `attn_coef=1` on text prompts, logging `attention/jsd`. "
        "GKD: one on-policy `AttentionGKDTrainer` step with `attn_distill_coef=1` on text prompts, the teacher the "
        "family's tiny model of another seed, logging `attention/distill_jsd`. SAYO: `RegionAttentionReward` accepted "
        "at construction, then its region share for a box over the right half of each image equal to eager "
        "attention summed by hand over those image tokens. heatmap: the grid `capture_image_attention` draws "
        "(`plotting.image_token_grids`) equal to eager attention on the image tokens reshaped by hand. VRGA: "
        "`gamma=0` is plain generation, a boost changes the scores, stage 1's R_img / H_img equal those of eager "
        "attention. video: one RAL step on synthetic moving-shape clips (logging `attention/video_mass`). "
        "**clear error**: a `CaptureError` naming the module and the option (capture, RAL, GKD, VRGA), a "
        "`LayoutError` naming the model class and its image layout (SAYO, heatmap), a `VideoError` naming the model "
        "type (video), raised at construction or on entry. **suite**: covered by the method's own tests (the "
        "qwen2_5_vl row). With `attn_coef=0` (no attention term or reward) every family trains as `trl.GRPOTrainer` "
        "does (tests/ral/test_any_model.py).",
        "",
        "| family | layers | " + " | ".join(FEATURES) + " | visual layout |",
        "|---|---|" + "---|" * len(FEATURES) + "---|",
    ]
    for name, cells in rows.items():
        layers = "hybrid (attention layers indexed)" if name in HYBRID_FAMILIES or name == "qwen3_5_vl" else "all"
        note = NOTES.get(name, "n/a (text)" if name in TEXT_FAMILIES else "untested")
        lines.append(f"| {name} | {layers} | " + " | ".join(cells[f] for f in FEATURES) + f" | {note} |")
    lines += [
        "",
        "Families of `trl_attention_recipes.families` this transformers version lacks are left out. The qwen2_5_vl row "
        "is the project's own tiny Qwen2.5-VL: its video cell is computed here, its other cells are the rest of the "
        "test suite (tests/ral, tests/sayo, tests/distill, tests/vrga, tests/viz, tests/video). Heatmaps and SAYO "
        "boxes need one grid of image tokens over the whole image; `trl_attention.visual.layouts` says per family where "
        "the image tokens are and what grid they form (docs/sayo.md, 'Layouts'): Qwen-VL's `image_grid_thw`, "
        "Gemma4's `image_position_ids`, the fixed square grids of LLaVA and Gemma3. Tiled layouts (InternVL, "
        "Idefics3 / SmolVLM image splitting, LLaVA-OneVision anyres) are refused naming the class and why. VRGA "
        "reads the same layouts (docs/vrga.md) and refuses the tiled ones. On video rows SAYO and VRGA are clear "
        "errors on every family (docs/video.md).",
        "",
    ]
    return "\n".join(lines)


def test_support_matrix_page_is_current(tmp_path):
    page = render(compute_matrix(tmp_path))
    if os.environ.get("TRL_ATTENTION_WRITE_MATRIX"):
        PAGE.write_text(page)
    assert PAGE.read_text() == page, "docs/support-matrix.md is stale: rerun with TRL_ATTENTION_WRITE_MATRIX=1"
