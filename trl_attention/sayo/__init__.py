"""SAYO (arXiv 2602.08241): a region-level visual attention reward, the policy's attention on the ground-truth box
relative to the whole image, entering GRPO's advantages like any other reward.

    regions.py     boxes -> visual-token cells -> sequence positions
    reward.py      RegionAttentionReward, region_attention_score, the `requires_attention` protocol, SAYO's format
    attention.py   CompletionAttention and the trainer mixin that hands the attention to such rewards; image blocks
                   are located through the model family's layout (trl_attention.layouts)
    checks.py      row checks (images, aspect ratio, box nesting, row names, video rows) shared with the distillation
                   collator; video rows are refused (docs/sayo.md, "Video rows")
"""

from .._lazy import lazy_exports

_EXPORTS = {
    "AttentionReward": ".reward",
    "CompletionAttention": ".attention",
    "RegionAttentionReward": ".reward",
    "RewardAttentionMixin": ".attention",
    "attention_reward": ".reward",
    "clip_box": ".regions",
    "completion_attention": ".attention",
    "fixed_grid_token_indices": ".regions",
    "format_reward": ".reward",
    "make_format_reward": ".reward",
    "region_attention_score": ".reward",
    "region_token_indices": ".regions",
    "visual_token_positions": ".regions",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)
