"""Data and statistics of `benchmarks/evidence.py`: a grounding task with distractors, its two answer formats, and
the mean with a Student-t 95% confidence interval (no scipy needed)."""

from __future__ import annotations

import math
import random

from datasets import Dataset

from trl_attention.tiny import COLORS, SHAPES
from trl_attention.tiny.data import _QUESTION_COLOR, _QUESTION_SHAPE, _place, _place_on_grid, render_shapes

# RAL's format (think + answer) and RAL-zero's (answer only). Shorter than `trl_attention.rewards.PROMPT_FORMATS`
# (72 / 34 tokens of the tiny tokenizer): on 2 CPU cores prompt length is compute, and SFT teaches the format.
INSTRUCTIONS = {"reasoning": " Think, then answer.", "answer": " Answer only."}
FORMATS = tuple(INSTRUCTIONS)


def completion_text(row: dict, fmt: str, layout: str = "free") -> str:
    """The SFT target: `<think>colour shape</think><answer>..</answer>` (reasoning) or `<answer>..</answer>`.

    On the grid layout the thought names the shape first (`<think>circle red</think>`): the question's shape, copied,
    then its colour. The tiny model learned that order better (held-out accuracy 0.305 vs 0.203 after 600 SFT steps,
    one run each, docs/evidence.md)."""
    answer = f"<answer>{row['answer']}</answer>"
    if fmt != "reasoning":
        return answer
    first, second = ("target_shape", "target_color") if layout == "grid" else ("target_color", "target_shape")
    return f"<think>{row[first]} {row[second]}</think>{answer}"


def make_distractor_dataset(
    n: int, seed: int, image_size: int = 224, shapes=(3, 4), fmt: str = "reasoning", layout: str = "free"
):
    """`n` rows: `shapes` (min, max) shapes of distinct colours on one image, a question about one of them.
    Columns as `trl_attention.tiny.make_grounding_dataset` (`boxes` per image for SAYO), with the prompt format's
    instruction appended to the question.

    `layout="free"`: shapes anywhere, types may repeat, colour questions only about a type that occurs once (every
    question has one answer), else shape questions. `layout="grid"` (the demo's task, where the tiny model learns):
    each shape alone on a 2x2-token slot, distinct types, colour questions only, an empty system turn."""
    if fmt not in FORMATS or layout not in ("free", "grid"):
        raise ValueError(f"fmt must be one of {FORMATS} and layout 'free' or 'grid', got {fmt!r}, {layout!r}")
    if layout == "grid" and shapes[1] > len(SHAPES):
        raise ValueError(f"layout='grid' asks colour questions about distinct types: at most {len(SHAPES)} shapes")
    system = [{"role": "system", "content": [{"type": "text", "text": ""}]}] if layout == "grid" else []
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        k = rng.randint(*shapes)
        colors = rng.sample(sorted(COLORS), k)
        if layout == "grid":
            kinds = rng.sample(SHAPES, k)
            boxes = _place_on_grid(rng, k, image_size, cells=2, inset=3)
        else:
            kinds = [rng.choice(SHAPES) for _ in range(k)]
            boxes = _place(rng, k, image_size)
        image = render_shapes(kinds, colors, boxes, image_size)
        t = rng.randrange(k)
        if layout == "grid" or (kinds.count(kinds[t]) == 1 and rng.random() < 0.5):
            question, answer = _QUESTION_COLOR.format(shape=kinds[t]), colors[t]
        else:
            question, answer = _QUESTION_SHAPE.format(color=colors[t]), kinds[t]
        text = question + INSTRUCTIONS[fmt]
        rows.append(
            {
                "prompt": system + [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": text}]}],
                "image": image,
                "answer": answer,
                "solution": answer,
                "box": boxes[t],
                "boxes": [[boxes[t]]],
                "target_shape": kinds[t],
                "target_color": colors[t],
            }
        )
    return Dataset.from_list(rows)


# ------------------------------------------------------------------------------------------------ statistics


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularised incomplete beta function (modified Lentz)."""
    tiny, c, d = 1e-300, 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        for num in (
            m * (b - m) * x / ((a + 2 * m - 1) * (a + 2 * m)),
            -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1)),
        ):
            d = 1.0 + num * d
            d = 1.0 / (d if abs(d) > tiny else tiny)
            c = 1.0 + num / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


def betainc(a: float, b: float, x: float) -> float:
    """Regularised incomplete beta I_x(a, b)."""
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _betacf(a, b, x) / a
    return 1.0 - betainc(b, a, 1.0 - x)


def t_cdf(t: float, df: int) -> float:
    """CDF of Student's t with `df` degrees of freedom."""
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t > 0 else tail


def t_quantile(p: float, df: int) -> float:
    """Inverse of `t_cdf` by bisection (p in (0, 1))."""
    lo, hi = -1e3, 1e3
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if t_cdf(mid, df) < p else (lo, mid)
    return (lo + hi) / 2


def mean_ci(values, level: float = 0.95) -> dict:
    """Mean, sample std and the two-sided t-interval half-width over `values` (NaN half-width for one value)."""
    xs = [float(v) for v in values if v is not None and math.isfinite(v)]
    n = len(xs)
    if n == 0:
        return {"mean": math.nan, "std": math.nan, "half_width": math.nan, "n": 0}
    mean = sum(xs) / n
    if n == 1:
        return {"mean": mean, "std": math.nan, "half_width": math.nan, "n": 1}
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = t_quantile(0.5 + level / 2, n - 1) * std / math.sqrt(n)
    return {"mean": mean, "std": std, "half_width": half, "n": n}
