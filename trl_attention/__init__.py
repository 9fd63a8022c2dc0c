"""trl_attention: train and steer multimodal LLMs on where they look, as drop-in TRL trainers and tools.

One package per method: `ral` (AttentionGRPOTrainer), `sayo` (region attention reward), `distill`
(AttentionGKDTrainer and the GRPO teacher terms), `vrga` (training-free visual head reweighting), all on the one
capture mechanism in `capture` (+ kernels in `ops`). Names below are imported on first use, so
`import trl_attention` does not import TRL or transformers.
"""

__version__ = "0.2.0.dev0"

from ._lazy import lazy_exports

_EXPORTS = {
    "AttentionCapture": ".capture",
    "AttentionGKDConfig": ".distill",
    "AttentionGKDTrainer": ".distill",
    "AttentionGRPOConfig": ".ral",
    "AttentionGRPOTrainer": ".ral",
    "CaptureError": ".capture",
    "CompletionAttention": ".sayo",
    "RegionAttentionReward": ".sayo",
    "VRGAConfig": ".vrga",
    "attention_entropy": ".losses",
    "attention_policy": ".losses",
    "attention_reward": ".sayo",
    "capture_attention": ".capture",
    "enable_vrga": ".vrga",
    "find_decoder_layers": ".capture",
    "jsd": ".losses",
    "region_attention_score": ".sayo",
    "region_token_indices": ".visual",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

from . import _compat  # noqa: E402, F401  (0.1.0 module paths, e.g. trl_attention.layouts, keep importing)
