"""Which prompt tokens VRGA acts on: each sample's image tokens, split per image with their grids (any layout of
`visual.layouts`); video tokens are refused.

VRGA (arXiv 2603.14184) is defined on images: its head statistics, attention sinks (first row / column of a grid)
and focus thresholds read one image's token grid, and its thresholds were set on image benchmarks. A video's tokens
are several grids over time whose sinks and neighbourhoods the paper does not define, and a prompt mixing video
and image tokens would count the video as text in R_img. Rather than boost silently wrong (or, on a video-only
prompt, silently do nothing), a prompt with video tokens is an error (docs/vrga.md, "Video")."""

from __future__ import annotations

import torch

from ..visual.regions import visual_token_positions

__all__ = ["in_window", "layout_grids", "refuse_video", "split_grids"]


def refuse_video(model, input_ids: torch.Tensor) -> None:
    """ValueError naming the first sample of `input_ids` that holds video placeholders (Qwen-VL `<|video_pad|>`)."""
    video_id = getattr(getattr(model, "config", None), "video_token_id", None)
    if video_id is None:
        return
    counts = (input_ids == video_id).sum(-1)
    if not bool(counts.any()):
        return
    b = int(torch.nonzero(counts)[0])
    raise ValueError(
        f"VRGA: sample {b} holds {int(counts[b])} video tokens (id {video_id}); VRGA reweights image tokens only, as "
        "the paper defines it. Generate video prompts with VRGA off (outside `with enable_vrga(...)`, or after "
        "`vrga.disable()`), or give the frames as images (several images per sample are supported)"
    )


def split_grids(input_ids, image_token_id: int, grids, merge: int):
    """Per sample: (list of per-image position tensors, list of (t, h, w) token grids), in prompt order."""
    counts = [] if grids is None else [int(t) * int(h) * int(w) // merge**2 for t, h, w in grids.tolist()]
    out, used = [], 0
    for b, ids in enumerate(input_ids):
        wanted, mine = int((ids == image_token_id).sum()), []
        while wanted > sum(counts[i] for i in mine) and used < len(counts):
            mine.append(used)
            used += 1
        sample_grids = [grids[i].tolist() for i in mine]
        positions = visual_token_positions(ids, image_token_id, sample_grids, merge)
        if positions is None:
            raise ValueError(
                f"VRGA: sample {b} has {wanted} image tokens, which do not match its image_grid_thw rows "
                f"{sample_grids} (merge size {merge}); was the prompt truncated?"
            )
        out.append((positions, [(t, h // merge, w // merge) for t, h, w in sample_grids]))
    if used != len(counts):
        raise ValueError(f"VRGA: image_grid_thw has {len(counts)} images but the input_ids hold only {used}")
    return out


def layout_grids(layout, input_ids: torch.Tensor, recorded) -> torch.Tensor | None:
    """(images, 3) (t, h, w) in patches of a prompt's images, in order, for `layout` (`visual.layouts`): the recorded
    `image_grid_thw` (Qwen), the grids of the recorded `image_position_ids` (Gemma4), or the fixed grid per image
    (LLaVA, Gemma3); None when the prompt has no image tokens."""
    if not (input_ids == layout.token_id).any():
        return None
    if layout.kind == "dynamic":
        return recorded
    if layout.kind == "patches":
        grids = layout.grids({"image_position_ids": recorded}) if recorded is not None else []
    else:
        per_sample = layout.sample_grids(input_ids.cpu(), None)
        bad = [b for b, g in enumerate(per_sample) if g is None]
        if bad:
            raise ValueError(
                f"VRGA: sample {bad[0]}'s image tokens are not whole images of {layout.cells} tokens "
                f"({layout.model}'s fixed grid); was the prompt truncated?"
            )
        grids = [g for sample in per_sample for g in sample]
    return torch.tensor(grids, dtype=torch.long).reshape(-1, 3) if grids else None


def in_window(index: torch.Tensor, valid: torch.Tensor, offset: int):
    """Positions `index` (with `valid`) in a cache that dropped its first `offset` positions (sliding window)."""
    if offset <= 0:
        return index, valid
    shifted = index - offset
    return shifted.clamp(min=0), valid & (shifted >= 0)
