"""What the released VRGA code computes where it departs from the paper's rules (docs/vrga-fidelity.md).

Pure functions on one image span; `select.py` calls them when `VRGAConfig(preset="reference")` (or the matching
fields) asks. They reproduce the computation itself, not a summary of its outcome, so the outcome follows the
grid exactly as the released code's does.
"""

from __future__ import annotations

import torch

__all__ = ["RATIO_EPS", "SINK_SCORE", "focus_ratio", "mirrored_focus", "mirrored_positions", "mirrored_threshold"]

RATIO_EPS = 1e-12  # the released code's eps in the focus ratio and its mean
SINK_SCORE = -1e9  # the value the released code writes at the sink positions of the ratio


def focus_ratio(refined: torch.Tensor, sink: torch.Tensor) -> torch.Tensor:
    """refined / mean over the non-sink entries, with the sinks set to -1e9 (what the threshold then reads)."""
    keep = ~sink
    count = keep.sum().to(refined.dtype)
    mean = torch.where(keep, refined, torch.zeros_like(refined)).sum() / (count + RATIO_EPS)
    ratio = refined / (mean + RATIO_EPS)
    return torch.where(sink, torch.full_like(ratio, SINK_SCORE), ratio)


def mirrored_positions(sink: torch.Tensor) -> torch.Tensor:
    """Where `ratio[~indices]` reads for the sink indices i: ~i = -(i + 1) counts from the end, so S - 1 - i."""
    indices = torch.nonzero(sink).flatten()
    return torch.bitwise_not(indices) % sink.numel()  # Python's negative-index semantics, explicitly


def mirrored_threshold(ratio: torch.Tensor, sink: torch.Tensor, focus_std: float) -> torch.Tensor:
    """mean + focus_std * std (Bessel) of the ratio at the mirrored positions; NaN (selects nothing) with < 2."""
    values = ratio[mirrored_positions(sink)]
    if values.numel() < 2:  # the released code crashes without sinks; with one value torch.std is NaN
        return ratio.new_tensor(float("nan"))
    return values.mean() + focus_std * values.std()


def mirrored_focus(refined: torch.Tensor, sink: torch.Tensor, focus_std: float, min_tokens: int) -> torch.Tensor:
    """Bool over the span: ratio > mirrored threshold, or the top `min_tokens` of the ratio (sinks included at
    -1e9) when fewer pass, as the released code selects."""
    ratio = focus_ratio(refined, sink)
    focus = ratio > mirrored_threshold(ratio, sink, focus_std)
    wanted = min(min_tokens, ratio.numel())
    if int(focus.sum()) < wanted:
        focus = torch.zeros_like(focus)
        focus[ratio.topk(wanted).indices] = True
    return focus
