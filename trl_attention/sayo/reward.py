"""SAYO's region attention reward (PAPERS.md section 2) and the reward protocol it uses.

A reward function opts in to the policy's attention by carrying `requires_attention = True` (the
`attention_reward` decorator, or subclassing `AttentionReward`). `AttentionGRPOTrainer` then passes it
`attention=[CompletionAttention | None, ...]`, one per completion (`sayo.attention`), computed inside the no-grad
scoring forward shared with RAL's p_old capture.
"""

from __future__ import annotations

import math

import torch

from ..rewards import ANSWER_TAG, completion_text
from .regions import clip_box, region_token_indices

__all__ = [
    "AttentionReward",
    "RegionAttentionReward",
    "attention_reward",
    "format_reward",
    "make_format_reward",
    "region_attention_score",
]


class AttentionReward:
    """Base class for reward callables that receive `attention=`; subclasses implement `__call__`."""

    requires_attention = True
    __name__ = "attention_reward"

    def validate(self, dataset) -> None:
        """Called by the trainer on its datasets before training; raise on unusable rows."""


def attention_reward(func):
    """Decorator marking a reward function as needing `attention=` (see module docstring)."""
    func.requires_attention = True
    return func


def region_attention_score(attn, region_mask, image_mask, token_mask=None, variant: str = "tanh", eps: float = 1e-8):
    """SAYO score of one completion: tanh(log((a + eps) / (v + eps))) in (-1, 1), or (1 + that) / 2 for
    variant="sigmoid" (the paper's (0, 1) form).

    attn: (C, T) attention rows; region_mask, image_mask: bool over T; token_mask: bool over C (None = all rows).
    a / v = mean attention over (selected rows x region columns) / (selected rows x image columns).
    """
    if variant not in ("tanh", "sigmoid"):
        raise ValueError(f"variant must be 'tanh' or 'sigmoid', got {variant!r}")
    region_mask, image_mask = region_mask.bool(), image_mask.bool()
    if not region_mask.any() or not image_mask.any():
        raise ValueError("region_mask and image_mask must each select at least one position")
    if (region_mask & ~image_mask).any():
        raise ValueError("region_mask selects positions outside image_mask")
    rows = attn if token_mask is None else attn[token_mask.bool()]
    if rows.shape[0] == 0:
        raise ValueError("token_mask selects no completion token")
    inside = rows[:, region_mask].double().mean()
    overall = rows[:, image_mask].double().mean()
    score = torch.tanh(torch.log((inside + eps) / (overall + eps)))
    return (score if variant == "tanh" else (1 + score) / 2).to(attn.dtype)


def _image_sizes(kwargs, index):
    images = kwargs.get("images")
    images = images[index] if images is not None else [kwargs["image"][index]] if "image" in kwargs else None
    if images is None:
        raise ValueError("RegionAttentionReward needs the dataset's `image` or `images` column for image sizes")
    return [image.size for image in images]


class RegionAttentionReward(AttentionReward):
    """SAYO's region attention reward: one score per completion from the attention of its highest-entropy tokens
    on the ground-truth boxes relative to the whole image (`region_attention_score`).

    Dataset: `boxes` column (per image, a list of (x1, y1, x2, y2) boxes; pixels unless `normalized_boxes`), and
    `image` or `images` (for the original sizes). Returns None (TRL skips it) for a row without boxes, and for a
    completion whose image tokens were truncated away; both are counted in logged metrics, as are clipped boxes.

    `reference_quirks=True` reproduces two choices of the released SAYO code, to compare with the paper's numbers
    (docs/sayo-fidelity.md): k = max(1, int(fraction * (C - 1))) tokens with C the longest completion of the call
    (the padded batch length), and box edges on a token boundary keeping the touched row/column.
    """

    __name__ = "region_attention"

    def __init__(
        self,
        boxes_column="boxes",
        top_entropy_fraction=0.3,
        variant="tanh",
        min_overlap=0.0,
        normalized_boxes=False,
        reference_quirks=False,
    ):
        if not 0.0 < top_entropy_fraction <= 1.0:
            raise ValueError(f"top_entropy_fraction must be in (0, 1], got {top_entropy_fraction}")
        self.boxes_column, self.top_entropy_fraction, self.variant = boxes_column, top_entropy_fraction, variant
        self.min_overlap, self.normalized_boxes = min_overlap, normalized_boxes
        self.reference_quirks = reference_quirks

    def validate(self, dataset) -> None:
        """Fail before training on boxes that are inverted, empty or entirely outside their image, naming the row."""
        if dataset is None or self.boxes_column not in getattr(dataset, "column_names", []):
            raise ValueError(f"RegionAttentionReward: the training dataset has no `{self.boxes_column}` column")
        for index, row in enumerate(dataset):
            per_image = row[self.boxes_column] or []
            sizes = _image_sizes({k: [v] for k, v in row.items()}, 0)
            if len(per_image) > len(sizes):
                raise ValueError(f"row {index}: {len(per_image)} box lists for {len(sizes)} images")
            for boxes, size in zip(per_image, sizes):
                for box in boxes or []:
                    try:
                        clip_box(box, size, self.normalized_boxes)
                    except ValueError as error:
                        raise ValueError(f"row {index}, column `{self.boxes_column}`: {error}") from None

    def select_tokens(self, entropies: torch.Tensor, padded_length: int | None = None) -> torch.Tensor:
        """Bool mask of the top `top_entropy_fraction` completion tokens by entropy (at least one).

        `padded_length` C (reference_quirks): the released code's k = max(1, int(fraction * (C - 1))) over the first
        C - 1 positions of the padded batch. Its picks past this completion's end (padding after EOS) have no
        attention row here, so they are dropped: k is capped at the completion's own tokens among those positions.
        """
        n = entropies.numel()
        if padded_length is None:
            count, candidates = max(1, math.ceil(self.top_entropy_fraction * n)), n
        else:
            candidates = max(1, min(n, padded_length - 1))
            count = min(max(1, int(self.top_entropy_fraction * (padded_length - 1))), candidates)
        mask = torch.zeros(n, dtype=torch.bool)
        mask[torch.topk(entropies[:candidates].float(), count).indices] = True
        return mask

    def __call__(self, completions, attention=None, **kwargs):
        if attention is None:
            raise RuntimeError(
                "RegionAttentionReward needs the policy's attention: train with trl_attention.AttentionGRPOTrainer"
            )
        counts = {"no_box": 0, "truncated": 0, "clipped_boxes": 0}
        scores, shares = [], []
        lengths = [a.rows.shape[0] for a in attention if a is not None]
        padded = max(lengths) if self.reference_quirks and lengths else None
        for index, item in enumerate(attention):
            per_image = (kwargs.get(self.boxes_column) or [None] * len(attention))[index] or []
            if not any(per_image):
                counts["no_box"] += 1
                scores.append(None)
                continue
            if item is None or item.image_positions is None or item.rows.shape[0] == 0:
                counts["truncated"] += 1
                scores.append(None)
                continue
            region = torch.zeros(item.rows.shape[1], dtype=torch.bool)
            image = torch.zeros_like(region)
            sizes = _image_sizes(kwargs, index)
            for positions, grid, size, boxes in zip(
                item.image_positions, item.image_grids, sizes, per_image + [[]] * len(item.image_positions)
            ):
                image[positions] = True
                for box in boxes or []:
                    counts["clipped_boxes"] += int(clip_box(box, size, self.normalized_boxes)[1])
                    cells = region_token_indices(
                        box,
                        size,
                        grid,
                        item.merge_size,
                        self.min_overlap,
                        self.normalized_boxes,
                        self.reference_quirks,
                    )
                    region[positions[cells]] = True
            if not region.any():  # min_overlap can leave a small box without any token
                counts["no_box"] += 1
                scores.append(None)
                continue
            selected = None if item.entropies is None else self.select_tokens(item.entropies, padded)
            scores.append(float(region_attention_score(item.rows, region, image, selected, self.variant)))
            rows = item.rows if selected is None else item.rows[selected]
            shares.append(float(rows[:, region].sum() / rows[:, image].sum().clamp(min=1e-12)))
        log_metric = kwargs.get("log_metric")
        if log_metric is not None:
            for name, value in counts.items():
                log_metric(f"sayo/{name}", float(value))
            if shares:
                log_metric("sayo/region_share", sum(shares) / len(shares))
        return scores


def _last_answer_closed(text: str) -> bool:
    """The released code's test: the LAST `<answer>` of the text is followed by a `</answer>`."""
    start = text.rfind("<answer>")
    return start >= 0 and "</answer>" in text[start + len("<answer>") :]


def make_format_reward(min_tokens: int = 60, max_tokens: int = 100, ramp: float = 0.6, reference_quirks=False):
    """Format reward of the SAYO code: 1 if an <answer>...</answer> tag is present, times a length ramp that is 1
    for min_tokens <= n <= max_tokens, max(0, ramp * max_tokens / n) above and max(0, ramp * n / min_tokens) below.
    `reference_quirks=True`: the tag must be the last `<answer>` (the released code's regex), so
    "<answer>a</answer> <answer>b" scores 0."""
    has_tag = _last_answer_closed if reference_quirks else (lambda text: bool(ANSWER_TAG.search(text)))

    def format_reward(completions, completion_ids, **kwargs):
        rewards = []
        for completion, ids in zip(completions, completion_ids):
            n = len(ids)
            if min_tokens <= n <= max_tokens:
                length = 1.0
            elif n > max_tokens:
                length = max(0.0, ramp * max_tokens / n)
            else:
                length = max(0.0, ramp * n / min_tokens)
            rewards.append(length if has_tag(completion_text(completion)) else 0.0)
        return rewards

    return format_reward


format_reward = make_format_reward()
