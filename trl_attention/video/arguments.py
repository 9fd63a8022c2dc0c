"""Video options shared by the trainers' configs: how many frames a row's video becomes and how large each is.

They mirror the options of Qwen's own video utilities (qwen-vl-utils `fetch_video`): a frame rate or a fixed frame
count, frame-count bounds, per-frame pixel bounds and a total pixel budget for the whole clip, with frame counts
rounded to the temporal patch (2 frames)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..arguments import chain_post_init

__all__ = ["VideoArguments", "check_video_arguments", "video_arguments"]


@dataclass
class VideoArguments:
    """The fields the video path adds to `AttentionGRPOConfig` and `AttentionGKDConfig`."""

    video_fps: float = field(
        default=2.0,
        metadata={
            "help": "Frames per second sampled from a row's video (Qwen's default 2.0). Ignored when video_nframes "
            "is set. A video given as a list of frames is taken at the row's `video_fps` field, or at this rate."
        },
    )
    video_nframes: int | None = field(
        default=None,
        metadata={
            "help": "Sample exactly this many frames per video (rounded to a multiple of 2, the temporal patch); the "
            "RAL paper's Video-R1 stage uses 16. None = use video_fps within video_min_frames..video_max_frames."
        },
    )
    video_min_frames: int = field(default=4, metadata={"help": "Fewest frames sampled at video_fps (Qwen: 4)."})
    video_max_frames: int = field(default=768, metadata={"help": "Most frames sampled at video_fps (Qwen: 768)."})
    video_min_pixels: int = field(
        default=128 * 28 * 28,
        metadata={"help": "Fewest pixels per frame after resizing (Qwen: 128*28*28); sides are multiples of 28."},
    )
    video_max_pixels: int = field(
        default=768 * 28 * 28,
        metadata={"help": "Most pixels per frame after resizing (Qwen: 768*28*28)."},
    )
    video_total_pixels: int | None = field(
        default=None,
        metadata={
            "help": "Pixel budget of a whole clip: each frame gets at most total/nframes*2 pixels (Qwen's rule; "
            "bounds the visual tokens of long videos). None = no clip budget."
        },
    )

    def __post_init__(self):
        check_video_arguments(self)
        chain_post_init(self, VideoArguments)  # the next config's checks, when mixed in


def check_video_arguments(args) -> None:
    """Reject video options that would sample no frame or an empty frame, naming the field."""
    if not (isinstance(args.video_fps, (int, float)) and math.isfinite(args.video_fps) and args.video_fps > 0):
        raise ValueError(f"video_fps must be > 0 and finite, got {args.video_fps!r}")
    if args.video_nframes is not None and args.video_nframes < 1:
        raise ValueError(f"video_nframes must be >= 1 or None, got {args.video_nframes}")
    if not 1 <= args.video_min_frames <= args.video_max_frames:
        raise ValueError(
            f"need 1 <= video_min_frames <= video_max_frames, got {args.video_min_frames} and {args.video_max_frames}"
        )
    if not 0 < args.video_min_pixels <= args.video_max_pixels:
        raise ValueError(
            f"need 0 < video_min_pixels <= video_max_pixels, got {args.video_min_pixels} and {args.video_max_pixels}"
        )
    if args.video_total_pixels is not None and args.video_total_pixels <= 0:
        raise ValueError(f"video_total_pixels must be > 0 or None, got {args.video_total_pixels}")


def video_arguments(args) -> VideoArguments:
    """The video options of any trainer config (a plain GRPOConfig / GKDConfig gets the defaults)."""
    from dataclasses import fields

    return VideoArguments(**{f.name: getattr(args, f.name) for f in fields(VideoArguments) if hasattr(args, f.name)})
