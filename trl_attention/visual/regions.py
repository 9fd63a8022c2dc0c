"""Map image regions (boxes) to visual tokens, and visual tokens to sequence positions.

Qwen2-VL / Qwen2.5-VL / Qwen3-VL resize an image to a multiple of `patch_size * merge_size` on each axis and
emit one token per `merge_size x merge_size` block of patches, row-major. The resize scales each axis
uniformly, so in ORIGINAL pixel coordinates token cell (r, c) of a (h, w)-patch grid is the rectangle
[c*W/cols, (c+1)*W/cols) x [r*H/rows, (r+1)*H/rows) with rows = h/merge, cols = w/merge: the patch size never
enters (14 px for Qwen2/2.5-VL, 16 px for Qwen3-VL give the same mapping). Arithmetic is done in units scaled by
the grid size, so integer boxes on cell borders are exact. A LLaVA / Gemma3 fixed grid is the same with given
rows/cols (`fixed_grid_token_indices`; as grid_thw (1, rows, cols) with merge 1), a Gemma4 one has the patch grid of
its `image_position_ids` pooled `pooling_kernel_size` (`trl_attention.visual.layouts` says which per family).
`inclusive_end=True` reproduces the released SAYO code's rounding, which also keeps the row/column a box edge only
touches (docs/sayo-fidelity.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

__all__ = ["clip_box", "fixed_grid_token_indices", "region_token_indices", "visual_token_positions"]


def clip_box(box: Sequence[float], image_size: Sequence[int], normalized: bool = False):
    """Validate a (x1, y1, x2, y2) box and clip it to the image. Returns (clipped box, was_clipped).

    `normalized=True` reads coordinates as fractions of width/height. Raises ValueError for x2 <= x1, y2 <= y1 or
    a box with no area inside the image.
    """
    if len(box) != 4:
        raise ValueError(f"a box is (x1, y1, x2, y2), got {box!r}")
    width, height = image_size
    x1, y1, x2, y2 = (float(v) for v in box)
    if normalized:
        x1, x2, y1, y2 = x1 * width, x2 * width, y1 * height, y2 * height
    if not (x2 > x1 and y2 > y1):
        raise ValueError(f"box {tuple(box)} has x2 <= x1 or y2 <= y1")
    clipped = (max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height)))
    if not (clipped[2] > clipped[0] and clipped[3] > clipped[1]):
        raise ValueError(f"box {tuple(box)} lies outside the {width}x{height} image")
    return clipped, clipped != (x1, y1, x2, y2)


def _axis_overlap(lo: float, hi: float, extent: float, cells: int) -> torch.Tensor:
    """Fraction of each of `cells` equal cells of [0, extent) covered by [lo, hi), in units scaled by `cells`."""
    starts = torch.arange(cells, dtype=torch.float64) * extent
    covered = torch.clamp(
        torch.minimum(starts + extent, torch.tensor(hi * cells, dtype=torch.float64))
        - torch.maximum(starts, torch.tensor(lo * cells, dtype=torch.float64)),
        min=0.0,
    )
    return covered / extent


def _inclusive_cells(lo: float, hi: float, extent: float, cells: int) -> torch.Tensor:
    """Cells floor(lo * cells / extent) .. floor(hi * cells / extent), both included (the released code's
    `int(x2 // 28)` end), clamped to the grid."""
    first = min(int(lo * cells // extent), cells - 1)
    last = min(int(hi * cells // extent), cells - 1)
    return (torch.arange(cells) >= first) & (torch.arange(cells) <= last)


def fixed_grid_token_indices(
    box, image_size, grid, frames: int = 1, min_overlap: float = 0.0, normalized=False, inclusive_end=False
):
    """Indices (row-major, frame-major) of the cells of a `grid = (rows, cols)` token grid over the image whose
    area is covered by the box by MORE than `min_overlap` of the cell (0.0: any overlap). `inclusive_end`: the
    released code's rule instead (cells from the one holding x1 to the one holding x2, both kept; no overlap test)."""
    rows, cols = (int(v) for v in grid)
    if rows < 1 or cols < 1:
        raise ValueError(f"grid must be positive, got {grid!r}")
    if not 0.0 <= min_overlap < 1.0:
        raise ValueError(f"min_overlap must be in [0, 1), got {min_overlap}")
    (x1, y1, x2, y2), _ = clip_box(box, image_size, normalized)
    width, height = image_size
    if inclusive_end:
        inside = _inclusive_cells(y1, y2, float(height), rows)[:, None] & _inclusive_cells(x1, x2, float(width), cols)
    else:
        share = _axis_overlap(y1, y2, float(height), rows)[:, None] * _axis_overlap(x1, x2, float(width), cols)[None]
        inside = share > min_overlap
    cells = torch.nonzero(inside.flatten()).flatten()
    return torch.cat([cells + frame * rows * cols for frame in range(frames)])


def region_token_indices(
    box, image_size, grid_thw, merge_size: int = 2, min_overlap: float = 0.0, normalized=False, inclusive_end=False
):
    """Visual-token indices of one image covered by `box` (see module docstring).

    box: (x1, y1, x2, y2) in pixels of the original image (fractions with `normalized=True`); image_size: the
    original (width, height); grid_thw: (t, h, w) in patches as the processor reports it. Returns a LongTensor of
    indices into the image's block of t*h*w/merge^2 tokens.
    """
    frames, patches_h, patches_w = (int(v) for v in grid_thw)
    if patches_h % merge_size or patches_w % merge_size:
        raise ValueError(f"grid {tuple(grid_thw)} is not divisible by merge_size={merge_size}")
    grid = (patches_h // merge_size, patches_w // merge_size)
    return fixed_grid_token_indices(box, image_size, grid, frames, min_overlap, normalized, inclusive_end)


def visual_token_positions(input_ids: torch.Tensor, token_id: int, grids_thw, merge_size: int = 2):
    """Split the positions of `token_id` in a 1D sequence into one block per image, in order.

    Returns a list of LongTensors, or None when the count does not match the grids (e.g. image tokens truncated
    away by a prompt-length limit), so callers can skip instead of indexing out of range.
    """
    positions = torch.nonzero(input_ids == token_id).flatten()
    counts = [int(t) * int(h) * int(w) // merge_size**2 for t, h, w in grids_thw]
    if sum(counts) != positions.numel():
        return None
    return list(torch.split(positions, counts)) if counts else []
