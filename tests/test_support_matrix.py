"""docs/support-matrix.md is computed here: each cell runs the tiny model of that family through the feature, and
the committed page must equal the rendering. Rewrite it with `TRL_ATTENTION_WRITE_MATRIX=1 pytest
tests/test_support_matrix.py`."""

import copy
import os
import warnings

import torch
from datasets import Dataset

from tests.testing_utils import PROMPTS, ROOT, length_reward, trainer_args
from trl_attention import AttentionGRPOConfig, AttentionGRPOTrainer, CaptureError, capture_attention
from trl_attention.distill.teacher import check_teacher
from trl_attention.tiny import build_tokenizer
from trl_attention.tiny.families import (
    HYBRID_FAMILIES,
    TEXT_FAMILIES,
    available_families,
    build_tiny_family,
    dummy_inputs,
)

PAGE = ROOT / "docs" / "support-matrix.md"
FEATURES = ["capture", "RAL", "SAYO", "GKD", "VRGA", "heatmap", "video"]
NOTES = {
    "gemma3": "fixed grid: `mm_tokens_per_image` pooled tokens per image",
    "llava": "fixed grid: (image_size / patch_size)^2 patch tokens",
    "internvl": "tiles of `image_seq_length` tokens (pixel shuffle)",
    "idefics3": "tiles (image splitting) of `image_seq_length` tokens each",
    "smolvlm": "tiles (image splitting) of `image_seq_length` tokens each",
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


def _gkd_cell(model, tokenizer):
    try:  # what AttentionGKDTrainer checks at construction with attn_distill_coef != 0
        check_teacher(model, copy.deepcopy(model), tokenizer, True)
    except CaptureError:
        return "clear error"
    return "untested"


def _sayo_cell(model, tokenizer, tmp_path):
    """Construction with RegionAttentionReward: refused (naming the missing grid) where boxes cannot be mapped."""
    from trl_attention.sayo import RegionAttentionReward
    from trl_attention.tiny import make_grounding_dataset

    args = trainer_args(AttentionGRPOConfig, tmp_path, attn_coef=0.0, max_steps=1)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            AttentionGRPOTrainer(
                model=model,
                reward_funcs=[RegionAttentionReward()],
                args=args,
                train_dataset=make_grounding_dataset(2),
                processing_class=tokenizer,
            )
    except ValueError as error:
        assert "image_grid_thw" in str(error), error
        return "clear error"
    return "untested"


def _vrga_cell(model):
    from trl_attention.vrga import enable_vrga

    try:
        enable_vrga(model).disable()
    except CaptureError:
        return "clear error"
    return "untested"


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
        cells["GKD"] = _gkd_cell(model, tokenizer) if text else "untested"
        for feature in ("SAYO", "VRGA", "heatmap"):
            cells[feature] = "n/a (text)" if text else "untested"
        if not text:
            cells["VRGA"] = _vrga_cell(model)
            cells["SAYO"] = _sayo_cell(copy.deepcopy(model), tokenizer, tmp_path / f"{name}_sayo")
        cells["video"] = "n/a (text)" if text else _video_cell(copy.deepcopy(model), tokenizer, tmp_path / f"{name}_v")
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
        "Each cell runs a tiny offline model of the family (`trl_attention.tiny.families`) through the feature on "
        "this transformers version. **supported**: it ran and matched its reference (capture: eager "
        "`output_attentions` of the last attention layer; RAL: one `AttentionGRPOTrainer` step with `attn_coef=1` "
        "on text prompts, logging `attention/jsd`). **clear error**: a `CaptureError` naming the module and the "
        "option (SAYO: a `ValueError` naming the missing `image_grid_thw`), raised at construction (RAL, SAYO, GKD) or "
        "on entry (capture, VRGA). **untested**: not run here. **suite**: covered by the method's own tests (the qwen2_5_vl row). "
        "With `attn_coef=0` (no attention term or reward) every family trains as `trl.GRPOTrainer` does "
        "(tests/ral/test_any_model.py). **video**: one RAL step on synthetic moving-shape clips (logging "
        "`attention/video_mass`), or the `VideoError` naming the model type at construction.",
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
        "Families of `trl_attention.tiny.families` this transformers version lacks are left out. The qwen2_5_vl row "
        "is the project's own tiny Qwen2.5-VL: its video cell is computed here, its other cells are the rest of the "
        "test suite (tests/ral, tests/sayo, tests/distill, tests/vrga, tests/viz, tests/video). SAYO boxes and heatmaps need "
        "the Qwen-style `image_grid_thw`: SAYO refuses the other layouts at construction; heatmaps are untested there. On video rows SAYO and VRGA are "
        "clear errors on every family (docs/video.md).",
        "",
    ]
    return "\n".join(lines)


def test_support_matrix_page_is_current(tmp_path):
    page = render(compute_matrix(tmp_path))
    if os.environ.get("TRL_ATTENTION_WRITE_MATRIX"):
        PAGE.write_text(page)
    assert PAGE.read_text() == page, "docs/support-matrix.md is stale: rerun with TRL_ATTENTION_WRITE_MATRIX=1"
