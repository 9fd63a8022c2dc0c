"""VRGA stage 1 as pure functions on attention rows: head statistics, head selection, refined map, focus tokens.

Everything here works on one sample; `runtime.py` gathers the rows during generation and calls these. Images of a
sample are concatenated in prompt order; sinks and neighbourhoods are taken per image grid, the stated focus
threshold over all of the sample's image tokens (the question may be about one image of several), the mirrored one
(`reference.py`) per image. An image's span is its tokens, preceded by its <|vision_start|> key ("slot") when
`image_span="vision_start"`; maps and sinks run over spans, focus and boosted tokens over image tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .config import VRGAConfig
from .reference import mirrored_focus

__all__ = [
    "ENTROPY_EPS",
    "ROW_ENTROPY_EPS",
    "FocusSelection",
    "boosted_heads",
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
ROW_ENTROPY_EPS = 1e-12  # inside the log of the released code's stage-2 entropy of the unrenormalised row


def image_statistics(image_probs, mean_all, valid=None, entropy: str = "image"):
    """R_img, H_img, EFR from the probabilities on the image keys (..., V) and the mean over all keys (...).

    `valid` (..., V) marks real image entries when V is padded. A head with no image mass has R_img = H_img = 0 and
    EFR = inf (never "focused"). entropy="row": H_img = -sum p log(p + 1e-12) of the row's own probabilities on the
    image keys, not renormalised (the released code's stage-2 boost test).
    """
    probs = image_probs if valid is None else image_probs * valid
    count = probs.new_tensor(probs.shape[-1]) if valid is None else valid.sum(-1).clamp(min=1).to(probs.dtype)
    mass = probs.sum(-1)
    r_img = mass / count / mean_all
    if entropy == "row":
        h_img = -(probs * torch.log(probs + ROW_ENTROPY_EPS)).sum(-1)
    else:
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


def boosted_heads(r_img: torch.Tensor, h_img: torch.Tensor, config: VRGAConfig) -> torch.Tensor:
    """Stage 2's test at one decoding step: R_img > boost_r_min and R_img > boost_r_over_h * H_img."""
    return (r_img > config.boost_r_min) & (r_img > config.boost_r_over_h * h_img)


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


def _sink_order(frames: int, h: int, w: int, kind: str) -> list:
    """Sink cells in the released code's order: top-left 2x2, rest of the first row, rest of the first column."""
    cells = [(r, c) for r in range(min(h, 2)) for c in range(min(w, 2))]
    cells += [(0, c) for c in range(2, w)] + [(r, 0) for r in range(2, h)]
    edge, corner = "edge" in kind, "corner" in kind
    cells = [(r, c) for r, c in cells if (edge and (r == 0 or c == 0)) or (corner and r < 2 and c < 2)]
    return [f * h * w + r * w + c for f in range(frames) for r, c in cells]


def sink_mask(grids, kind: str, device=None, fraction: float = 1.0, slot: bool = False) -> torch.Tensor:
    """Bool over the concatenated spans of `grids` [(t, h, w) in tokens]: True for attention-sink tokens.

    With `slot`, each span starts with the image's <|vision_start|> key and the grid is laid over span indices,
    so its cells land one token early (what the released code's slice does). The list, in `_sink_order`, is cut to
    int(fraction * span length) entries.
    """
    parts = []
    for t, h, w in grids:
        span = t * h * w + int(slot)
        order = _sink_order(t, h, w, kind)
        if fraction < 1.0:
            order = order[: int(fraction * span)]
        mask = torch.zeros(span, dtype=torch.bool, device=device)
        mask[order] = True
        parts.append(mask)
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

    Degenerate cases (documented in docs/vrga.md): no background head -> no subtraction; a map that the subtraction
    zeroes out -> the visual map alone; a constant visual map -> uniform over the non-sink tokens.
    map_norm="sum_all" is the released code's: each map divided by its sum over the whole span, sinks kept in the
    map (they are only left out of the focus statistics), and the result renormalised over the whole span.
    """
    keep = ~sink
    if config.map_norm == "sum_all":
        return _refined_sum_all(maps, visual, background, config.background_weight)
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


def _refined_sum_all(maps, visual, background, weight: float) -> torch.Tensor:
    tiny = torch.finfo(maps.dtype).tiny
    vis = maps[visual].mean(0)
    refined = vis
    if background.any() and weight > 0:
        bg = maps[background].mean(0)
        refined = (vis / vis.sum().clamp(min=tiny) - weight * bg / bg.sum().clamp(min=tiny)).clamp(min=0)
        if refined.sum() <= 0:  # the released code divides 0 by 0 here; the visual map is kept instead
            refined = vis
    return refined / refined.sum().clamp(min=tiny)


def focus_tokens(refined: torch.Tensor, sink: torch.Tensor, config: VRGAConfig, spans=None) -> torch.Tensor:
    """Bool (V,): refined value > mean + focus_std * std over the non-sink tokens; at least min_focus_tokens.

    focus_threshold="mirrored": the released code's statistics, per span (`spans`: lengths; None: one span), in
    `reference.mirrored_focus`.
    """
    if config.focus_threshold == "mirrored":
        parts, start = [], 0
        for length in spans if spans is not None else [refined.numel()]:
            block = slice(start, start + length)
            parts.append(mirrored_focus(refined[block], sink[block], config.focus_std, config.min_focus_tokens))
            start += length
        return torch.cat(parts) if parts else torch.zeros_like(sink)
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
    refined: torch.Tensor  # (V,) A_refined on the image tokens (sums to 1 over the span)
    focus: torch.Tensor  # (V,) bool, T_q
    boosted: torch.Tensor  # (V,) bool, the neighbourhood centres (T_q from min_centre_index on) and their neighbours


def select_focus(r_img, efr, maps, grids, config: VRGAConfig, slot: bool = False) -> FocusSelection:
    """Stage 1 for one sample from its prefill statistics (L, H) and span maps (L, H, S); grids in tokens.

    `slot`: each image's span starts with its <|vision_start|> key. That key is never reported nor boosted.
    """
    visual, background, fallback = select_heads(r_img, efr, config)
    sink = sink_mask(grids, config.sink_exclusion, maps.device, config.sink_fraction, slot)
    refined = refined_map(maps.float(), visual, background, sink, config)
    spans = [t * h * w + int(slot) for t, h, w in grids]
    focus = focus_tokens(refined, sink, config, spans)
    in_span = torch.cat([torch.arange(n, device=maps.device) for n in spans]) if spans else sink.long()
    image = in_span >= int(slot)
    centres = (focus & (in_span >= config.min_centre_index))[image]
    boosted = dilate(centres, grids, config.neighborhood, config.radius)
    return FocusSelection(visual, background, fallback, refined[image], focus[image], boosted)
