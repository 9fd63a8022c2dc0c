"""SAYO (arXiv 2602.08241): a region-level visual attention reward, the policy's attention on the ground-truth box
relative to the whole image, entering GRPO's advantages like any other reward.

    reward.py      RegionAttentionReward, region_attention_score, the `requires_attention` protocol, SAYO's format
    attention.py   CompletionAttention and the trainer mixin that hands the attention to such rewards

Rows, images, boxes and the model family's image layout are read through the shared floor, `trl_attention.visual`;
video rows are refused (docs/sayo.md, "Video rows").
"""

from .._lazy import lazy_exports

_EXPORTS = {
    "AttentionReward": ".reward",
    "CompletionAttention": ".attention",
    "RegionAttentionReward": ".reward",
    "RewardAttentionMixin": ".attention",
    "attention_reward": ".reward",
    "completion_attention": ".attention",
    "format_reward": ".reward",
    "make_format_reward": ".reward",
    "region_attention_score": ".reward",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
