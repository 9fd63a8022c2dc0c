"""`VRGAConfig`: every threshold of VRGA (docs/papers.md section 3), with two presets of the rules around them.

`preset="reference"` (default) reproduces what the authors' released code computes, quirks included;
`preset="paper"` follows the rules as the paper states them. A preset only fills the fields left at None, so an
explicitly given field always wins: `VRGAConfig(preset="reference", neighborhood="2d")`. The resolution happens
once, at construction (docs/vrga-fidelity.md lists every difference and its measured effect).
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "BOOST_ENTROPIES",
    "FOCUS_THRESHOLDS",
    "IMAGE_SPANS",
    "MAP_NORMS",
    "MODES",
    "NEIGHBORHOODS",
    "PRESETS",
    "QUERIES",
    "R_IMG_KEYS",
    "SINK_EXCLUSIONS",
    "VRGAConfig",
]

NEIGHBORHOODS = ("2d", "1d")
SINK_EXCLUSIONS = ("edge+corner", "edge", "corner", "none")
MAP_NORMS = ("minmax", "sum", "sum_all")
MODES = ("correction", "explicit")
FOCUS_THRESHOLDS = ("stated", "mirrored")
IMAGE_SPANS = ("image", "vision_start")
QUERIES = ("last", "question")
R_IMG_KEYS = ("visible", "prompt")
BOOST_ENTROPIES = ("image", "row")

# The fields each preset governs (docs/vrga-fidelity.md: one row per entry).
PRESETS = {
    "reference": {
        "focus_threshold": "mirrored",
        "map_norm": "sum_all",
        "image_span": "vision_start",
        "query": "question",
        "boost_entropy": "row",
        "background_pairs": 63,
        "sink_fraction": 0.2,
        "neighborhood": "1d",
        "r_img_keys": "prompt",
        "min_centre_index": 3,
    },
    "paper": {
        "focus_threshold": "stated",
        "map_norm": "minmax",
        "image_span": "image",
        "query": "last",
        "boost_entropy": "image",
        "background_pairs": 64,
        "sink_fraction": 1.0,
        "neighborhood": "2d",
        "r_img_keys": "visible",
        "min_centre_index": 0,
    },
}

_FROM_PRESET = " None: from the preset (reference: {reference}; paper: {paper})."


def _preset_help(name: str, text: str) -> str:
    return text + _FROM_PRESET.format(**{p: repr(values[name]) for p, values in PRESETS.items()})


def _governed(name: str, text: str):
    return field(default=None, metadata={"help": _preset_help(name, text)})


@dataclass
class VRGAConfig:
    """Visual Region-Guided Attention (arXiv 2603.14184): stage 1 picks focus tokens at prefill, stage 2 boosts them.

    Fields left at None take the preset's value in __post_init__ (see the module docstring).
    """

    preset: str = field(
        default="reference",
        metadata={
            "help": "'reference': what the authors' released code computes (quirks included); 'paper': the rules as "
            "the paper states them. Sets the fields left at None; an explicitly given field wins."
        },
    )
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
    background_pairs: int | None = _governed(
        "background_pairs",
        "Stage 1: background heads are searched among the first N (layer, head) pairs, layer-major (the released "
        "code's counter makes its '< 64' test keep 63).",
    )
    background_weight: float = field(
        default=1.0, metadata={"help": "Stage 1: lambda in Norm(visual map) - lambda * Norm(background map)."}
    )
    map_norm: str | None = _governed(
        "map_norm",
        "Stage 1: Norm() of the head-mean maps: 'minmax' (to [0, 1] over non-sinks), 'sum' (to a distribution over "
        "non-sinks) or 'sum_all' (divided by the sum over all image keys, sinks included).",
    )
    sink_exclusion: str = field(
        default="edge+corner",
        metadata={
            "help": "Attention-sink tokens left out of the focus map, per image grid: 'edge' (first row and column), "
            "'corner' (top-left 2x2), 'edge+corner' (both, the reference's list), 'none'."
        },
    )
    sink_fraction: float | None = _governed(
        "sink_fraction",
        "Stage 1: the sink list (top-left 2x2, rest of the first row, rest of the first column) is cut to "
        "int(sink_fraction * image keys) tokens; 1.0 keeps it whole.",
    )
    image_span: str | None = _governed(
        "image_span",
        "Image keys of the statistics and of the sink grid: 'image' (the image tokens) or 'vision_start' (from the "
        "<|vision_start|> token before them, one key early, as the released code slices).",
    )
    focus_threshold: str | None = _governed(
        "focus_threshold",
        "Stage 1: 'stated' computes mean + focus_std * std over the non-sink tokens; 'mirrored' over the positions "
        "S-1-i of the sink indices i (the released code indexes with ~indices, a bitwise NOT), per image.",
    )
    focus_std: float = field(
        default=0.6, metadata={"help": "Stage 1: focus tokens have refined value > mean + focus_std * std."}
    )
    min_focus_tokens: int = field(
        default=10, metadata={"help": "Stage 1: keep at least this many focus tokens (the top of the refined map)."}
    )
    query: str | None = _governed(
        "query",
        "Stage 1 query row: 'last' (the last prompt token) or 'question' (vision_end + question tokens - 1, the "
        "user text after the image taken as the question, up to the end-of-turn token).",
    )
    q_end_pos: int | None = field(
        default=None,
        metadata={
            "help": "Stage 1: the query row is q_end_pos - 1 (position in the unpadded prompt), the meaning of the "
            "released eval_qwen.py's q_end_pos; overrides `query`. None: from `query`."
        },
    )
    r_img_keys: str | None = _governed(
        "r_img_keys",
        "Stage 1: R_img's mean over all keys counts the keys the query row can see ('visible') or every prompt key "
        "('prompt', future keys as zeros).",
    )
    neighborhood: str | None = _governed(
        "neighborhood", "Neighbours of a focus token: '2d' (square window of the token grid) or '1d' (flattened)."
    )
    radius: int = field(
        default=2,
        metadata={"help": "Neighbourhood radius: +-radius rows and columns ('2d') or flattened positions ('1d')."},
    )
    min_centre_index: int | None = _governed(
        "min_centre_index",
        "Stage 2: only focus tokens at index >= this in the image span are neighbourhood centres (the others can "
        "still be boosted as neighbours).",
    )
    boost_r_min: float = field(
        default=0.6, metadata={"help": "Stage 2: a head is boosted at a decoding step when R_img > this value ..."}
    )
    boost_r_over_h: float = field(default=0.2, metadata={"help": "Stage 2: ... and R_img > this factor * H_img."})
    boost_entropy: str | None = _governed(
        "boost_entropy",
        "Stage 2: H_img of the boost test, 'image' (the image part renormalised) or 'row' (-sum p log(p + 1e-12) "
        "over the image keys of the full-row probabilities).",
    )
    mode: str = field(
        default="correction",
        metadata={
            "help": "'correction': keep the kernel's output, add gamma * focus-token correction to boosted heads "
            "(fast); 'explicit': recompute every decoding layer from the reweighted rows (reference-style)."
        },
    )

    def __post_init__(self):
        if self.preset not in PRESETS:
            raise ValueError(f"VRGAConfig.preset={self.preset!r}; choose one of {', '.join(PRESETS)}")
        for name, value in PRESETS[self.preset].items():
            if getattr(self, name) is None:
                setattr(self, name, value)
        choices = {"map_norm": MAP_NORMS, "sink_exclusion": SINK_EXCLUSIONS, "neighborhood": NEIGHBORHOODS}
        choices.update(mode=MODES, focus_threshold=FOCUS_THRESHOLDS, image_span=IMAGE_SPANS, query=QUERIES)
        choices.update(r_img_keys=R_IMG_KEYS, boost_entropy=BOOST_ENTROPIES)
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise ValueError(f"VRGAConfig.{name}={getattr(self, name)!r}; choose one of {', '.join(allowed)}")
        for name in ("visual_efr_percentile", "visual_r_percentile"):
            if not 0.0 <= getattr(self, name) <= 100.0:
                raise ValueError(f"VRGAConfig.{name}={getattr(self, name)} must be in [0, 100]")
        if not 0.0 <= self.sink_fraction <= 1.0:
            raise ValueError(f"VRGAConfig.sink_fraction={self.sink_fraction} must be in [0, 1]")
        for name in ("gamma", "background_weight", "focus_std"):
            if getattr(self, name) < 0:
                raise ValueError(f"VRGAConfig.{name}={getattr(self, name)} must be >= 0")
        for name in ("background_pairs", "min_focus_tokens", "radius", "min_centre_index"):
            if getattr(self, name) < 0 or int(getattr(self, name)) != getattr(self, name):
                raise ValueError(f"VRGAConfig.{name}={getattr(self, name)} must be an integer >= 0")
        if self.q_end_pos is not None and (int(self.q_end_pos) != self.q_end_pos or self.q_end_pos < 1):
            raise ValueError(f"VRGAConfig.q_end_pos={self.q_end_pos} must be an integer >= 1")
