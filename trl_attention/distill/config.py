"""`AttentionGKDConfig`: TRL's `GKDConfig` plus the attention-distillation fields and the video options."""

from __future__ import annotations

from dataclasses import dataclass

from ..trl_internals import GKDConfig
from .arguments import GKD_ARGUMENTS

__all__ = ["AttentionGKDConfig"]


@dataclass
class AttentionGKDConfig(*reversed(GKD_ARGUMENTS), GKDConfig):  # VideoArguments, AttentionDistillArguments
    r"""
    Configuration class for [`AttentionGKDTrainer`]: every [`~trl.experimental.gkd.GKDConfig`] field, plus the
    attention-distillation term.

    Parameters:
        attn_distill_coef (`float`, *optional*, defaults to `0.5`):
            Weight gamma of the attention-distillation loss (the paper searched 0.05, 0.5, 1.0). `0.0` (with
            `gkd_coef=1.0`) is GKDTrainer exactly; no capture runs.
        gkd_coef (`float`, *optional*, defaults to `1.0`):
            Weight mu of GKD's token-level generalized JSD. `0.0` trains on attention alone.
        attn_layer (`int`, *optional*, defaults to `-1`):
            Student decoder layer whose head-averaged attention is distilled (-1 = last).
        teacher_attn_layer (`int`, *optional*, defaults to `-1`):
            Teacher decoder layer providing the target attention (-1 = last).
        freeze_vision_tower (`bool`, *optional*, defaults to `False`):
            Freeze the student's vision encoder and projector before the optimizer is built.
        video_fps, video_nframes, video_min_frames, video_max_frames, video_min_pixels, video_max_pixels,
        video_total_pixels:
            How rows' videos are sampled and resized (Qwen's video options; see
            [`~trl_attention.video.VideoArguments`]).
    """
