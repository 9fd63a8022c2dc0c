"""`VRGAConfig`: every threshold of VRGA (PAPERS.md section 3) with the reference code's value as default."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["MAP_NORMS", "MODES", "NEIGHBORHOODS", "SINK_EXCLUSIONS", "VRGAConfig"]

NEIGHBORHOODS = ("2d", "1d")
SINK_EXCLUSIONS = ("edge+corner", "edge", "corner", "none")
MAP_NORMS = ("minmax", "sum")
MODES = ("correction", "explicit")


@dataclass
class VRGAConfig:
    """Visual Region-Guided Attention (arXiv 2603.14184): stage 1 picks focus tokens at prefill, stage 2 boosts them.

    Defaults are the reference code's values; the fields marked "open" are this project's decisions (README, VRGA).
    """

    gamma: float = field(
        default=0.5,
        metadata={"help": "Boost: boosted heads multiply the probability of focus tokens (+ neighbours) by 1+gamma."},
    )
    visual_efr_percentile: float = field(
        default=5.0,
        metadata={"help": "Stage 1: visual heads have EFR <= this percentile over all (layer, head) pairs."},
    )
    visual_r_percentile: float = field(
        default=95.0,
        metadata={"help": "Stage 1: visual heads also have R_img >= this percentile (alone if no head passes both)."},
    )
    background_r_max: float = field(
        default=0.01, metadata={"help": "Stage 1: background heads have R_img below this value."}
    )
    background_pairs: int = field(
        default=64,
        metadata={
            "help": "Stage 1: background heads are searched among the first N (layer, head) pairs, layer-major."
        },
    )
    background_weight: float = field(
        default=1.0, metadata={"help": "Stage 1: lambda in Norm(visual map) - lambda * Norm(background map)."}
    )
    map_norm: str = field(
        default="minmax",
        metadata={"help": "Open: Norm() of the head-mean maps, 'minmax' (to [0, 1]) or 'sum' (to a distribution)."},
    )
    sink_exclusion: str = field(
        default="edge+corner",
        metadata={
            "help": "Attention-sink tokens left out of the focus map, per image grid: 'edge' (first row and column), "
            "'corner' (top-left 2x2), 'edge+corner' (both, the reference's list), 'none'."
        },
    )
    focus_std: float = field(
        default=0.6, metadata={"help": "Stage 1: focus tokens have refined value > mean + focus_std * std."}
    )
    min_focus_tokens: int = field(
        default=10, metadata={"help": "Stage 1: keep at least this many focus tokens (the top of the refined map)."}
    )
    neighborhood: str = field(
        default="2d",
        metadata={"help": "Open: neighbours of a focus token in the 2-D token grid ('2d', square window) or '1d'."},
    )
    radius: int = field(
        default=2,
        metadata={"help": "Neighbourhood radius: +-radius rows and columns ('2d') or flattened positions ('1d')."},
    )
    boost_r_min: float = field(
        default=0.6, metadata={"help": "Stage 2: a head is boosted at a decoding step when R_img > this value ..."}
    )
    boost_r_over_h: float = field(default=0.2, metadata={"help": "Stage 2: ... and R_img > this factor * H_img."})
    mode: str = field(
        default="correction",
        metadata={
            "help": "'correction': keep the kernel's output, add gamma * focus-token correction to boosted heads "
            "(fast); 'explicit': recompute every decoding layer from the reweighted rows (reference-style)."
        },
    )

    def __post_init__(self):
        choices = {"map_norm": MAP_NORMS, "sink_exclusion": SINK_EXCLUSIONS, "neighborhood": NEIGHBORHOODS}
        choices["mode"] = MODES
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"VRGAConfig.{name}={getattr(self, name)!r}; choose one of {', '.join(allowed)}")
        for name in ("visual_efr_percentile", "visual_r_percentile"):
            if not 0.0 <= getattr(self, name) <= 100.0:
                raise ValueError(f"VRGAConfig.{name}={getattr(self, name)} must be in [0, 100]")
        for name in ("gamma", "background_weight", "focus_std"):
            if getattr(self, name) < 0:
                raise ValueError(f"VRGAConfig.{name}={getattr(self, name)} must be >= 0")
        for name in ("background_pairs", "min_focus_tokens", "radius"):
            if getattr(self, name) < 0 or int(getattr(self, name)) != getattr(self, name):
                raise ValueError(f"VRGAConfig.{name}={getattr(self, name)} must be an integer >= 0")
