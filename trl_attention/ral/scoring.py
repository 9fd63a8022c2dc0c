"""One no-grad attention capture per generation batch, shared by RAL's p_old and attention-reading rewards.

TRL's `_generate_and_score_completions` runs at most one forward of the policy over the rollouts before the
rewards (the old-logps forward, when TRL needs it). `ScoringCaptureMixin` captures the final-layer attention
inside that forward; when TRL runs none and p_old or a reward needs attention, the mixin runs exactly one forward
itself (`_scoring_forward`). p_old travels in the batch dict as `old_attention_probs`, so TRL's shuffling and
splitting keep it aligned (whatever its trailing dims: (B, C, T), per layer (B, L, C, T), per head (B, H, C, T) or
(B, L, H, C, T)). The reference model's forward is never captured (it is a different model, or the same
one with its adapter disabled).
"""

from __future__ import annotations

import contextlib

import torch

from ..capture import capture_attention
from ..trl_internals import SCORING_FORWARD_KEYS, scores_old_logps
from .group_reference import group_attention_target

__all__ = ["ScoringCaptureMixin", "old_attention"]


def old_attention(caps: dict, layers: list[int]) -> torch.Tensor:
    """(B, C, T) for one RAL layer (the paper's case), (B, L, C, T) for `attn_layers` (in their order); with
    per-head captures (B, H, C, T) and (B, L, H, C, T)."""
    if len(layers) == 1:
        return caps[layers[0]].probs
    return torch.stack([caps[layer].probs for layer in layers], dim=1)


class ScoringCaptureMixin:
    """Mix into a GRPOTrainer subclass before it; call `_init_scoring_capture(...)` in `__init__`. Offers the
    other components `scoring_batch` and `score_rollouts` (ral/composition.py)."""

    def _init_scoring_capture(
        self,
        layer: int,
        needs_old_attention: bool,
        for_rewards: bool,
        old_layers=None,
        old_heads: str = "mean",
        group_reference: bool = False,
    ) -> None:
        """`needs_old_attention`: keep p_old for RAL (of `old_layers`, default [layer]); `for_rewards`: rewards
        read the capture of `layer` (with entropies). `old_heads`: "mean" (head-averaged p_old) or "all"
        (per head, RAL's attn_heads="per_head"); the rewards always get the head average. `group_reference`: put
        RAL's group target (ral/group_reference.py, from `layer`) in every training batch, reuse or not."""
        self._scoring_layer = layer
        self._old_layers = list(old_layers) if old_layers else [layer]
        self._scoring_layers = list(dict.fromkeys([layer, *self._old_layers]))
        self._old_heads = old_heads
        self._needs_old_attention = needs_old_attention
        self._scoring_for_rewards = for_rewards
        self._group_reference = group_reference
        self._scoring_pending = False
        self._scoring = None  # the captured scoring forward of the generation batch in flight (`scoring_batch`)

    # -- capture inside TRL's scoring forward -------------------------------------------------------------------
    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, *args, **kwargs):
        if not self._scoring_pending or model is not self.model or torch.is_grad_enabled():
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, *args, **kwargs
            )
        self._scoring_pending = False  # only the first scoring forward is the rollout policy's
        if self._scoring_for_rewards:
            kwargs["compute_entropy"] = True  # TRL ignores them for old logps; rewards select tokens by entropy
        with contextlib.ExitStack() as stack:
            caps = {
                layer: stack.enter_context(
                    capture_attention(model, num_rows=logits_to_keep, layer=layer, heads=self._layer_heads(layer))
                )
                for layer in self._scoring_layers
            }
            result = super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, *args, **kwargs
            )
        probs = caps[self._scoring_layer].probs
        self._scoring = {
            "probs": probs if self._layer_heads(self._scoring_layer) == "mean" else probs.mean(1),
            "old_probs": old_attention(caps, self._old_layers),
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "rows": logits_to_keep,
            "entropies": result[1],
            "image_grid_thw": kwargs.get("image_grid_thw"),
            "num_images": kwargs.get("num_images"),
        }
        return result

    def _layer_heads(self, layer: int) -> str:
        """The capture's `heads` for a scoring layer: per head only for a p_old layer of a per-head RAL term."""
        return self._old_heads if layer in self._old_layers and self._needs_old_attention else "mean"

    def _generate_and_score_completions(self, inputs):
        if not (self._needs_old_attention or self._scoring_for_rewards or self._group_reference):
            return super()._generate_and_score_completions(inputs)
        self._scoring = None
        self._scoring_pending = scores_old_logps(self)
        try:
            output = super()._generate_and_score_completions(inputs)
        finally:
            self._scoring_pending = False
        scoring, self._scoring = self._scoring, None
        old = self._needs_old_attention and "old_per_token_logps" in output
        group = self._group_reference and self.model.training  # the target is a training-loss input only
        if (old or group) and scoring is None:
            scoring = self._scoring_forward(
                output["prompt_ids"],
                output["prompt_mask"],
                output["completion_ids"],
                output["completion_mask"],
                {key: output.get(key) for key in (*SCORING_FORWARD_KEYS, "visual_inputs")},
            )
        if old:
            output["old_attention_probs"] = scoring["old_probs"]
        if group:
            output["group_attention_target"] = group_attention_target(
                scoring["probs"],
                output["prompt_ids"].size(1),
                output["completion_mask"],
                output["advantages"],
                self.num_generations,
            )
        return output

    @property
    def scoring_batch(self) -> dict | None:
        """The captured scoring forward of the generation batch in flight, None before TRL's scoring forward (and
        outside `_generate_and_score_completions`): `probs` (B, C, T) head-averaged attention of `layer`,
        `old_probs` (p_old), `input_ids`, `attention_mask`, `rows`, `entropies`, `image_grid_thw`, `num_images`.
        Components may add keys (the reward mixin adds Gemma4's `image_position_ids`)."""
        return getattr(self, "_scoring", None)

    def score_rollouts(self, prompt_ids, prompt_mask, completion_ids, completion_mask, forward_kwargs) -> dict:
        """Run the captured scoring forward now, when TRL ran none, and keep it as this generation batch's
        `scoring_batch` (RAL's p_old then reuses it: still one scoring forward per generation batch)."""
        self._scoring = self._scoring_forward(prompt_ids, prompt_mask, completion_ids, completion_mask, forward_kwargs)
        return self._scoring

    @torch.no_grad()
    def _scoring_forward(self, prompt_ids, prompt_mask, completion_ids, completion_mask, forward_kwargs) -> dict:
        """One no-grad forward through TRL's own scoring method, captured; used only when TRL ran none."""
        mode = "train" if self.model.training else "eval"
        batch_size = self.args.per_device_train_batch_size if mode == "train" else self.args.per_device_eval_batch_size
        self._scoring_pending = True
        try:
            self._get_per_token_logps_and_entropies(
                self.model,
                torch.cat([prompt_ids, completion_ids], 1),
                torch.cat([prompt_mask, completion_mask], 1),
                completion_ids.size(1),
                batch_size=batch_size,
                **{k: v for k, v in forward_kwargs.items() if v is not None},
            )
        finally:
            self._scoring_pending = False
        scoring, self._scoring = self._scoring, None
        return scoring
