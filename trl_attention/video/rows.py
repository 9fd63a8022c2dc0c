"""The visual inputs of a dataset row and the checks that run before training starts.

A row carries images (`image`, or `images`: a list) and videos (`video`, or `videos`: a list); each video is a list
of frames or a file path, optionally with the row's `video_fps` (the rate of its frames). Its prompt holds one
`{"type": "image"}` / `{"type": "video"}` part per image / video, in order. Rows mixing both and batches mixing
image rows and video rows are fine (Video-R1 mixes them)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..visual.rows import (
    VIDEO_COLUMNS,
    VISUAL_COLUMNS,
    VideoError,
    count_parts,
    named_datasets,
    row_visuals,
    undecoded,
)
from .encode import encode_video, vision_geometry
from ..visual.checks import check_aspect_ratio, open_image
from .frames import load_video, probe, probe_size, row_fps, sample_frame_indices

__all__ = ["VideoError", "check_trainer_videos", "check_video_dataset", "encode_row"]

# Tested end to end: Qwen2.5-VL (the RAL paper's model). Qwen2-VL shares the token layout but its forward takes no
# `second_per_grid_ts`; it stays out until a test covers it.
SUPPORTED_MODEL_TYPES = ("qwen2_5_vl",)


def check_video_model(model, processing_class) -> None:
    """Refuse a model or processor the video path cannot feed, naming it."""
    from ..capture.models import unwrap_model

    config = unwrap_model(model).config
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES or getattr(config, "video_token_id", None) is None:
        raise VideoError(
            f"the dataset has video rows but the model is {type(unwrap_model(model)).__name__} "
            f"(model_type={model_type!r}): the video path feeds Qwen2.5-VL (the RAL paper's model), whose video "
            "tokens are grid.prod()/merge**2 <|video_pad|> per clip with M-RoPE temporal positions. Qwen3-VL and "
            "Qwen3.5 interleave per-frame timestamps in the prompt, Qwen2-VL is untested: drop the video rows or "
            "use a Qwen2.5-VL checkpoint"
        )
    try:
        vision_geometry(processing_class)
    except ValueError as err:
        raise VideoError(str(err)) from err


def _frame_size(frame) -> tuple[int, int] | None:
    """(width, height) of a frame without decoding its pixels: PIL images, arrays, nested lists (how `datasets`
    stores arrays), {"bytes", "path"} dicts (the file's header). None when it is none of these."""
    if isinstance(frame, dict):
        frame = open_image(frame, "a video frame")  # PIL reads the header only
    if hasattr(frame, "size") and not hasattr(frame, "shape"):
        return tuple(frame.size)
    shape = getattr(frame, "shape", None) or (np.shape(frame) if isinstance(frame, (list, tuple)) else None)
    return (int(shape[1]), int(shape[0])) if shape is not None and len(shape) >= 2 else None


def _check_video(i: int, video, args, fps) -> None:
    try:
        row_fps(fps, args.video_fps)
    except ValueError as err:
        raise VideoError(f"row {i}: {err}") from None
    if isinstance(video, (str, os.PathLike)):
        if not Path(video).is_file():
            raise VideoError(f"row {i}: video file {os.fspath(video)!r} does not exist")
        try:
            total, native_fps = probe(video)
            sizes = {probe_size(video)}
        except ImportError:  # PyAV missing: its own message says which extra to install
            raise
        except Exception as err:  # noqa: BLE001 - any decoder failure is reported with the row
            raise VideoError(f"row {i}: video file {os.fspath(video)!r} cannot be decoded: {err}") from err
    elif isinstance(video, (list, tuple)):
        if not video:
            raise VideoError(f"row {i}: its video has no frames")
        total, native_fps = len(video), row_fps(fps, args.video_fps)
        cheap = all(hasattr(f, "size") or hasattr(f, "shape") for f in video)  # PIL images, arrays: every frame
        sample = video if cheap else [video[0], video[-1]]  # lists / file dicts: the ends (the encoder checks all)
        sizes = {size for size in map(_frame_size, sample) if size is not None}
        if len(sizes) > 1:
            raise VideoError(f"row {i}: the frames of a video must share one size, got {sorted(sizes)}")
    else:
        raise VideoError(
            f"row {i}: a video must be a list of frames (PIL images or HxWx3 arrays) or a file path, "
            f"got {type(video).__name__}"
        )
    for size in sizes:  # the video path is Qwen-VL's, whose resize refuses a frame over 200:1
        try:
            check_aspect_ratio(size, f"row {i}: a video frame")
        except ValueError as err:
            raise VideoError(str(err)) from None
    try:
        sample_frame_indices(total, native_fps, args)
    except ValueError as err:
        raise VideoError(f"row {i}: {err}") from err


def check_trainer_videos(trainer, video_args, train_dataset, eval_dataset) -> bool:
    """Check a trainer's datasets' video rows now, not at step 1 (`check_video_dataset` on every dataset, each
    error naming its dataset): whether any row has a video. Both trainers run it."""
    found = [
        check_video_dataset(dataset, trainer.model, trainer.processing_class, video_args, name)
        for name, dataset in named_datasets(train_dataset, eval_dataset)
        if dataset
    ]
    return any(found)


def check_video_dataset(dataset, model, processing_class, args, name: str = "train_dataset") -> bool:
    """Whether `dataset` has a video row (a `video` column of Nones has none); raises VideoError naming the first row, model or processor that cannot
    train (prompt parts vs videos, missing or undecodable files, too few frames, unsupported model)."""
    columns = getattr(dataset, "column_names", None)
    if columns is None or not any(c in columns for c in VIDEO_COLUMNS):
        return False
    if not hasattr(dataset, "__len__"):  # streamed: the model now, each row when its batch is encoded
        check_video_model(model, processing_class)
        return True
    rows = undecoded(dataset)
    found = False
    for i in range(len(rows)):
        row = rows[i]
        if row.get("video") is not None and row.get("videos") is not None:
            raise VideoError(f"{name} row {i}: it has both `video` and `videos`; put its videos in one of them")
        images, videos = row_visuals(row)
        if videos and not found:
            check_video_model(model, processing_class)
            found = True
        if not found and not videos:
            continue
        prompt = row.get("prompt")
        for kind, items in (("video", videos), ("image", images)):
            parts = count_parts(prompt, kind)
            if parts != len(items):
                raise VideoError(
                    f"{name} row {i}: the prompt has {parts} {{'type': '{kind}'}} part(s) but the row has "
                    f"{len(items)} {kind}(s)"
                )
        for video in videos:
            try:
                _check_video(i, video, args, row.get("video_fps"))
            except VideoError as err:
                raise VideoError(f"{name} {err}") from None
    return found


def encode_row(i: int, row, processing_class, args, cache: dict | None = None, where: str | None = None) -> dict:
    """Row i's visual tensors: images through the processor's image processor, videos through `encode_video`.
    `cache` (per batch) shares the decoding of a file that several rows (a prompt's generations) use; errors name
    `where` (default "row i"; the trainers pass the sampled row's id or prompt, not its place in the batch)."""
    where = f"row {i}" if where is None else where
    images, videos = row_visuals(row)
    out = {"row": i}
    if images:
        encoded = processing_class.image_processor(images=images, return_tensors="pt")
        out["pixel_values"], out["image_grid_thw"] = encoded["pixel_values"], encoded["image_grid_thw"]
    encoded = []
    for video in videos:
        key = os.fspath(video) if isinstance(video, (str, os.PathLike)) else None
        if cache is not None and key is not None and key in cache:
            encoded.append(cache[key])
            continue
        try:
            frames, fps = load_video(video, args, row.get("video_fps"))
        except (ValueError, FileNotFoundError) as err:
            raise VideoError(f"{where}: {err}") from err
        encoded.append(encode_video(frames, fps, processing_class, args))
        if cache is not None and key is not None:
            cache[key] = encoded[-1]
    if encoded:
        out["video_frames"] = [e["frames"] for e in encoded]  # per video, (T, H, W, 3) uint8 as encoded
        for key in ("pixel_values_videos", "video_grid_thw", "second_per_grid_ts"):
            out[key] = torch.cat([e[key] for e in encoded])
    return out
