"""VRGA stage 1 as pure functions on attention rows: head statistics, head selection, refined map, focus tokens.

Everything here works on one sample; `runtime.py` gathers the rows during generation and calls these. Images of a
sample are concatenated in prompt order; sinks and neighbourhoods are taken per image grid, the focus threshold
over all of the sample's image tokens (the question may be about one image of several).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import VRGAConfig

__all__ = [
    "ENTROPY_EPS",
    "FocusSelection",
    "dilate",
    "focus_tokens",
    "head_statistics",
    "image_statistics",
    "refined_map",
    "select_focus",
    "select_heads",
    "sink_mask",
]

ENTROPY_EPS = 1e-8  # inside the log of H_img, as in the paper


def image_statistics(image_probs: torch.Tensor, mean_all: torch.Tensor, valid: torch.Tensor | None = None):
    """R_img, H_img, EFR from the probabilities on the image keys (..., V) and the mean over all keys (...).

    `valid` (..., V) marks real image entries when V is padded. A head with no image mass has R_img = H_img = 0 and
    EFR = inf (never "focused").
    """
    probs = image_probs if valid is None else image_probs * valid
    count = probs.new_tensor(probs.shape[-1]) if valid is None else valid.sum(-1).clamp(min=1).to(probs.dtype)
    mass = probs.sum(-1)
    r_img = mass / count / mean_all
    restricted = probs / mass.clamp(min=torch.finfo(probs.dtype).tiny).unsqueeze(-1)
    h_img = -(restricted * torch.log(restricted + ENTROPY_EPS)).sum(-1)
    efr = torch.where(r_img > 0, h_img / r_img, torch.full_like(r_img, float("inf")))
    return r_img, h_img, efr


def head_statistics(attn: torch.Tensor, image_mask: torch.Tensor):
    """R_img, H_img, EFR, each (L, H), of per-head attention rows `attn` (L, H, T) of one query over T keys.

    R_img = mean over image keys / mean over all keys; H_img = entropy of the attention restricted to the image and
    renormalised (1e-8 inside the log); EFR = H_img / R_img (low: a focused visual head).
    """
    if attn.dim() != 3 or image_mask.shape != attn.shape[-1:]:
        raise ValueError(
            f"attn must be (L, H, T) and image_mask (T,), got {tuple(attn.shape)}, {tuple(image_mask.shape)}"
        )
    return image_statistics(attn[..., image_mask.bool()], attn.mean(-1))


def select_heads(r_img: torch.Tensor, efr: torch.Tensor, config: VRGAConfig):
    """(visual (L, H) bool, background (L, H) bool, used_fallback) from one sample's prefill statistics."""
    flat_r = r_img.flatten().double()
    flat_efr = torch.nan_to_num(efr.flatten().double(), posinf=torch.finfo(torch.float64).max)
    efr_cut = torch.quantile(flat_efr, config.visual_efr_percentile / 100.0)
    r_cut = torch.quantile(flat_r, config.visual_r_percentile / 100.0)
    visual = (flat_efr <= efr_cut) & (flat_r >= r_cut)
    fallback = not bool(visual.any())
    if fallback:
        visual = flat_r >= r_cut
    early = torch.arange(flat_r.numel(), device=flat_r.device) < config.background_pairs
    background = early & (flat_r < config.background_r_max)
    return visual.view(r_img.shape), background.view(r_img.shape), fallback


def sink_mask(grids, kind: str, device=None) -> torch.Tensor:
    """Bool over the concatenated visual tokens of `grids` [(t, h, w) in tokens]: True for attention-sink tokens."""
    parts = []
    for t, h, w in grids:
        grid = torch.zeros(t, h, w, dtype=torch.bool, device=device)
        if "edge" in kind:
            grid[:, 0, :] = True
            grid[:, :, 0] = True
        if "corner" in kind:
            grid[:, :2, :2] = True
        parts.append(grid.flatten())
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.bool, device=device)


def _norm(values: torch.Tensor, keep: torch.Tensor, kind: str) -> torch.Tensor:
    """Norm() over the kept (non-sink) tokens; zero elsewhere and for a constant map."""
    values = torch.where(keep, values, torch.zeros_like(values))
    if not keep.any():
        return values
    if kind == "sum":
        total = values.sum()
        return values / total if total > 0 else values
    low, high = values[keep].min(), values[keep].max()
    if high <= low:
        return torch.zeros_like(values)
    return torch.where(keep, (values - low) / (high - low), torch.zeros_like(values))


def refined_map(maps, visual, background, sink, config: VRGAConfig) -> torch.Tensor:
    """A_refined (V,): Norm(mean of visual heads) - lambda * Norm(mean of background heads), clamped at 0,
    renormalised to sum 1 over the non-sink tokens. `maps` (L, H, V) are the heads' probabilities on the image.

    Degenerate cases (documented in the README): no background head -> no subtraction; a map that the subtraction
    zeroes out -> the visual map alone; a constant visual map -> uniform over the non-sink tokens.
    """
    keep = ~sink
    vis = _norm(maps[visual].mean(0), keep, config.map_norm)
    refined = vis
    if background.any() and config.background_weight > 0:
        refined = (vis - config.background_weight * _norm(maps[background].mean(0), keep, config.map_norm)).clamp(
            min=0
        )
    if refined.sum() <= 0:
        refined = vis
    if refined.sum() <= 0:
        refined = keep.to(maps.dtype)
    return refined / refined.sum().clamp(min=torch.finfo(refined.dtype).tiny)


def focus_tokens(refined: torch.Tensor, sink: torch.Tensor, config: VRGAConfig) -> torch.Tensor:
    """Bool (V,): refined value > mean + focus_std * std over the non-sink tokens; at least min_focus_tokens."""
    keep = ~sink
    values = refined[keep]
    if values.numel() == 0:
        return torch.zeros_like(keep)
    std = values.std() if values.numel() > 1 else values.new_zeros(())
    focus = (refined > values.mean() + config.focus_std * std) & keep
    wanted = min(config.min_focus_tokens, values.numel())
    if int(focus.sum()) < wanted:
        ranked = torch.where(keep, refined, torch.full_like(refined, -float("inf")))
        focus = torch.zeros_like(keep)
        focus[ranked.topk(wanted).indices] = True
    return focus


def dilate(selected: torch.Tensor, grids, neighborhood: str, radius: int) -> torch.Tensor:
    """Add the neighbours of every selected token, per image: a (2r+1)^2 window of the 2-D grid ('2d'; Chebyshev
    distance <= r, per frame) or +-r positions of the image's flattened tokens ('1d'). Never crosses images."""
    if radius == 0:
        return selected.clone()
    parts, start = [], 0
    for t, h, w in grids:
        block = selected[start : start + t * h * w].float()
        start += t * h * w
        size = 2 * radius + 1
        if neighborhood == "2d":
            grown = F.max_pool2d(block.view(t, 1, h, w), size, stride=1, padding=radius)
        else:
            grown = F.max_pool1d(block.view(1, 1, -1), size, stride=1, padding=radius)
        parts.append(grown.flatten() > 0)
    return torch.cat(parts) if parts else selected.clone()


@dataclass
class FocusSelection:
    """Stage 1 of one sample. Token tensors run over the sample's concatenated image tokens."""

    visual: torch.Tensor  # (L, H) bool
    background: torch.Tensor  # (L, H) bool
    used_fallback: bool  # no head passed both visual criteria: R_img percentile alone
    refined: torch.Tensor  # (V,) A_refined, sums to 1
    focus: torch.Tensor  # (V,) bool, T_q
    boosted: torch.Tensor  # (V,) bool, T_q and its neighbours


def select_focus(r_img, efr, maps, grids, config: VRGAConfig) -> FocusSelection:
    """Stage 1 for one sample from its prefill statistics (L, H) and image maps (L, H, V); grids in tokens."""
    visual, background, fallback = select_heads(r_img, efr, config)
    sink = sink_mask(grids, config.sink_exclusion, maps.device)
    refined = refined_map(maps.float(), visual, background, sink, config)
    focus = focus_tokens(refined, sink, config)
    boosted = dilate(focus, grids, config.neighborhood, config.radius)
    return FocusSelection(visual, background, fallback, refined, focus, boosted)
