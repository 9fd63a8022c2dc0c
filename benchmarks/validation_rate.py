"""Rows per second of `RegionAttentionReward.validate` (decode + aspect-ratio + box checks of every row it reads),
on the tiny grounding data (112 px images, PNG-encoded in its `datasets` Image column) and on synthetic
JPEG-encoded noise images in a `datasets` Image column (decoded on access, as a real dataset is).

    OMP_NUM_THREADS=1 python benchmarks/validation_rate.py --rows 400 --size 640x480

Prints one line per dataset and the time the default bounded pass (validation_rows=256) takes at that rate.
"""

from __future__ import annotations

import argparse
import io
import random
import time

from datasets import Dataset, Features, Image, Sequence, Value
from PIL import Image as PILImage

from trl_attention.sayo import RegionAttentionReward
from trl_attention.tiny import make_grounding_dataset
from trl_attention.tiny.tokenizer import build_processor


def jpeg_dataset(rows: int, width: int, height: int) -> Dataset:
    rng = random.Random(0)
    noise = PILImage.frombytes("RGB", (width, height), rng.randbytes(width * height * 3))
    encoded = []
    for _ in range(8):  # a few distinct images, re-used: decoding cost is what is measured
        buffer = io.BytesIO()
        noise.rotate(rng.randrange(360)).save(buffer, format="JPEG", quality=90)
        encoded.append(buffer.getvalue())
    box = [width // 4, height // 4, width // 2, height // 2]
    features = Features(
        {"image": Image(), "boxes": Sequence(Sequence(Sequence(Value("float32")))), "prompt": Value("string")}
    )
    data = {"image": [{"bytes": encoded[i % 8], "path": None} for i in range(rows)], "boxes": [[[box]]] * rows}
    return Dataset.from_dict({**data, "prompt": ["p"] * rows}, features=features)


def rate(dataset, processor) -> float:
    reward = RegionAttentionReward(validation_rows=None)
    start = time.perf_counter()
    reward.validate(dataset, processing_class=processor)
    return len(dataset) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=400)
    parser.add_argument("--size", default="640x480", help="WIDTHxHEIGHT of the JPEG images")
    args = parser.parse_args()
    width, height = (int(v) for v in args.size.split("x"))
    processor = build_processor()
    for name, dataset in (
        ("tiny grounding 112x112 (PNG column)", make_grounding_dataset(args.rows)),
        (f"JPEG {width}x{height}", jpeg_dataset(args.rows, width, height)),
    ):
        value = rate(dataset, processor)
        print(f"{name:32s} {value:8.0f} rows/s   default pass (256 rows): {256 / value:.2f} s")


if __name__ == "__main__":
    main()
