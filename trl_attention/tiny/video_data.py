"""Synthetic video data: a shape moving across frames, with questions that need the motion or one frame.

Two question kinds, each unanswerable from a single random frame:
- "Which way does the {shape} move?" -> left / right / up / down (needs the first and last frames);
- "What colour is the {shape} in the last frame?" -> the colour it switches to halfway (needs the end).
A distractor shape of another type stays still. Rows follow the trainers' video format: `video` (a list of PIL
frames), `video_fps`, a prompt with one `{"type": "video"}` part, and per-frame `boxes` of the moving shape."""

from __future__ import annotations

import random

from datasets import Dataset
from PIL import Image, ImageDraw

from .data import BACKGROUND, COLORS, SHAPES, _draw_shape

__all__ = ["DIRECTIONS", "make_motion_dataset", "motion_frames"]

DIRECTIONS = {"left": (-1, 0), "right": (1, 0), "up": (0, -1), "down": (0, 1)}
QUESTION_MOTION = "Which way does the {shape} move?"
QUESTION_LAST_COLOR = "What colour is the {shape} in the last frame?"


def motion_frames(shape, start_color, end_color, direction, distractor, frames: int, size: int, rng):
    """(frames, per-frame boxes of the moving shape) for one clip."""
    side = max(8, size // 5)
    dx, dy = DIRECTIONS[direction]
    travel = size - side - 4
    x0 = 2 if dx > 0 else (size - side - 2 if dx < 0 else rng.randint(2, size - side - 2))
    y0 = 2 if dy > 0 else (size - side - 2 if dy < 0 else rng.randint(2, size - side - 2))
    still_shape, still_color = distractor
    images, boxes = [], []
    for f in range(frames):
        step = travel * f / max(frames - 1, 1)
        x, y = round(x0 + dx * step), round(y0 + dy * step)
        box = [x, y, x + side, y + side]
        image = Image.new("RGB", (size, size), BACKGROUND)
        draw = ImageDraw.Draw(image)
        # The still distractor sits in a corner band the mover does not cross at its start.
        corner = [size - side - 2, size - side - 2] if (dx, dy) in ((-1, 0), (0, -1)) else [2, 2]
        if dx == 0:
            corner[0] = 2 if x0 > size // 2 else size - side - 2
        else:
            corner[1] = 2 if y0 > size // 2 else size - side - 2
        _draw_shape(draw, still_shape, [*corner, corner[0] + side, corner[1] + side], COLORS[still_color])
        _draw_shape(draw, shape, box, COLORS[start_color if f < frames // 2 else end_color])
        images.append(image)
        boxes.append(box)
    return images, boxes


def make_motion_dataset(n: int, seed: int = 0, frames: int = 8, size: int = 112, fps: float = 2.0) -> Dataset:
    """`n` clips of `frames` frames (`size` px square) of a moving shape and a still distractor."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        shape, still = rng.sample(SHAPES, 2)
        start, end, still_color = rng.sample(sorted(COLORS), 3)
        direction = rng.choice(sorted(DIRECTIONS))
        images, boxes = motion_frames(shape, start, end, direction, (still, still_color), frames, size, rng)
        if rng.random() < 0.5:
            question, answer = QUESTION_MOTION.format(shape=shape), direction
        else:
            question, answer = QUESTION_LAST_COLOR.format(shape=shape), end
        rows.append(
            {
                "prompt": [{"role": "user", "content": [{"type": "video"}, {"type": "text", "text": question}]}],
                "video": images,
                "video_fps": fps,
                "answer": answer,
                "solution": answer,
                "frame_boxes": boxes,
                "target_shape": shape,
            }
        )
    return Dataset.from_list(rows)
