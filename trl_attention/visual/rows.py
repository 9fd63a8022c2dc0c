"""A dataset row's visual inputs, as every method reads them: its images and videos, the image / video parts of its
prompt, what the row is called in an error, and the first rows of a map-style or streaming dataset.

A row carries images in `images` (a list) or `image` (one) and videos in `videos` (a list) or `video` (one); each
video is a list of frames or a file path (`trl_attention.video` decodes them). Its prompt holds one
`{"type": "image"}` / `{"type": "video"}` part per image / video, in order.
"""

from __future__ import annotations

import itertools

__all__ = [
    "VIDEO_COLUMNS",
    "VISUAL_COLUMNS",
    "VideoError",
    "count_parts",
    "first_rows",
    "first_video_row",
    "has_video",
    "named_datasets",
    "prompt_text",
    "row_images",
    "row_name",
    "row_visuals",
    "undecoded",
]

VIDEO_COLUMNS = ("video", "videos")
VISUAL_COLUMNS = ("image", "images", "video", "videos")
_ID_COLUMNS = ("row_id", "id")


class VideoError(ValueError):
    """A video row, model or processor a method cannot take (the video path, or a method that refuses video rows);
    the message names the row or module."""


def row_name(row: dict, index: int | None = None) -> str:
    """`row 12`, `row 12 (id='a7')`, or without an index the row's `row_id`/`id`, else the start of its prompt."""
    for column in _ID_COLUMNS:
        if row.get(column) is not None:
            identity = f"{column}={row[column]!r}"
            return identity if index is None else f"row {index} ({identity})"
    if index is not None:
        return f"row {index}"
    prompt = row.get("prompt", row.get("prompts"))
    text = prompt_text(prompt)
    return f"the row with prompt {text[:80]!r}" if text else "a row without `row_id`, `id` or prompt text"


def prompt_text(prompt) -> str:
    """The text of a prompt: a string as it is, a conversation's text parts joined by spaces."""
    if isinstance(prompt, str):
        return prompt
    parts = []
    for message in prompt if isinstance(prompt, list) else []:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            parts.append(content)
        for part in content if isinstance(content, list) else []:
            if isinstance(part, dict) and part.get("type") == "text":
                parts.append(str(part.get("text", "")))
    return " ".join(parts)


def count_parts(messages, kind: str = "image") -> int:
    """How many `{"type": kind}` parts a conversation holds (0 for a plain-string prompt)."""
    if not isinstance(messages, list):
        return 0
    return sum(
        1
        for message in messages
        if isinstance(message.get("content"), list)
        for part in message["content"]
        if isinstance(part, dict) and part.get("type") == kind
    )


def first_rows(dataset, limit: int | None):
    """(index, row) for the first `limit` rows (all with None) of a map-style or iterable dataset."""
    if limit is None and not hasattr(dataset, "__len__"):
        raise ValueError(
            "validation_rows=None would read the whole streaming dataset before training; give a number of rows"
        )
    if hasattr(dataset, "select") and hasattr(dataset, "__len__"):
        rows = dataset.select(range(len(dataset) if limit is None else min(limit, len(dataset))))
    elif hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__"):
        count = len(dataset) if limit is None else min(limit, len(dataset))
        rows = (dataset[i] for i in range(count))
    else:
        rows = itertools.islice(iter(dataset), limit)
    return enumerate(rows)


def row_images(row: dict) -> list | None:
    """A row's images as `row_visuals` reads them; None when the row has neither an `images` nor an `image`
    column (a text-only dataset)."""
    if "images" not in row and "image" not in row:
        return None
    return row_visuals(row)[0]


def row_visuals(row) -> tuple[list, list]:
    """(images, videos) of a row, each a list (empty when absent); a None `images` / `videos` falls back to
    `image` / `video`."""
    images = row.get("images")
    images = list(images) if images is not None else ([row["image"]] if row.get("image") is not None else [])
    videos = row.get("videos")
    videos = list(videos) if videos is not None else ([row["video"]] if row.get("video") is not None else [])
    return images, videos


def named_datasets(train_dataset, eval_dataset) -> list[tuple[str, object]]:
    """[("train_dataset", ...), ("eval_dataset", ...) or one ("eval_dataset['name']", ...) per split of a dict]: the
    names errors use for a trainer's datasets."""
    datasets = [("train_dataset", train_dataset)]
    if isinstance(eval_dataset, dict):
        return datasets + [(f"eval_dataset[{name!r}]", split) for name, split in eval_dataset.items()]
    return datasets + [("eval_dataset", eval_dataset)]


def has_video(value) -> bool:
    """Whether a `video` / `videos` cell holds a video (a path, frames, or a non-empty list of them)."""
    return value is not None and not (hasattr(value, "__len__") and not isinstance(value, str) and len(value) == 0)


def first_video_row(dataset, limit: int | None = None):
    """(index, column) of the first row with a video, None without one. Reads only the video columns; `limit`
    bounds the rows read of a dataset without a length (streaming)."""
    columns = getattr(dataset, "column_names", None) or []
    present = [c for c in VIDEO_COLUMNS if c in columns]
    if not present:
        return None
    if hasattr(dataset, "select_columns"):
        dataset = dataset.select_columns(present)
    for index, row in first_rows(dataset, None if hasattr(dataset, "__len__") else limit or 256):
        for column in present:
            if has_video(row.get(column)):
                return index, column
    return None


def undecoded(dataset):
    """The dataset with its image features left as {"bytes", "path"} (`datasets.Image(decode=False)`): checks read
    them with `open_image`, which names the file a truncated image fails in (datasets' own decoding names no row)."""
    from datasets import Image, List, Sequence

    features = getattr(dataset, "features", None) or {}
    for name in VISUAL_COLUMNS:
        feature = features.get(name)
        if isinstance(feature, Image):
            dataset = dataset.cast_column(name, Image(decode=False))
        elif isinstance(feature, (List, Sequence)) and isinstance(getattr(feature, "feature", None), Image):
            dataset = dataset.cast_column(name, type(feature)(Image(decode=False)))
        elif isinstance(feature, (List, Sequence)) and isinstance(getattr(feature, "feature", None), (List, Sequence)):
            inner = feature.feature
            if isinstance(getattr(inner, "feature", None), Image):
                dataset = dataset.cast_column(name, type(feature)(type(inner)(Image(decode=False))))
    return dataset
