"""SAYO's region attention reward (docs/papers.md section 2) and the reward protocol it uses.

A reward function opts in to the policy's attention by carrying `requires_attention = True` (the
`attention_reward` decorator, or subclassing `AttentionReward`). `AttentionGRPOTrainer` then passes it
`attention=[CompletionAttention | None, ...]`, one per completion (`sayo.attention`), computed inside the no-grad
scoring forward shared with RAL's p_old capture.
"""

from __future__ import annotations

import math

import torch
from PIL import Image

from ..rewards import ANSWER_TAG, completion_text
from ..visual.checks import box_lists, check_aspect_ratio, image_processor_of, open_image
from ..visual.regions import clip_box, region_token_indices
from ..visual.rows import VIDEO_COLUMNS, first_rows, has_video, row_images, row_name, undecoded

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

    def validate(self, dataset, processing_class=None) -> None:
        """Called by the trainer on its datasets before training (with its processor); raise on unusable rows."""


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


def _image_sizes(kwargs, index, where="RegionAttentionReward"):
    if kwargs.get("images") is not None:
        images = list(kwargs["images"][index] or [])
    elif kwargs.get("image") is not None:
        images = [] if kwargs["image"][index] is None else [kwargs["image"][index]]
    else:
        raise ValueError("RegionAttentionReward needs the dataset's `image` or `images` column for image sizes")
    return [open_image(image, f"{where}, image {i}").size for i, image in enumerate(images)]


_NAMING = ("row_id", "id", "prompts", "prompt")  # reward kwargs that identify a row in an error


def _video_error(where: str, what: str):
    """Why SAYO does not score video rows (docs/sayo.md, "Video rows"), as the video path's error type."""
    from ..visual.rows import VideoError

    return VideoError(
        f"{where}: {what}; RegionAttentionReward scores image rows only (SAYO's boxes are per image, and per-frame "
        "boxes would need the trainer's sampled frames): drop the video rows or score them with another reward"
    )


def _world_size() -> int:
    distributed = torch.distributed
    return distributed.get_world_size() if distributed.is_available() and distributed.is_initialized() else 1


class RegionAttentionReward(AttentionReward):
    """SAYO's region attention reward: one score per completion from the attention of its highest-entropy tokens
    on the ground-truth boxes relative to the whole image (`region_attention_score`).

    Dataset: `boxes` column (per image, a list of (x1, y1, x2, y2) boxes; pixels unless `normalized_boxes`), and
    `image` or `images` (PIL images, path strings or `{"bytes", "path"}` dicts; for the original sizes). Returns
    None (TRL skips it) for a row without boxes (text-only rows included), and for a completion whose image tokens
    were truncated away; both are counted in logged metrics, as are clipped boxes.

    Bad rows raise a ValueError naming the row and the column (docs/sayo.md, "Bad input"): `validate` reads the
    first `validation_rows` rows of each dataset when the trainer is built (None: all rows of a map-style
    dataset), and `check_batch` every row the trainer samples, before generation. Boxes that all lie within
    [0, 1] on images of more than a few pixels are taken for normalized coordinates given as pixels and raise,
    unless `pixel_boxes=True` says they are pixels. Video rows raise: SAYO's boxes are per image (docs/sayo.md,
    "Video rows").

    `reference_quirks=True` reproduces two choices of the released SAYO code, to compare with the paper's numbers
    (docs/sayo-fidelity.md): k = max(1, int(fraction * (C - 1))) tokens with C the longest completion of the call
    (the padded batch length), and box edges on a token boundary keeping the touched row/column.
    """

    __name__ = "region_attention"
    needs_visual_grid = True  # boxes map to tokens through the model's image layout (trl_attention.layouts)

    def __init__(
        self,
        boxes_column="boxes",
        top_entropy_fraction=0.3,
        variant="tanh",
        min_overlap=0.0,
        normalized_boxes=False,
        reference_quirks=False,
        validation_rows=256,
        pixel_boxes=False,
    ):
        if not 0.0 < top_entropy_fraction <= 1.0:
            raise ValueError(f"top_entropy_fraction must be in (0, 1], got {top_entropy_fraction}")
        if validation_rows is not None and validation_rows < 0:
            raise ValueError(f"validation_rows must be >= 0 or None, got {validation_rows}")
        if normalized_boxes and pixel_boxes:
            raise ValueError("normalized_boxes=True and pixel_boxes=True contradict each other")
        self.boxes_column, self.top_entropy_fraction, self.variant = boxes_column, top_entropy_fraction, variant
        self.min_overlap, self.normalized_boxes = min_overlap, normalized_boxes
        self.reference_quirks = reference_quirks
        self.validation_rows, self.pixel_boxes = validation_rows, pixel_boxes

    def validate(self, dataset, processing_class=None) -> None:
        """Fail before training on the first `validation_rows` rows' unusable data, naming the row: boxes inverted,
        empty, entirely outside their image or wrongly nested; a box list without an image; images missing,
        unreadable or truncated (decoded here), or with an aspect ratio the image processor of `processing_class`
        rejects; boxes that look normalized while `normalized_boxes` is False."""
        columns = getattr(dataset, "column_names", None) if dataset is not None else None
        if dataset is not None and columns is None:  # an IterableDataset from a generator: read the first row
            first = next(iter(dataset), None)
            columns = [] if first is None else list(first)
        if dataset is None or self.boxes_column not in columns:
            raise ValueError(f"RegionAttentionReward: the training dataset has no `{self.boxes_column}` column")
        image_processor = image_processor_of(processing_class)
        pixel_box, small, first_small = False, 0, None  # over boxes on images larger than 4 px
        for index, row in first_rows(undecoded(dataset), self.validation_rows):  # a bad file named, by row
            where = row_name(row, index)
            for size, boxes in self._check_row(row, where, image_processor, decode=True):
                if min(size) <= 4:
                    continue
                pixel_box = pixel_box or any(max(box) > 1.0 for box in boxes)
                small += len(boxes)
                if boxes and first_small is None:
                    first_small = (where, boxes[0], size)
        if not (self.normalized_boxes or self.pixel_boxes or pixel_box) and first_small is not None:
            where, box, (width, height) = first_small
            raise ValueError(
                f"{where}, column `{self.boxes_column}`: all {small} boxes checked on images larger than 4 px lie "
                f"within [0, 1] (e.g. {tuple(box)} on a {width}x{height} image): normalized coordinates read as "
                "pixels would all land on the top-left token. Pass RegionAttentionReward(normalized_boxes=True), "
                "or pixel_boxes=True if these are pixel boxes"
            )

    def check_batch(self, inputs: list, processing_class=None) -> None:
        """Check each row the trainer sampled, before generation (called by AttentionGRPOTrainer): the checks of
        `validate` but the normalized-box test; path strings are replaced by their loaded image."""
        image_processor = image_processor_of(processing_class)
        for row in inputs:
            self._check_row(row, row_name(row), image_processor, decode=True, replace=True)

    def _check_row(self, row, where, image_processor, decode=False, replace=False) -> list:
        """[(image size, clipped boxes)] of one row, raising a ValueError that names `where` and the column."""
        for column in VIDEO_COLUMNS:
            if has_video(row.get(column)):
                raise _video_error(f"{where}, column `{column}`", "a video row")
        per_image = box_lists(row.get(self.boxes_column), f"{where}, column `{self.boxes_column}`")
        images = row_images(row)
        column = "images" if "images" in row else "image"
        if images is None:
            if any(per_image):
                raise ValueError(f"{where}: boxes in `{self.boxes_column}` but no `image` or `images` column")
            return []
        if len(per_image) > len(images):
            raise ValueError(
                f"{where}, column `{self.boxes_column}`: {len(per_image)} box lists for {len(images)} images "
                f"(column `{column}`)"
            )
        sizes = []
        for i, image in enumerate(images):
            opened = open_image(image, f"{where}, column `{column}`, image {i}", decode)
            check_aspect_ratio(opened.size, f"{where}, column `{column}`, image {i}", image_processor)
            if replace and isinstance(image, (str, dict)) and isinstance(opened, Image.Image):
                if column == "images":
                    row["images"] = [opened if j == i else img for j, img in enumerate(row["images"])]
                else:
                    row["image"] = opened
            sizes.append(opened.size)
        checked = []
        for boxes, size in zip(per_image, sizes):
            for box in boxes:
                try:
                    clip_box(box, size, self.normalized_boxes)
                except ValueError as error:
                    raise ValueError(f"{where}, column `{self.boxes_column}`: {error}") from None
            checked.append((size, boxes))
        return checked

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
            where = row_name({k: kwargs[k][index] for k in _NAMING if isinstance(kwargs.get(k), list)})
            if item is not None and getattr(item, "video_tokens", 0):
                raise _video_error(where, f"its prompt holds {item.video_tokens} video tokens")
            boxes_of_row = (kwargs.get(self.boxes_column) or [None] * len(attention))[index]
            per_image = box_lists(boxes_of_row, f"{where}, column `{self.boxes_column}`")
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
            sizes = _image_sizes(kwargs, index, where)
            for positions, grid, size, boxes in zip(
                item.image_positions, item.image_grids, sizes, per_image + [[]] * len(item.image_positions)
            ):
                image[positions] = True
                for box in boxes or []:
                    try:
                        counts["clipped_boxes"] += int(clip_box(box, size, self.normalized_boxes)[1])
                    except ValueError as error:
                        raise ValueError(f"{where}, column `{self.boxes_column}`: {error}") from None
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
            # TRL divides the sum of the values logged on all ranks by their number: one value times the world size
            # per rank and call gives the global count, one value per completion the global mean share.
            world = _world_size()
            for name, value in counts.items():
                log_metric(f"sayo/{name}", float(value * world))
            for share in shares:
                log_metric("sayo/region_share", share)
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
