"""The distillation collator and dataset validation on bad image rows: errors naming the row and the column;
path strings are supported (loaded before the processor sees them)."""

import io
import random

import pytest
from datasets import Dataset, IterableDataset
from PIL import Image

from trl_attention.distill.collator import VisionDistillationCollator, validate_distillation_dataset
from trl_attention.tiny import make_grounding_dataset
from trl_attention.tiny.tokenizer import build_processor


@pytest.fixture(scope="module")
def processor():
    return build_processor()


def _rows(n=2):
    data = make_grounding_dataset(n)
    return [{**dict(data[i]), "completion": data[i]["answer"] + " is the answer"} for i in range(n)]


def test_path_strings_are_loaded_and_batched(processor, tmp_path):
    rows = _rows()
    reference = VisionDistillationCollator(processor)(rows)
    rows[1]["image"].save(tmp_path / "b.png")
    rows[1]["image"] = str(tmp_path / "b.png")
    validate_distillation_dataset(rows_dataset := Dataset.from_list(rows), processor)
    batch = VisionDistillationCollator(processor)([dict(r) for r in rows_dataset])
    assert (batch["pixel_values"] - reference["pixel_values"]).abs().max() < 1e-6


def test_bad_images_name_the_row_and_the_column(processor, tmp_path):
    rows = _rows()
    with pytest.raises(ValueError, match=r"batch example 1 \(id='r1'\), column `images`, image 0: the image is None"):
        VisionDistillationCollator(processor)([rows[0], {**rows[1], "image": None, "images": [None], "id": "r1"}])
    wide = {**rows[1], "image": Image.new("RGB", (4000, 10))}
    with pytest.raises(ValueError, match=r"batch example 1, column `image`, image 0: the image is 4000x10 .*rejects"):
        VisionDistillationCollator(processor)([rows[0], wide])
    buffer = io.BytesIO()
    Image.frombytes("RGB", (64, 64), random.Random(0).randbytes(64 * 64 * 3)).save(buffer, format="PNG")
    (tmp_path / "cut.png").write_bytes(buffer.getvalue()[:3000])
    cut = {**rows[0], "image": str(tmp_path / "cut.png")}
    with pytest.raises(ValueError, match="batch example 0, column `image`, image 0: cannot read the image .*cut.png"):
        VisionDistillationCollator(processor)([cut])
    with pytest.raises(ValueError, match=r"dataset row 1, column `image`, image 0: the image is 4000x10"):
        validate_distillation_dataset(Dataset.from_list([rows[0], wide]), processor)
    with pytest.raises(ValueError, match=r"dataset row 1, column `image`, image 0: .*over the Qwen-VL"):
        validate_distillation_dataset(Dataset.from_list([rows[0], wide]))  # no processor: the Qwen-VL limit


def test_streaming_dataset_is_validated_on_its_first_rows(processor):
    rows = _rows()
    read = []

    def generate():
        for index in range(10_000):
            read.append(index)
            yield {"prompt": rows[0]["prompt"], "completion": "a", "image": rows[0]["image"]}

    validate_distillation_dataset(IterableDataset.from_generator(generate), processor, image_rows=3)
    assert max(read) < 20
