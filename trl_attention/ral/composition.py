"""What `AttentionGRPOTrainer` is made of: `trl.GRPOTrainer` and the components below, in MRO order (first listed
runs first; each override does its part and calls `super()`, down to TRL's method).

A component is a mixin class with one setup hook, which the trainer's `__init__` calls after
`GRPOTrainer.__init__`, in `SETUP_ORDER`. `COMPONENTS` states for each one the TRL methods it overrides, the state
it offers the others (public names: no component reads another's private attributes; tests/ral/test_composition.py
checks both against the code), when it is active on a run, and what it adds to the model card then. The model card's
tags and papers are computed from the active components (`model_card`).

A new GRPO loss term or reward joins here: see docs/adding-a-method.md.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..checkpointing import ResumeMixin, RolloutBufferMixin
from ..distill.grpo_term import GRPOTeacherMixin
from ..sayo.attention import RewardAttentionMixin
from ..video.grpo import VideoGRPOMixin
from .data_checks import DataChecksMixin
from .reward_checks import RewardChecksMixin
from .scoring import ScoringCaptureMixin

__all__ = ["COMPONENTS", "RAL_TERM", "SETUP_ORDER", "Component", "active_components", "mixins", "model_card"]


@dataclass(frozen=True)
class Component:
    """One part of `AttentionGRPOTrainer` (see the module docstring)."""

    name: str
    mixin: type | None  # the mixin class; None for the trainer class's own body (the RAL term)
    overrides: tuple[str, ...]  # GRPOTrainer / transformers.Trainer methods it overrides (each calls super())
    provides: tuple[str, ...] = ()  # the public attributes / methods the other components may read
    setup: str = ""  # its setup hook, called by AttentionGRPOTrainer.__init__ after GRPOTrainer.__init__
    active: Callable = lambda trainer: True  # noqa: E731  (whether it changes anything on this run)
    tags: tuple[str, ...] = ()  # model-card tags when active
    papers: tuple[str, ...] = ()  # keys of trl_attention.papers.PAPERS cited when active
    doc: str = ""


def _uses_teacher(trainer) -> bool:
    return getattr(trainer, "teacher_model", None) is not None


COMPONENTS = (
    Component(
        "resume",
        ResumeMixin,
        ("_load_from_checkpoint", "_load_best_model", "_load_optimizer_and_scheduler", "train"),
        doc="the trained weights back on resume for every family; missing optimizer state refused",
    ),
    Component(
        "rollout-buffer",
        RolloutBufferMixin,
        ("_save_checkpoint", "_load_optimizer_and_scheduler"),
        doc="TRL's rollout buffer saved with each checkpoint, so a resume inside a reuse cycle is exact",
    ),
    Component(
        "teacher",
        GRPOTeacherMixin,
        (),
        provides=("teacher_model", "gkd_coef", "attn_distill_coef", "teacher_attn_layer", "teacher_loss"),
        setup="_init_teacher",
        active=_uses_teacher,
        tags=("attention-distillation",),
        papers=("ral",),
        doc="mu * GKD + gamma * attention distillation to a teacher on the rollouts (added by the RAL term's loss)",
    ),
    Component(
        "reward-checks",
        RewardChecksMixin,
        ("_calculate_rewards",),
        setup="_init_reward_checks",
        doc="reward inputs checked at construction (a missing column named); an infinite reward an error",
    ),
    Component(
        "data-checks",
        DataChecksMixin,
        ("_generate_and_score_completions",),
        setup="_init_data_checks",
        doc="every image row checked at construction (first validation_rows) and when sampled, whatever the rewards",
    ),
    Component(
        "reward-attention",
        RewardAttentionMixin,
        (
            "_get_per_token_logps_and_entropies",
            "_generate_and_score_completions",
            "_tokenize_prompts",
            "_calculate_rewards",
        ),
        provides=("attention_reward_indices",),
        setup="_init_reward_attention",
        active=lambda trainer: bool(trainer.attention_reward_indices),
        tags=("sayo",),
        papers=("sayo",),
        doc="rewards marked `requires_attention` (SAYO) get the policy's attention from the scoring capture",
    ),
    Component(
        "scoring",
        ScoringCaptureMixin,
        ("_get_per_token_logps_and_entropies", "_generate_and_score_completions"),
        provides=("scoring_batch", "score_rollouts"),
        setup="_init_scoring_capture",
        doc="one no-grad capture inside TRL's scoring forward per generation batch: p_old, and what rewards read",
    ),
    Component(
        "video",
        VideoGRPOMixin,
        (
            "_generate_and_score_completions",
            "_tokenize_prompts",
            "_compute_loss",
            "_get_per_token_logps_and_entropies",
        ),
        provides=("has_video", "video_args"),
        setup="_init_video",
        active=lambda trainer: bool(getattr(trainer, "has_video", False)),
        doc="video rows carried through generation, scoring and the loss (Qwen2.5-VL)",
    ),
)
RAL_TERM = Component(
    "ral",
    None,
    ("_compute_loss",),
    provides=("attn_coef", "attn_layer", "attn_layers", "capture_layers"),
    active=lambda trainer: trainer.attn_coef != 0,
    tags=("ral",),
    papers=("ral",),
    doc="the RAL term, attn_coef * A_t * JSD(p_theta || p_old), in the trainer class itself (ral/trainer.py)",
)
SETUP_ORDER = (
    "_init_reward_checks",
    "_init_data_checks",
    "_init_video",
    "_init_teacher",
    "_init_reward_attention",
    "_init_scoring_capture",
)
"""The reward inputs first (a missing column is the cheapest error), then the image rows; video next (its dataset checks say which rows
have video, which the attention rewards read); the reward mixin before the scoring capture, which needs to know
whether rewards read attention."""


def mixins() -> tuple[type, ...]:
    """The component classes, in MRO order (`AttentionGRPOTrainer`'s bases before `GRPOTrainer`)."""
    return tuple(component.mixin for component in COMPONENTS)


def active_components(trainer) -> list[Component]:
    """The components that change something on this trainer's run (the RAL term first)."""
    return [c for c in (RAL_TERM, *COMPONENTS) if c.active(trainer)]


def model_card(trainer, base_tags: list, base_paper: dict) -> tuple[list, dict]:
    """(`_tag_names`, `_paper`) for TRL's model card: TRL's tags, "trl-attention" and the active components' tags;
    the active components' papers (deduplicated, the first gives the title) followed by the TRL trainer's own,
    which alone is cited when no component is active (attn_coef=0, no attention reward, no teacher)."""
    from ..papers import model_card_paper

    active = active_components(trainer)
    tags = [*base_tags, "trl-attention", *dict.fromkeys(t for c in active for t in c.tags)]
    papers = list(dict.fromkeys(p for c in active for p in c.papers))
    return tags, model_card_paper(papers, base_paper) if papers else dict(base_paper)
