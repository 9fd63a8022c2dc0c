"""Frames -> Qwen2-VL / Qwen2.5-VL video tensors, and the prompt tokenizer of rows that carry videos.

transformers' video processors are torchvision-backed, so machines without torchvision (this project's CI) cannot
build one. `encode_video` is the same computation in NumPy + PIL: each frame resized (bicubic) to sides that are
multiples of patch*merge within the per-frame pixel bounds, rescaled and normalised with the image processor's
constants, then cut into temporal_patch x patch x patch cubes in the merge-window order the vision tower expects
(the image processor's layout, with real frame pairs where it repeats one image). `tokenize_visual_prompts` renders
each prompt with the chat template and expands every image / video placeholder to grid.prod() // merge**2 tokens,
which is what Qwen2-VL / Qwen2.5-VL processors do; images go through the processor's own image processor."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from .frames import FRAME_FACTOR

__all__ = ["encode_video", "frame_size", "tokenize_visual_prompts", "vision_geometry"]


def vision_geometry(processing_class) -> dict:
    """patch, temporal patch, merge size and normalisation of the processor's image processor."""
    ip = getattr(processing_class, "image_processor", None)
    if ip is None or not all(hasattr(ip, k) for k in ("patch_size", "merge_size", "temporal_patch_size")):
        raise ValueError(
            f"{type(processing_class).__name__} has no Qwen-style image processor (patch_size, merge_size, "
            "temporal_patch_size): the video path needs Qwen2-VL / Qwen2.5-VL's processor layout"
        )
    return {
        "patch": int(ip.patch_size),
        "temporal": int(ip.temporal_patch_size),
        "merge": int(ip.merge_size),
        "mean": np.asarray(ip.image_mean, dtype=np.float32),
        "std": np.asarray(ip.image_std, dtype=np.float32),
        "rescale": float(getattr(ip, "rescale_factor", 1 / 255)),
    }


def frame_size(height: int, width: int, nframes: int, args, factor: int) -> tuple[int, int]:
    """Resized (height, width) of a clip's frames: Qwen's smart resize within the per-frame bounds, the clip's
    total budget spread over its frames."""
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize

    max_pixels = args.video_max_pixels
    if args.video_total_pixels is not None:
        max_pixels = max(min(max_pixels, args.video_total_pixels / nframes * FRAME_FACTOR), args.video_min_pixels)
    return smart_resize(height, width, factor=factor, min_pixels=args.video_min_pixels, max_pixels=int(max_pixels))


def encode_video(frames: np.ndarray, sample_fps: float, processing_class, args) -> dict:
    """{"pixel_values_videos": (N, C*t*p*p) float32, "video_grid_thw": (1, 3), "second_per_grid_ts": (1,)}."""
    geo = vision_geometry(processing_class)
    p, t, m = geo["patch"], geo["temporal"], geo["merge"]
    if len(frames) % t:  # like Qwen's processors: repeat the last frame up to a whole temporal patch
        frames = np.concatenate([frames, np.repeat(frames[-1:], t - len(frames) % t, axis=0)])
    height, width = frame_size(frames.shape[1], frames.shape[2], len(frames), args, p * m)
    if (height, width) != frames.shape[1:3]:
        frames = np.stack([np.asarray(Image.fromarray(f).resize((width, height), Image.BICUBIC)) for f in frames])
    x = (frames.astype(np.float32) * geo["rescale"] - geo["mean"]) / geo["std"]  # (T, H, W, C)
    x = x.transpose(0, 3, 1, 2)  # (T, C, H, W)
    gt, gh, gw = len(x) // t, height // p, width // p
    x = x.reshape(gt, t, x.shape[1], gh // m, m, p, gw // m, m, p)
    x = x.transpose(0, 3, 6, 4, 7, 2, 1, 5, 8)  # (gt, gh/m, gw/m, m, m, C, t, p, p): the merge-window order
    return {
        "frames": frames,  # the resized uint8 frames the tensors were cut from (for heatmaps)
        "pixel_values_videos": torch.from_numpy(np.ascontiguousarray(x.reshape(gt * gh * gw, -1))),
        "video_grid_thw": torch.tensor([[gt, gh, gw]]),
        "second_per_grid_ts": torch.tensor([t / sample_fps]),
    }


def _expand(text: str, token: str, counts: list[int], what: str, row: int) -> str:
    pieces = text.split(token)
    if len(pieces) - 1 != len(counts):
        raise ValueError(
            f"row {row}: its prompt has {len(pieces) - 1} {what} placeholder(s) but the row has {len(counts)} "
            f"{what}(s): give each {what} a {{'type': '{what}'}} part in the prompt"
        )
    out = pieces[0]
    for count, piece in zip(counts, pieces[1:]):
        out += token * count + piece
    return out


def tokenize_visual_prompts(
    processing_class, prompts, visuals, image_token: str, video_token: str, template_kwargs=None
) -> tuple[list[list[int]], dict]:
    """Prompt ids (one list per row) and the generation fields of a batch whose rows carry images and videos.

    `visuals[i]` is row i's `{"images": [...], "video": {encode_video output, merged}}` (see rows.encode_row)."""
    geo = vision_geometry(processing_class)
    merge = geo["merge"] ** 2
    texts = []
    for i, (prompt, vis) in enumerate(zip(prompts, visuals, strict=True)):
        text = processing_class.apply_chat_template(
            prompt, tokenize=False, add_generation_prompt=True, **(template_kwargs or {})
        )
        image_counts = (
            [int(g.prod()) // merge for g in vis["image_grid_thw"]] if vis.get("image_grid_thw") is not None else []
        )
        video_counts = (
            [int(g.prod()) // merge for g in vis["video_grid_thw"]] if vis.get("video_grid_thw") is not None else []
        )
        text = _expand(text, image_token, image_counts, "image", vis.get("row", i))
        texts.append(_expand(text, video_token, video_counts, "video", vis.get("row", i)))
    tokenizer = getattr(processing_class, "tokenizer", processing_class)
    prompt_ids = tokenizer(texts)["input_ids"]
    image_id, video_id = tokenizer.convert_tokens_to_ids([image_token, video_token])
    fields = merge_visuals(visuals)
    fields["mm_token_type_ids"] = [
        [1 if t == image_id else 2 if t == video_id else 0 for t in ids] for ids in prompt_ids
    ]
    return prompt_ids, fields


VISUAL_TENSOR_KEYS = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts")


def merge_visuals(visuals) -> dict:
    """Concatenate rows' visual tensors in row order (the layout a Qwen-VL forward takes for a batch)."""
    merged = {}
    for key in VISUAL_TENSOR_KEYS:
        parts = [v[key] for v in visuals if v.get(key) is not None]
        if parts:
            merged[key] = torch.cat(parts)
    return merged
