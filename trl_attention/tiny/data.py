"""Synthetic grounding data: coloured shapes on a plain background, a question about one of them, its box."""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
from datasets import Dataset
from PIL import Image, ImageDraw

from ..visual.regions import region_token_indices

__all__ = ["BACKGROUND", "COLORS", "SHAPES", "box_to_token_mask", "make_grounding_dataset"]

# Saturated, mutually distant colours so that "the pixel has the target colour" is an exact check.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 60),
    "blue": (30, 70, 220),
    "yellow": (235, 200, 20),
    "purple": (140, 50, 180),
    "orange": (245, 130, 15),
}
SHAPES = ("square", "circle", "triangle")
BACKGROUND = (245, 245, 245)

_QUESTION_COLOR = "What colour is the {shape}?"
_QUESTION_SHAPE = "What shape is the {color} object?"


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: Sequence[int], color) -> None:
    """Draw ``shape`` filling ``box`` = [x0, y0, x1, y1) (end-exclusive; PIL wants inclusive corners)."""
    x0, y0, x1, y1 = box
    if shape == "square":
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=color)
    elif shape == "circle":
        draw.ellipse([x0, y0, x1 - 1, y1 - 1], fill=color)
    else:  # upward isosceles triangle with its base on the box bottom
        draw.polygon([(x0, y1 - 1), (x1 - 1, y1 - 1), ((x0 + x1 - 1) / 2, y0)], fill=color)


def render_shapes(shapes, colors, boxes, image_size: int) -> Image.Image:
    """A plain-background square image with `shapes[i]` of colour name `colors[i]` filling `boxes[i]`."""
    image = Image.new("RGB", (image_size, image_size), BACKGROUND)
    draw = ImageDraw.Draw(image)
    for shape, color, box in zip(shapes, colors, boxes):
        _draw_shape(draw, shape, box, COLORS[color])
    return image


def _place(rng: random.Random, n: int, image_size: int, gap: int = 2) -> list[list[int]]:
    """Rejection-sample ``n`` non-overlapping square boxes (at least ``gap`` px apart)."""
    lo, hi = max(6, round(0.18 * image_size)), max(8, round(0.32 * image_size))
    while True:
        boxes: list[list[int]] = []
        for _ in range(200):
            s = rng.randint(lo, hi)
            x0, y0 = rng.randint(0, image_size - s), rng.randint(0, image_size - s)
            cand = [x0, y0, x0 + s, y0 + s]
            if all(
                cand[0] >= b[2] + gap or b[0] >= cand[2] + gap or cand[1] >= b[3] + gap or b[1] >= cand[3] + gap
                for b in boxes
            ):
                boxes.append(cand)
                if len(boxes) == n:
                    return boxes
        hi = max(lo, hi - 2)  # crowded: retry with smaller shapes


def _place_on_grid(rng: random.Random, n: int, image_size: int, cells: int, inset: int) -> list[list[int]]:
    """``n`` boxes in distinct slots of a grid of ``cells`` x ``cells`` visual tokens (28 px each), ``inset`` px in
    from the slot's edges: each object covers exactly its slot's tokens and no other's."""
    side = 28 * cells
    if image_size % side or not 0 <= inset < side // 4:
        raise ValueError(
            f"layout='grid' needs image_size a multiple of 28 * object_cells = {side} and 0 <= inset < {side // 4};"
            f" got image_size={image_size}, inset={inset}"
        )
    slots = image_size // side
    if n > slots * slots:
        raise ValueError(f"{n} objects do not fit the {slots}x{slots} grid of image_size={image_size}")
    picked = rng.sample([(i, j) for i in range(slots) for j in range(slots)], n)
    return [[j * side + inset, i * side + inset, (j + 1) * side - inset, (i + 1) * side - inset] for i, j in picked]


def make_grounding_dataset(
    n: int,
    seed: int = 0,
    image_size: int = 112,
    layout: str = "free",
    object_cells: int | None = None,
    questions: str = "both",
    min_shapes: int = 1,
    max_shapes: int = 3,
    system_prompt: str | None = None,
) -> Dataset:
    """``n`` synthetic grounding examples: 1-3 shapes on a plain background, one target asked about.

    Shapes in an image have distinct colours *and* distinct types, so both question kinds are unambiguous:
    "What colour is the circle?" (answer: colour word) and "What shape is the red object?" (answer: shape).
    ``box`` is [x0, y0, x1, y1] in original-image pixels, end-exclusive (``pixels[y0:y1, x0:x1]``); ``boxes``
    holds the same box in the SAYO convention (per image, a list of boxes) and ``solution`` repeats ``answer``.
    The ``image`` column holds one PIL image per row: TRL 1.16's GRPOTrainer reads ``images`` (a list) or
    ``image`` (wrapped as ``[image]``) and fills the ``{"type": "image"}`` placeholder of ``prompt`` with it.

    ``layout="free"`` places shapes of 18-32% of the image anywhere (they straddle token cells); ``layout="grid"``
    puts each in its own slot of ``object_cells`` x ``object_cells`` visual tokens (default 2; the demo's task: the
    tiny model learns it in minutes, docs/demo.md). ``questions``: ``"both"`` kinds, or only ``"colour"`` /
    ``"shape"``.
    ``system_prompt``: None keeps the chat template's default system turn (11 tokens); a string (``""`` too) is
    sent as the system turn instead (a shorter prompt: the tiny model learns the grid task faster without it).
    """
    if layout not in ("free", "grid") or questions not in ("both", "colour", "shape"):
        raise ValueError(
            f"layout must be 'free' or 'grid', questions 'both', 'colour' or 'shape'; got {layout!r}, {questions!r}"
        )
    if object_cells is not None and (layout != "grid" or object_cells < 1):
        raise ValueError(
            f"object_cells applies to layout='grid' only and must be >= 1; got {object_cells!r} with {layout!r}"
        )
    cells = 2 if object_cells is None else object_cells
    if not 1 <= min_shapes <= max_shapes <= len(SHAPES):
        raise ValueError(f"need 1 <= min_shapes <= max_shapes <= {len(SHAPES)}, got {min_shapes}, {max_shapes}")
    system = (
        [] if system_prompt is None else [{"role": "system", "content": [{"type": "text", "text": system_prompt}]}]
    )
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        k = rng.randint(min_shapes, max_shapes)
        shapes = rng.sample(SHAPES, k)
        colors = rng.sample(sorted(COLORS), k)
        if layout == "grid":
            boxes = _place_on_grid(rng, k, image_size, cells, inset=max(1, 3 * cells // 2))
        else:
            boxes = _place(rng, k, image_size)
        image = render_shapes(shapes, colors, boxes, image_size)
        t = rng.randrange(k)
        if questions == "colour" or (questions == "both" and rng.random() < 0.5):
            question, answer = _QUESTION_COLOR.format(shape=shapes[t]), colors[t]
        else:
            question, answer = _QUESTION_SHAPE.format(color=colors[t]), shapes[t]
        rows.append(
            {
                "prompt": system
                + [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}],
                "image": image,
                "answer": answer,
                "solution": answer,  # the SAYO / accuracy-reward column name
                "box": boxes[t],
                "boxes": [[boxes[t]]],  # per image, a list of boxes (the SAYO dataset convention)
                "target_shape": shapes[t],
                "target_color": colors[t],
            }
        )
    return Dataset.from_list(rows)


def box_to_token_mask(box, image_size, image_grid_thw_row, merge_size: int = 2, patch_size: int = 14) -> torch.Tensor:
    """Bool mask over one image's visual tokens (row-major, repeated per frame): True where the token's cell
    overlaps ``box`` = [x0, y0, x1, y1] (end-exclusive, original pixels of an ``image_size`` image, an int for
    square images). A thin wrapper of `trl_attention.visual.regions.region_token_indices`; ``patch_size`` does not
    change the mapping and is kept for signature compatibility."""
    t, gh, gw = (int(v) for v in image_grid_thw_row)
    size = tuple(int(v) for v in image_size) if isinstance(image_size, (tuple, list)) else (int(image_size),) * 2
    mask = torch.zeros(t * (gh // merge_size) * (gw // merge_size), dtype=torch.bool)
    mask[region_token_indices(box, size, (t, gh, gw), merge_size)] = True
    return mask
