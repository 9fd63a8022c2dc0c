"""The visual layouts of `trl_attention.visual.layouts` on the tiny VLM families: heatmap grids and SAYO region shares
against eager attention by hand, a heatmap and a SAYO step through a real LLaVA processor, and the layouts that are
refused (tiled ones, options that break the grid), each naming the model class."""

import copy
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from datasets import Dataset
from PIL import Image

from tests.testing_utils import trainer_args
from trl_attention import AttentionGRPOConfig, AttentionGRPOTrainer, capture_attention
from trl_attention.visual.layouts import LayoutError, visual_layout
from trl_attention.plotting import attention_heatmap, capture_image_attention, image_token_grids
from trl_attention.sayo import RegionAttentionReward, completion_attention
from trl_attention.visual.regions import region_token_indices
from trl_attention.sayo.attention import RewardAttentionMixin
from trl_attention.tiny import build_tiny_lm, build_tokenizer, make_grounding_dataset
from trl_attention_recipes.families import VLM_FAMILIES, available_families, build_tiny_family
from trl_attention_recipes.families_vlm import build_tiny_llava_processor

FAMILIES = available_families()
# family: (layout kind, fixed grid); each tiny image is 2 x 2 tokens at positions 5..8 of both rows
GRIDS = {"gemma3": ("fixed", (2, 2)), "gemma4": ("patches", None), "llava": ("fixed", (2, 2))}
GRIDS["qwen3_5_vl"] = ("dynamic", None)
GRID_FAMILIES = [f for f in GRIDS if f in FAMILIES]
TILED = [f for f in ("internvl", "idefics3", "smolvlm", "llava_onevision") if f in FAMILIES]
IMAGE = 5  # <|image_pad|>


def _eager(model, inputs) -> torch.Tensor:
    """(B, T, T): eager `output_attentions` of the last attention layer, head-averaged."""
    eager = copy.deepcopy(model)
    eager.set_attn_implementation("eager")
    with torch.no_grad():
        return eager(**inputs, output_attentions=True).attentions[-1].float().mean(1)


def _trainer(tmp_path, model, dataset, processing_class, **overrides):
    args = trainer_args(AttentionGRPOConfig, tmp_path, attn_coef=0.0, max_steps=1, **overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AttentionGRPOTrainer(
            model=model,
            reward_funcs=[RegionAttentionReward()],
            args=args,
            train_dataset=dataset,
            processing_class=processing_class,
        )


@pytest.mark.parametrize("name", GRID_FAMILIES)
def test_heatmap_grids_are_eager_attention_reshaped_by_hand(name):
    model, inputs = build_tiny_family(name)
    layout = visual_layout(model)
    assert (layout.kind, layout.grid) == GRIDS[name]
    ref = _eager(model, inputs)
    for b in range(2):  # row 0 is left-padded by 2: its image is at 5..8 of the padded sequence too
        assert torch.nonzero(inputs["input_ids"][b] == IMAGE).flatten().tolist() == [5, 6, 7, 8]
        grids = image_token_grids(model, inputs, num_rows=3, sample=b)
        np.testing.assert_allclose(grids, ref[b, -3:, 5:9].reshape(3, 2, 2).numpy(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", GRID_FAMILIES)
@pytest.mark.parametrize(("box", "cells"), [((28, 0, 56, 56), [1, 3]), ((0, 28, 56, 56), [2, 3]), ((0, 0, 9, 9), [0])])
def test_region_share_is_eager_attention_summed_by_hand(name, box, cells):
    """A box on a 56 x 56 image over the 2 x 2 grid: the right column, the bottom row, the top-left cell."""
    model, inputs = build_tiny_family(name)
    with torch.no_grad(), capture_attention(model, num_rows=3) as cap:
        model(**inputs)
    scoring = {"probs": cap.probs, "rows": 3, "entropies": None, "num_images": [1, 1], **inputs}
    items = completion_attention(model, scoring, visual_layout(model))
    assert [item.image_positions[0].tolist() for item in items] == [[3, 4, 5, 6], [5, 6, 7, 8]]  # padding removed
    logged = []
    image = SimpleNamespace(size=(56, 56))
    RegionAttentionReward()(
        ["a", "b"],
        attention=items,
        boxes=[[[list(box)]]] * 2,
        image=[image] * 2,
        log_metric=lambda *kv: logged.append(kv),
    )
    shares = [value for key, value in logged if key == "sayo/region_share"]
    ref = _eager(model, inputs)[:, -3:]
    hand = [ref[b][:, [5 + c for c in cells]].sum() / ref[b][:, 5:9].sum() for b in range(2)]
    assert shares == pytest.approx([h.item() for h in hand], abs=1e-5)


def test_gemma4_grid_follows_each_images_patch_positions():
    """A 128 x 64 px image, 8 x 4 patches pooled 2 x 2: a 2 x 4 token grid, row-major (the pooler's own order)."""
    if "gemma4" not in FAMILIES:
        pytest.skip("this transformers version has no Gemma4")
    model, _ = build_tiny_family("gemma4")
    x, y = torch.meshgrid(torch.arange(8), torch.arange(4), indexing="xy")
    positions = torch.cat([torch.stack([x, y], -1).reshape(32, 2), torch.full((8, 2), -1)])[None]  # + padding
    ids = torch.tensor([[20, 21, 3, *[IMAGE] * 8, 4, 12, 13]])
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": torch.rand(1, 40, 768)}
    inputs.update(image_position_ids=positions, mm_token_type_ids=(ids == IMAGE).long())
    layout = visual_layout(model)
    assert layout.grids(inputs) == [(1, 4, 8)] and layout.merge == 2
    grid = image_token_grids(model, inputs)
    np.testing.assert_allclose(grid, _eager(model, inputs)[0, -1:, 3:11].reshape(1, 2, 4).numpy(), atol=1e-5, rtol=0)
    # the pooler's token j averages the patches of row j // 4, column j % 4
    hidden = torch.where(positions >= 0, positions, 0).float()
    pooled, mask = model.model.vision_tower.pooler(hidden, positions, (positions == -1).all(-1), output_length=10)
    centres = pooled[0][mask[0]] / model.model.vision_tower.pooler.root_hidden_size
    expected = [[2 * (j % 4) + 0.5, 2 * (j // 4) + 0.5] for j in range(8)]
    torch.testing.assert_close(centres, torch.tensor(expected))
    # SAYO: the right half of the image is columns 2 and 3 of both rows
    assert region_token_indices((64, 0, 128, 64), (128, 64), (1, 4, 8), layout.merge).tolist() == [2, 3, 6, 7]


@pytest.mark.parametrize("name", TILED)
def test_tiled_layouts_are_clear_errors_naming_the_class(tmp_path, name):
    model, inputs = build_tiny_family(name)
    cls = type(model).__name__
    with pytest.raises(LayoutError, match=rf"{cls} lays its image tokens out as (tiles|image splitting|anyres)"):
        visual_layout(model)
    with pytest.raises(LayoutError, match=cls):
        image_token_grids(model, inputs)
    with pytest.raises(LayoutError, match=rf"region_attention maps boxes to visual tokens, and cannot here: {cls}"):
        _trainer(tmp_path, model, make_grounding_dataset(2), build_tokenizer())


def test_options_that_break_the_grid_are_clear_errors():
    if not {"llava", "gemma3", "gemma4"} <= set(FAMILIES):
        pytest.skip("this transformers version lacks LLaVA, Gemma3 or Gemma4")
    full, _ = build_tiny_family("llava", vision_feature_select_strategy="full")
    with pytest.raises(LayoutError, match="LlavaForConditionalGeneration with vision_feature_select_strategy='full'"):
        visual_layout(full)
    siglip = {"model_type": "siglip_vision_model", "hidden_size": 32, "intermediate_size": 64, "image_size": 28}
    siglip.update(num_hidden_layers=1, num_attention_heads=2, patch_size=14)
    no_cls, _ = build_tiny_family("llava", vision_config=siglip, vision_feature_select_strategy="full")
    assert visual_layout(no_cls).grid == (2, 2)  # SigLIP has no CLS: "full" is the patch grid
    dropped, _ = build_tiny_family("llava", vision_config=siglip)
    with pytest.raises(LayoutError, match="'default' drops the first patch token of a vision tower without CLS"):
        visual_layout(dropped)
    gemma3, _ = build_tiny_family("gemma3")
    pan_and_scan = SimpleNamespace(image_processor=SimpleNamespace(do_pan_and_scan=True))
    with pytest.raises(LayoutError, match="Gemma3ForConditionalGeneration's image processor has do_pan_and_scan"):
        visual_layout(gemma3, pan_and_scan)
    with pytest.raises(LayoutError, match="Qwen2ForCausalLM has no image tokens"):
        visual_layout(build_tiny_lm()[0])
    gemma4, inputs = build_tiny_family("gemma4")
    del inputs["image_position_ids"]
    with pytest.raises(LayoutError, match=r"Gemma4ForConditionalGeneration's image tokens form the grids given by"):
        image_token_grids(gemma4, inputs)
    assert set(VLM_FAMILIES) >= set(GRIDS) | {"internvl", "idefics3", "smolvlm", "llava_onevision"}


def test_llava_with_its_processor_heatmap_and_sayo_step(tmp_path):
    if "llava" not in FAMILIES:
        pytest.skip("this transformers version has no LLaVA")
    model, _ = build_tiny_family("llava")
    processor = build_tiny_llava_processor()
    example = make_grounding_dataset(1)[0]  # a 112 x 112 image
    grid = attention_heatmap(model, processor, example, tmp_path / "heat.png")
    text = processor.apply_chat_template(example["prompt"], add_generation_prompt=True, tokenize=False)
    inputs = dict(processor(text=[text], images=[example["image"]], return_tensors="pt"))
    positions = torch.nonzero(inputs["input_ids"][0] == IMAGE).flatten()
    assert len(positions) == 4 and (tmp_path / "heat.png").is_file()
    np.testing.assert_allclose(grid, _eager(model, inputs)[0, -1, positions].reshape(2, 2).numpy(), atol=1e-5, rtol=0)
    trainer = _trainer(
        tmp_path / "sayo",
        model,
        make_grounding_dataset(4),
        processor,
        per_device_train_batch_size=2,
        num_generations=2,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.train()
    log = trainer.state.log_history[0]
    assert log["sayo/truncated"] == 0 and log["sayo/no_box"] == 0 and 0 < log["sayo/region_share"] < 1


def test_llava_center_crop_of_a_non_square_image_is_refused(tmp_path):
    if "llava" not in FAMILIES:
        pytest.skip("this transformers version has no LLaVA")
    model, _ = build_tiny_family("llava")
    row = dict(make_grounding_dataset(1)[0], image=Image.new("RGB", (112, 56)), boxes=[[[0, 0, 56, 28]]])
    message = (
        r"LlavaForConditionalGeneration's image processor resizes a 112x56 image to 56x28 and center-crops it to "
        r"28x28, so LlavaForConditionalGeneration's 2x2 token grid covers only the crop"
    )
    with pytest.raises(LayoutError, match=rf"train_dataset: row 0, image 0: {message}"):
        _trainer(tmp_path, model, Dataset.from_list([row]), build_tiny_llava_processor())
    with pytest.raises(LayoutError, match=message):
        capture_image_attention(model, build_tiny_llava_processor(), row["prompt"], row["image"])
    # resized to 28 x 28 without a crop, the grid covers the whole (squashed) image
    attention = capture_image_attention(model, build_tiny_llava_processor(crop=False), row["prompt"], row["image"])
    assert attention.grids.shape == (1, 2, 2)
    padding = build_tiny_llava_processor(crop=False)
    padding.image_processor.do_pad = True  # pad_to_square first: the grid would cover the padding too
    with pytest.raises(LayoutError, match=r"image 0: the image processor pads a 112x56 image to a square"):
        capture_image_attention(model, padding, row["prompt"], row["image"])


def test_gemma4_image_position_ids_reach_the_rewards_scoring_batch():
    """TRL passes `image_position_ids` to its scoring forward; the reward mixin keeps them with the captured batch."""

    class Scoring:
        def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, **kwargs):
            self.scoring_batch = {"rows": logits_to_keep}
            return "logps"

    class Trainer(RewardAttentionMixin, Scoring):
        scoring_batch = None

    trainer, positions = Trainer(), torch.zeros(1, 16, 2)
    assert trainer._get_per_token_logps_and_entropies(None, None, None, 3, image_position_ids=positions) == "logps"
    assert trainer.scoring_batch["image_position_ids"] is positions
