"""Box -> visual-token mapping against a brute-force supersampled rasterisation and the real image processor."""

import random

import numpy as np
import pytest
import torch
from PIL import Image
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil, smart_resize

from trl_attention.visual.regions import (
    clip_box,
    fixed_grid_token_indices,
    region_token_indices,
    visual_token_positions,
)


def _brute_force(box, width, height, rows, cols, min_overlap):
    """Rasterise on a lattice refined cols x rows times, where every cell edge and integer box edge is a lattice
    line; count covered sub-pixels per cell."""
    x1, y1, x2, y2 = box
    x1, x2 = max(x1, 0), min(x2, width)
    y1, y2 = max(y1, 0), min(y2, height)
    covered = np.zeros((height * rows, width * cols), dtype=bool)
    covered[y1 * rows : y2 * rows, x1 * cols : x2 * cols] = True
    share = covered.reshape(rows, height, cols, width).sum(axis=(1, 3)) / (height * width)
    return sorted(np.flatnonzero(share > min_overlap).tolist())


# patch, merge: Qwen2-VL and Qwen2.5-VL use 14 px patches, Qwen3-VL 16 px; all merge 2x2.
@pytest.mark.parametrize("patch", [14, 16])
def test_matches_brute_force_over_random_boxes_sizes_and_grids(patch):
    rng = random.Random(patch)
    for _ in range(40):
        width, height = rng.randint(30, 160), rng.randint(30, 160)
        resized_h, resized_w = smart_resize(height, width, factor=patch * 2, min_pixels=28 * 28, max_pixels=256 * 256)
        grid = (1, resized_h // patch, resized_w // patch)
        x1, y1 = rng.randint(-10, width - 1), rng.randint(-10, height - 1)
        box = (x1, y1, rng.randint(max(x1, 0) + 1, width + 10), rng.randint(max(y1, 0) + 1, height + 10))
        min_overlap = rng.choice([0.0, 0.0, 0.25, 0.5])
        got = region_token_indices(box, (width, height), grid, 2, min_overlap).tolist()
        expected = _brute_force(box, width, height, grid[1] // 2, grid[2] // 2, min_overlap)
        assert got == expected, (box, (width, height), grid, min_overlap)


def test_matches_the_processor_layout_of_the_painted_region():
    """Paint the box in an image, run the real PIL processor, see which merged tokens' patches changed."""
    processor = Qwen2VLImageProcessorPil(min_pixels=28 * 28, max_pixels=224 * 224)
    rng = random.Random(0)
    for _ in range(10):
        width, height = rng.choice([56, 84, 112]), rng.choice([56, 112])  # multiples of 28: resize is identity
        x1, y1 = rng.randrange(0, width - 8), rng.randrange(0, height - 8)
        box = (x1, y1, rng.randint(x1 + 1, width), rng.randint(y1 + 1, height))
        base = Image.new("RGB", (width, height), (0, 0, 0))
        painted = base.copy()
        painted.paste((255, 255, 255), box)
        a = processor(images=[base], return_tensors="pt")
        b = processor(images=[painted], return_tensors="pt")
        changed = (a["pixel_values"] != b["pixel_values"]).any(-1)  # per patch, in merged-token order
        tokens = torch.nonzero(changed.view(-1, 4).any(-1)).flatten().tolist()
        assert region_token_indices(box, (width, height), a["image_grid_thw"][0]).tolist() == tokens


def test_normalised_boxes_frames_and_fixed_grid():
    size, grid = (200, 100), (1, 8, 16)  # 4 x 8 tokens; a cell is 25 x 25 px
    pixels = region_token_indices((25, 25, 75, 50), size, grid)
    assert pixels.tolist() == [9, 10]
    assert torch.equal(region_token_indices((0.125, 0.25, 0.375, 0.5), size, grid, normalized=True), pixels)
    video = region_token_indices((25, 25, 75, 50), size, (2, 8, 16))
    assert video.tolist() == [9, 10, 41, 42]  # the same cells in both frames
    assert fixed_grid_token_indices((0, 0, 10, 10), (336, 336), (24, 24)).tolist() == [0]  # LLaVA 14 px cells
    assert fixed_grid_token_indices((0, 0, 15, 14), (336, 336), (24, 24)).tolist() == [0, 1]
    assert fixed_grid_token_indices((0, 0, 15, 14), (336, 336), (24, 24), min_overlap=0.1).tolist() == [0]


def test_bad_boxes_are_errors_and_outside_parts_are_clipped():
    assert clip_box((-5, 0, 10, 10), (20, 20)) == ((0.0, 0.0, 10.0, 10.0), True)
    assert clip_box((0, 0, 10, 10), (20, 20)) == ((0.0, 0.0, 10.0, 10.0), False)
    with pytest.raises(ValueError, match="x2 <= x1"):
        region_token_indices((10, 0, 5, 10), (20, 20), (1, 4, 4))
    with pytest.raises(ValueError, match="outside"):
        region_token_indices((30, 0, 40, 10), (20, 20), (1, 4, 4))
    with pytest.raises(ValueError, match="merge_size"):
        region_token_indices((0, 0, 5, 5), (20, 20), (1, 3, 4))


def test_visual_token_positions_per_image_and_truncation():
    ids = torch.tensor([1, 9, 9, 9, 9, 2, 9, 9, 9, 9, 9, 9, 9, 9, 3])
    blocks = visual_token_positions(ids, 9, [(1, 4, 4), (1, 4, 8)], merge_size=2)
    assert [b.tolist() for b in blocks] == [[1, 2, 3, 4], [6, 7, 8, 9, 10, 11, 12, 13]]
    assert visual_token_positions(ids[:8], 9, [(1, 4, 4), (1, 4, 8)]) is None  # truncated: counted skip, no IndexError
    assert visual_token_positions(torch.tensor([1, 2]), 9, []) == []
