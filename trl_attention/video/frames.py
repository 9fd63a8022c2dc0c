"""A row's video -> sampled frames, the way Qwen's video utilities sample them.

A video is a list of frames (PIL images or HxWx3 arrays, taken at the row's frame rate) or a file path decoded with
PyAV (the `video` extra). PyAV because it is the decoder transformers itself falls back on, ships manylinux / macOS
/ Windows wheels with FFmpeg inside (no system FFmpeg, no CUDA, no torch-version coupling as torchcodec has) and is
actively maintained (decord is not). Frames are sampled uniformly: `video_nframes` of them, or `video_fps` per
second within `video_min_frames..video_max_frames`, always a multiple of the temporal patch (2) and never more
than the video has."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

__all__ = [
    "FRAME_FACTOR",
    "frame_count",
    "load_video",
    "probe",
    "probe_size",
    "row_fps",
    "sample_frame_indices",
    "write_video",
]

FRAME_FACTOR = 2  # Qwen2-VL / Qwen2.5-VL's temporal patch: frames are consumed in pairs


def _av():
    try:
        import av
    except ImportError as err:  # pragma: no cover - exercised where the extra is missing
        raise ImportError(
            "decoding video files needs PyAV: pip install 'trl-attention[video]' (or pass frames instead of a path)"
        ) from err
    return av


def sample_frame_indices(total: int, native_fps: float, args) -> list[int]:
    """Indices of the frames to keep (Qwen's rule); ValueError when the video has fewer frames than asked for."""
    if total < 1:
        raise ValueError("the video has no frames")
    if args.video_nframes is not None:
        nframes = max(FRAME_FACTOR, round(args.video_nframes / FRAME_FACTOR) * FRAME_FACTOR)
    else:
        lo = math.ceil(args.video_min_frames / FRAME_FACTOR) * FRAME_FACTOR
        hi = math.floor(min(args.video_max_frames, total) / FRAME_FACTOR) * FRAME_FACTOR
        wanted = total / native_fps * args.video_fps
        nframes = math.floor(min(max(wanted, lo), hi) / FRAME_FACTOR) * FRAME_FACTOR
    if not FRAME_FACTOR <= nframes <= total:
        raise ValueError(
            f"the video has {total} frames; sampling needs {max(nframes, FRAME_FACTOR)} (video_nframes="
            f"{args.video_nframes}, video_fps={args.video_fps}, video_min_frames={args.video_min_frames}): give "
            f"longer videos or lower the frame options"
        )
    return np.linspace(0, total - 1, nframes).round().astype(int).tolist()


def _as_frame(frame) -> np.ndarray:
    if isinstance(frame, dict):  # datasets keeps frames of a `videos` column (lists of lists) as {"bytes", "path"}
        from ..visual.checks import open_image

        frame = open_image(frame, "a video frame")
    array = np.asarray(frame.convert("RGB")) if hasattr(frame, "convert") else np.asarray(frame)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4):
        raise ValueError(f"a frame must be a PIL image or an HxWx3 array, got shape {array.shape}")
    return array[..., :3] if array.shape[-1] != 1 else np.repeat(array, 3, axis=-1)


def _to_uint8(frames: list) -> list:
    """uint8 frames; float (or wider int) frames are scaled once per clip, not per frame: a clip whose values all
    lie in [0, 1] is 0..1, any other in 0..255 (a per-frame rule read the near-black frames of a 0..255 clip as 0..1
    and made them white). Values outside those ranges are an error, not clipped."""
    if all(f.dtype == np.uint8 for f in frames):
        return frames
    low, high = min(float(f.min()) for f in frames), max(float(f.max()) for f in frames)
    if not (np.isfinite(low) and np.isfinite(high)) or low < 0 or high > 255:
        raise ValueError(f"frame values must lie in [0, 1] or [0, 255], got [{low:g}, {high:g}]")
    scale = 255.0 if high <= 1.0 else 1.0
    return [np.clip(np.rint(f * scale), 0, 255).astype(np.uint8) for f in frames]


def row_fps(fps, default: float) -> float:
    """The rate of a row's frames: its `video_fps` when given (a finite number > 0, else a ValueError: 0 silently
    became the default), else `default`."""
    if fps is None:
        return float(default)
    if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
        raise ValueError(f"the row's video_fps must be a finite number > 0, got {fps!r}")
    return float(fps)


def probe_size(path) -> tuple[int, int]:
    """(width, height) of a video file's frames, from its header."""
    av = _av()
    with av.open(os.fspath(path)) as container:
        context = container.streams.video[0].codec_context
        return int(context.width), int(context.height)


def probe(path) -> tuple[int, float]:
    """(frames, native fps) of a video file: from its header, counted by decoding when the container does not say."""
    av = _av()
    with av.open(os.fspath(path)) as container:
        stream = container.streams.video[0]
        fps = float(stream.average_rate or stream.guessed_rate or 1.0)
        total = int(stream.frames) or sum(1 for _ in container.decode(stream))
    return total, fps


def frame_count(path) -> int:
    """Frames in a video file (see `probe`)."""
    return probe(path)[0]


def _decode(path, args) -> tuple[np.ndarray, float]:
    """Only the sampled frames are converted and kept: a long clip is never held in memory whole."""
    total, native_fps = probe(path)
    keep = sample_frame_indices(total, native_fps, args)
    wanted: dict[int, int] = {}
    for index in keep:
        wanted[index] = wanted.get(index, 0) + 1
    frames = []
    av = _av()
    with av.open(os.fspath(path)) as container:
        for i, frame in enumerate(container.decode(container.streams.video[0])):
            if i in wanted:
                frames += [frame.to_ndarray(format="rgb24")] * wanted[i]
            if len(frames) == len(keep):
                break
    if len(frames) != len(keep):
        raise ValueError(f"video file {os.fspath(path)!r} decoded to fewer frames than its header's {total}")
    return np.stack(frames), len(keep) / total * native_fps


def load_video(video, args, fps: float | None = None) -> tuple[np.ndarray, float]:
    """`(frames, sample_fps)`: the sampled (T, H, W, 3) uint8 frames and their rate (for M-RoPE's temporal
    positions). `video` is a path or a sequence of frames; `fps` is the frames' own rate (default `video_fps`)."""
    if isinstance(video, (str, Path)):
        if not Path(video).is_file():
            raise FileNotFoundError(f"video file {os.fspath(video)!r} does not exist")
        return _decode(video, args)
    frames = [_as_frame(f) for f in video]
    shapes = {f.shape for f in frames}
    if len(shapes) > 1:
        raise ValueError(f"the frames of a video must share one size, got {sorted(shapes)}")
    frames = _to_uint8(frames)
    native_fps = row_fps(fps, args.video_fps)
    keep = sample_frame_indices(len(frames), native_fps, args)
    return np.stack([frames[i] for i in keep]), len(keep) / len(frames) * native_fps


def write_video(path, frames, fps: float = 2.0) -> str:
    """Write frames (T, H, W, 3 uint8; even sides) to an MPEG-4 file with PyAV (tests, synthetic data)."""
    av = _av()
    frames = _to_uint8([_as_frame(f) for f in frames])
    height, width = frames[0].shape[:2]
    with av.open(os.fspath(path), mode="w") as container:
        stream = container.add_stream("mpeg4", rate=int(round(fps)))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.bit_rate = 4_000_000
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return os.fspath(path)
