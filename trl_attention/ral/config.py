"""`AttentionGRPOConfig`: TRL's `GRPOConfig` plus RAL's fields and the GRPO teacher terms' fields."""

from __future__ import annotations

from dataclasses import dataclass

from trl import GRPOConfig

from .arguments import GRPO_ARGUMENTS

__all__ = ["AttentionGRPOConfig"]


@dataclass
class AttentionGRPOConfig(*reversed(GRPO_ARGUMENTS), GRPOConfig):  # Video-, GRPOTeacher-, RALArguments
    r"""
    Configuration class for [`AttentionGRPOTrainer`]: every [`~trl.GRPOConfig`] field, plus the RAL term.

    Parameters:
        attn_coef (`float`, *optional*, defaults to `1.0`):
            Weight lambda_attn of the attention-policy loss. `0.0` gives GRPO exactly (no capture runs). The
            term only acts when rollouts are reused across optimiser steps (`num_iterations > 1`, or
            `steps_per_generation > gradient_accumulation_steps`); see the warning issued otherwise.
        attn_layer (`int`, *optional*, defaults to `-1`):
            Attention layer whose head-averaged attention forms the attention policy; negative values count from
            the last. It indexes the softmax-attention layers (hybrid decoders' Mamba / linear-attention layers are
            skipped); errors also give the model's own decoder layer index.
        gkd_coef (`float`, *optional*, defaults to `0.0`):
            Weight mu of the token-level generalized JSD to the `teacher_model` on the rollouts (needs a teacher).
        attn_distill_coef (`float`, *optional*, defaults to `0.0`):
            Weight gamma of the attention-distillation JSD to the `teacher_model` on the rollouts (needs a teacher).
        gkd_beta (`float`, *optional*, defaults to `0.5`):
            Interpolation beta of the generalized JSD (GKD's `beta`: 0 forward KL, 1 reverse KL).
        teacher_attn_layer (`int`, *optional*, defaults to `-1`):
            Teacher decoder layer providing the target attention.
        teacher_model_init_kwargs (`dict`, *optional*):
            Keyword arguments for loading `teacher_model` when it is given as a path or hub id.
        freeze_vision_tower (`bool`, *optional*, defaults to `False`):
            Freeze the vision encoder and projector before the optimizer is built (RAL trains only the LM).
        video_fps, video_nframes, video_min_frames, video_max_frames, video_min_pixels, video_max_pixels,
        video_total_pixels:
            How rows' videos are sampled and resized (Qwen's video options; see [`~trl_attention.video.VideoArguments`]).
    """
