"""GRPO's image checks run whatever the rewards (ral/data_checks.py): at construction on the first
`validation_rows` rows, and on every sampled row before TRL's processor sees it; each error names the dataset, the
row, the column and the image. Before, with any reward but SAYO's, they crashed the first sampling naming no row."""

import io
import warnings

import pytest
from datasets import Dataset
from PIL import Image

from tests.testing_utils import length_reward, trainer_args
from trl_attention import AttentionGRPOConfig, AttentionGRPOTrainer
from trl_attention.tiny import build_tiny_vlm, make_grounding_dataset


def _rows(n=4):
    return [dict(row) for row in make_grounding_dataset(n, seed=0)]


def _build(tmp_path, rows, **overrides):
    model, processor = build_tiny_vlm()
    args = trainer_args(AttentionGRPOConfig, tmp_path, attn_coef=0.0, max_steps=1, **overrides)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        dataset = Dataset.from_list(rows)
        return AttentionGRPOTrainer(
            model=model, reward_funcs=length_reward, args=args, train_dataset=dataset, processing_class=processor
        )


def test_an_image_the_processor_rejects_is_named_at_construction(tmp_path):
    rows = _rows()
    rows[1]["image"] = Image.new("RGB", (10000, 40))
    with pytest.raises(ValueError, match=r"train_dataset: row 1, column `image`, image 0: the image is 10000x40 "
                       r"\(aspect ratio 250.0:1\), which the image processor rejects"):
        _build(tmp_path, rows)


def test_a_prompt_image_part_without_an_image_is_named(tmp_path):
    rows = _rows()
    rows[2]["image"] = None
    with pytest.raises(ValueError, match=r"train_dataset: row 2: the prompt has 1 image part\(s\) but the row has 0 "
                       r"image\(s\)"):
        _build(tmp_path, rows)


def test_a_truncated_file_is_named(tmp_path):
    rows = _rows()
    for i, row in enumerate(rows):  # images as file paths, as a `datasets.Image(decode=False)` column gives them
        buffer = io.BytesIO()
        row["image"].save(buffer, format="PNG")
        path = tmp_path / f"row{i}.png"
        path.write_bytes(buffer.getvalue()[: 60 if i == 3 else None])  # row 3's file is cut short
        row["image"] = str(path)
    with pytest.raises(ValueError, match=r"train_dataset: row 3, column `image`, image 0: cannot read the image"):
        _build(tmp_path, rows)


def test_rows_past_validation_rows_are_checked_when_sampled(tmp_path):
    rows = _rows(8)
    for row in rows[2:]:  # all but the two validated rows: any batch samples one
        row["image"] = Image.new("RGB", (10000, 40))
    trainer = _build(tmp_path, rows, validation_rows=2)  # construction reads rows 0 and 1 only
    with pytest.raises(ValueError, match=r"^sampled the row with prompt .*, column `image`, image 0: the image is "
                       r"10000x40"):
        trainer.train()


def test_validation_rows_must_be_a_count(tmp_path):
    with pytest.raises(ValueError, match=r"validation_rows must be an int >= 0 or None, got -1"):
        trainer_args(AttentionGRPOConfig, tmp_path, validation_rows=-1)


def test_a_truncated_png_in_a_datasets_image_column_is_named_with_its_row(tmp_path):
    """An `Image()` column decodes inside `datasets`, whose error names no row or file: the checks read it undecoded."""
    from datasets import Image as ImageFeature

    rows = _rows()
    buffer = io.BytesIO()
    rows[1]["image"].save(buffer, format="PNG")
    rows[1]["image"] = {"bytes": buffer.getvalue()[:60], "path": "cut.png"}
    rows = [{**row, "image": row["image"] if i == 1 else _png(row["image"])} for i, row in enumerate(rows)]
    dataset = Dataset.from_list(rows).cast_column("image", ImageFeature())
    model, processor = build_tiny_vlm()
    args = trainer_args(AttentionGRPOConfig, tmp_path, attn_coef=0.0, max_steps=1)
    with pytest.raises(ValueError, match=r"train_dataset: row 1, column `image`, image 0: cannot read the image cut.png"):
        AttentionGRPOTrainer(
            model=model, reward_funcs=length_reward, args=args, train_dataset=dataset, processing_class=processor
        )


def _png(image) -> dict:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}
