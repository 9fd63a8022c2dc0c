"""SAYO on bad input: each case raises a ValueError naming the row and the column, or is supported and counted
(the table in docs/sayo.md, "Bad input")."""

import io
import random
import warnings

import pytest
import torch
from datasets import Dataset, IterableDataset
from PIL import Image

from tests.testing_utils import trainer_args
from trl_attention import AttentionGRPOConfig, AttentionGRPOTrainer
from trl_attention.sayo import CompletionAttention, RegionAttentionReward
from trl_attention.sayo import reward as reward_module
from trl_attention.tiny import build_tiny_vlm, make_grounding_dataset
from trl_attention.tiny.tokenizer import build_processor


@pytest.fixture(scope="module")
def processor():
    return build_processor()


def _rows(n=3, **changes):
    """Grounding rows as dicts; `changes` = {row index: {column: value}}."""
    rows = [dict(make_grounding_dataset(n, seed=0)[i]) for i in range(n)]
    for index, values in changes.items():
        rows[int(index)].update(values)
    return rows


def _truncated_png(path=None):
    buffer = io.BytesIO()
    Image.frombytes("RGB", (64, 64), random.Random(0).randbytes(64 * 64 * 3)).save(buffer, format="PNG")
    data = buffer.getvalue()[: len(buffer.getvalue()) // 2]
    if path is not None:
        path.write_bytes(data)
    return data


def test_aspect_ratio_over_the_processor_limit_names_row_and_column(processor):
    rows = _rows(**{"1": {"image": Image.new("RGB", (2020, 10)), "boxes": [[[0, 0, 10, 10]]]}})
    with pytest.raises(ValueError, match=r"row 1, column `image`, image 0: the image is 2020x10 \(aspect ratio 202"):
        RegionAttentionReward().validate(rows, processing_class=processor)
    with pytest.raises(ValueError, match="row 1, column `image`.*over the Qwen-VL image processors' limit"):
        RegionAttentionReward().validate(rows)  # no processor: the Qwen-VL limit
    RegionAttentionReward().validate(_rows(), processing_class=processor)


def test_unreadable_images_name_row_and_column(tmp_path):
    missing = _rows(**{"2": {"image": str(tmp_path / "nope.jpg")}})
    with pytest.raises(ValueError, match=r"row 2, column `image`, image 0: the image path .*nope.jpg' is not a file"):
        RegionAttentionReward().validate(missing)
    _truncated_png(tmp_path / "cut.png")
    with pytest.raises(ValueError, match="row 0, column `image`, image 0: cannot read the image .*cut.png.*truncated"):
        RegionAttentionReward().validate(_rows(**{"0": {"image": str(tmp_path / "cut.png")}}))
    lazy = Image.open(io.BytesIO(_truncated_png()))  # opens: the header is intact; load() fails
    with pytest.raises(ValueError, match="row 1, column `image`, image 0: cannot read the image the PIL image"):
        RegionAttentionReward().validate(_rows(**{"1": {"image": lazy}}))
    with pytest.raises(ValueError, match="row 1, column `image`, image 0: the image is a int"):
        RegionAttentionReward().validate(_rows(**{"1": {"image": 7}}))


def test_path_strings_are_supported_and_loaded_before_generation(tmp_path):
    rows = _rows()
    rows[0]["image"].save(tmp_path / "a.png")
    rows[0]["image"] = str(tmp_path / "a.png")
    rows[1]["image"] = {"bytes": None, "path": str(tmp_path / "a.png")}
    reward = RegionAttentionReward()
    reward.validate(rows)
    reward.check_batch(rows)
    assert isinstance(rows[0]["image"], Image.Image) and isinstance(rows[1]["image"], Image.Image)


def test_text_only_rows_are_scored_none_and_counted_but_boxes_need_an_image():
    rows = _rows(**{"1": {"image": None, "boxes": None}})
    RegionAttentionReward().validate(rows)
    logged = []
    scores = RegionAttentionReward()(
        completions=["a"], attention=[None], image=[None], boxes=[None], log_metric=lambda *kv: logged.append(kv)
    )
    assert scores == [None] and ("sayo/no_box", 1.0) in logged
    with pytest.raises(ValueError, match=r"row 1 \(id='q1'\), column `boxes`: 1 box lists for 0 images"):
        RegionAttentionReward().validate(_rows(**{"1": {"image": None, "id": "q1"}}))
    no_image_column = [{"prompt": "p", "boxes": [[[0, 0, 5, 5]]]}]
    with pytest.raises(ValueError, match="row 0: boxes in `boxes` but no `image` or `images` column"):
        RegionAttentionReward().validate(no_image_column)


@pytest.mark.parametrize(
    "boxes, message",
    [
        (
            [10, 10, 40, 40],
            r"row 1, column `boxes`: got the flat box \[10, 10, 40, 40\]; .*\[\[\[x1, y1, x2, y2\]\]\]",
        ),
        ([[10, 10, 40, 40]], r"row 1, column `boxes`: image 0 holds the box .* without its list of boxes"),
        ([[[10, 10, 40]]], r"row 1, column `boxes`: image 0 has the box \[10, 10, 40\]; a box is 4 numbers"),
        ("10 10 40 40", "row 1, column `boxes`: expected per image, a list of"),
    ],
)
def test_box_nesting_mistakes_show_the_expected_nesting(boxes, message):
    with pytest.raises(ValueError, match=message):
        RegionAttentionReward().validate(_rows(**{"1": {"boxes": boxes}}))


def test_normalized_looking_boxes_raise_unless_an_option_says_what_they_are():
    rows = _rows()
    for row in rows:
        x1, y1, x2, y2 = row["boxes"][0][0]
        row["boxes"] = [[[x1 / 112, y1 / 112, x2 / 112, y2 / 112]]]
    with pytest.raises(ValueError, match=r"row 0, column `boxes`: all 3 boxes .*normalized_boxes=True.*pixel_boxes"):
        RegionAttentionReward().validate(rows)
    RegionAttentionReward(normalized_boxes=True).validate(rows)
    RegionAttentionReward(pixel_boxes=True).validate(rows)  # the user asserts tiny pixel boxes
    with pytest.raises(ValueError, match="contradict"):
        RegionAttentionReward(normalized_boxes=True, pixel_boxes=True)


def test_streaming_dataset_is_validated_on_its_first_rows_only():
    rows = _rows(4)
    read = []

    def generate():
        for index, row in enumerate(rows + [{"image": 7, "boxes": [1, 2, 3, 4]}] * 1000):
            read.append(index)
            yield {"image": row["image"], "boxes": row["boxes"], "prompt": "p"}

    streaming = IterableDataset.from_generator(generate)
    assert streaming.column_names is None  # what used to crash validation
    RegionAttentionReward(validation_rows=4).validate(streaming)
    assert max(read) < 10  # the bad rows after the first 4 were never read
    with pytest.raises(ValueError, match="row 4, column `boxes`: got the flat box"):
        RegionAttentionReward(validation_rows=5).validate(IterableDataset.from_generator(generate))
    with pytest.raises(ValueError, match="validation_rows=None would read the whole streaming dataset"):
        RegionAttentionReward(validation_rows=None).validate(IterableDataset.from_generator(generate))


def test_rows_past_validation_are_checked_as_sampled_naming_their_id():
    rows = _rows(3, **{"2": {"row_id": "img-0042", "image": Image.new("RGB", (10, 3000))}})
    RegionAttentionReward(validation_rows=2).validate(rows)
    with pytest.raises(ValueError, match=r"row_id='img-0042', column `image`, image 0: the image is 10x3000"):
        RegionAttentionReward().check_batch(rows[2:])
    prompt_only = {"prompt": [{"role": "user", "content": [{"type": "text", "text": "where is it"}]}]}
    with pytest.raises(ValueError, match="the row with prompt 'where is it', column `boxes`: got the flat box"):
        RegionAttentionReward().check_batch([{**prompt_only, "image": rows[0]["image"], "boxes": [1, 1, 5, 5]}])
    item = CompletionAttention(torch.ones(1, 4) / 4, [torch.arange(4)], [(1, 4, 4)], None, 2, 4)
    with pytest.raises(ValueError, match=r"id=7, column `boxes`: box \(30, 1, 20, 5\) has x2 <= x1"):
        RegionAttentionReward()(completions=["a"], attention=[item], image=[rows[0]["image"]], id=[7],
                                boxes=[[[[30, 1, 20, 5]]]])  # fmt: skip


def test_counters_are_global_sums_and_the_share_a_global_mean(monkeypatch):
    monkeypatch.setattr(reward_module, "_world_size", lambda: 4)
    rows = torch.zeros(1, 8)
    rows[0, 4:8] = torch.tensor([0.4, 0.2, 0.2, 0.2])
    item = CompletionAttention(rows, [torch.arange(4, 8)], [(1, 4, 4)], None, 2, 4)
    image = Image.new("RGB", (56, 56))
    logged = []
    RegionAttentionReward()(
        completions=["a"] * 4,
        attention=[item, item, None, item],
        image=[image] * 4,
        boxes=[[[[0, 0, 28, 28]]], [[[-5, 0, 28, 28]]], [[[0, 0, 5, 5]]], None],
        log_metric=lambda *kv: logged.append(kv),
    )
    # one value per rank and call, times the world size: TRL's sum over ranks / number of values = global count
    assert ("sayo/no_box", 4.0) in logged and ("sayo/truncated", 4.0) in logged
    assert ("sayo/clipped_boxes", 4.0) in logged
    assert [v for k, v in logged if k == "sayo/region_share"] == pytest.approx([0.4, 0.4])  # one per completion


def _trainer(tmp_path, train, eval_dataset=None, **overrides):
    model, processor = build_tiny_vlm(seed=0)
    args = trainer_args(AttentionGRPOConfig, tmp_path, max_steps=1, attn_coef=0.0, **overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return AttentionGRPOTrainer(
            model=model,
            reward_funcs=[RegionAttentionReward()],
            args=args,
            train_dataset=train,
            eval_dataset=eval_dataset,
            processing_class=processor,
        )


def test_trainer_validates_dict_eval_datasets_with_its_processor(tmp_path):
    good = make_grounding_dataset(4)
    wide = Dataset.from_list(_rows(2, **{"1": {"image": Image.new("RGB", (1000, 4))}}))
    with pytest.raises(ValueError, match=r"eval_dataset\['wide'\]: row 1, column `image`.*image processor rejects"):
        _trainer(tmp_path, good, {"ok": good, "wide": wide}, eval_strategy="steps", eval_steps=1)
    with pytest.raises(ValueError, match=r"train_dataset: row 1, column `image`.*image processor rejects"):
        _trainer(tmp_path, wide)


def test_region_reward_on_a_model_without_qwen_grids_fails_at_construction(tmp_path):
    """InternVL lays its image tokens out as tiles (no known grid): without this check every completion would score
    None. (Fixed grids such as LLaVA's are supported: tests/test_vlm_layouts.py.)"""
    from trl_attention.tiny import build_tokenizer
    from trl_attention_recipes.families import available_families, build_tiny_family

    if "internvl" not in available_families():
        pytest.skip("this transformers version has no InternVL")
    model, _ = build_tiny_family("internvl")
    args = trainer_args(AttentionGRPOConfig, tmp_path, attn_coef=0.0)
    with pytest.raises(
        ValueError,
        match=r"region_attention maps boxes to visual tokens, and cannot here: InternVLForConditionalGeneration lays "
        r"its image tokens out as tiles",
    ):
        AttentionGRPOTrainer(
            model=model,
            reward_funcs=[RegionAttentionReward()],
            args=args,
            train_dataset=make_grounding_dataset(2),
            processing_class=build_tokenizer(),
        )


def test_a_truncated_png_in_an_image_feature_column_is_named(tmp_path):
    """A `datasets.Image()` column decodes inside datasets (an error naming no row or file); validation reads it
    undecoded and names both."""
    from datasets import Dataset
    from datasets import Image as ImageFeature

    rows = _rows(3)
    for i, row in enumerate(rows):
        buffer = io.BytesIO()
        row["image"].save(buffer, format="PNG")
        whole = {"bytes": buffer.getvalue(), "path": None}
        row["image"] = whole if i != 2 else {"bytes": _truncated_png(), "path": "half.png"}
    dataset = Dataset.from_list(rows).cast_column("image", ImageFeature())
    with pytest.raises(ValueError, match=r"row 2.*image.*cannot read the image half.png"):
        RegionAttentionReward().validate(dataset)
