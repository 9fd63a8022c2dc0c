"""RAL (Reinforced Attention Learning): GRPO plus an advantage-weighted JSD on final-layer attention.

L = L_GRPO + attn_coef * masked_mean_t( A_t * JSD(p_theta^t || p_old^t) ), PAPERS.md section 1.

How it rides on TRL without copying its methods:
- p_old: `ScoringCaptureMixin` (scoring.py) captures inside TRL's own old-logps forward; the rows travel in the
  batch dict as `old_attention_probs`, so TRL's shuffling and splitting keep them aligned. When TRL skips that
  forward (the policy is the rollout policy), p_old is p_theta detached, exactly like TRL's old logps: the term
  is then 0 with 0 gradient, as it is mathematically.
- p_theta: `_compute_loss` wraps TRL's loss forward in a capture (no second forward) and adds the term with the
  normalisation TRL applies to its policy loss for the configured `loss_type`.
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field

import torch
from trl import GRPOConfig, GRPOTrainer

from .capture import AttentionCapture, capture_attention, unwrap_model
from .losses import attention_entropy, attention_policy, jsd
from .scoring import ScoringCaptureMixin

__all__ = ["AttentionGRPOConfig", "AttentionGRPOTrainer"]

logger = logging.getLogger(__name__)


@dataclass
class AttentionGRPOConfig(GRPOConfig):
    r"""
    Configuration class for [`AttentionGRPOTrainer`]: every [`~trl.GRPOConfig`] field, plus the RAL term.

    Parameters:
        attn_coef (`float`, *optional*, defaults to `1.0`):
            Weight lambda_attn of the attention-policy loss. `0.0` gives GRPO exactly (no capture runs). The
            term only acts when rollouts are reused across optimiser steps (`num_iterations > 1`, or
            `steps_per_generation > gradient_accumulation_steps`); see the warning issued otherwise.
        attn_layer (`int`, *optional*, defaults to `-1`):
            Decoder layer whose head-averaged attention forms the attention policy. Negative values count from
            the last layer.
    """

    attn_coef: float = field(
        default=1.0,
        metadata={"help": "Weight lambda_attn of the RAL attention-policy loss; 0 reproduces GRPO exactly."},
    )
    attn_layer: int = field(
        default=-1,
        metadata={"help": "Decoder layer whose head-averaged attention is the attention policy (-1 = last)."},
    )


class AttentionGRPOTrainer(ScoringCaptureMixin, GRPOTrainer):
    """[`~trl.GRPOTrainer`] with RAL's attention-policy loss, and attention for rewards that ask for it
    (`trl_attention.rewards`). Same constructor; configure with [`AttentionGRPOConfig`] (a plain `GRPOConfig`
    gets the RAL defaults)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.attn_coef = float(getattr(self.args, "attn_coef", AttentionGRPOConfig.attn_coef))
        self.attn_layer = int(getattr(self.args, "attn_layer", AttentionGRPOConfig.attn_layer))
        self._init_scoring_capture(self.attn_layer, needs_old_attention=self.attn_coef != 0)
        if self.attn_coef != 0:
            AttentionCapture(self.model, layer=self.attn_layer)  # fail now, not mid-training, on unsupported models
            generate_every = self.args.steps_per_generation * self.num_iterations
            if self.args.gradient_accumulation_steps % generate_every == 0:
                message = (
                    f"attn_coef={self.attn_coef} has no effect with num_iterations={self.num_iterations}, "
                    f"steps_per_generation={self.args.steps_per_generation} and gradient_accumulation_steps="
                    f"{self.args.gradient_accumulation_steps}: every update uses the parameters that generated the "
                    "rollouts, so p_theta == p_old and dJSD/dp = 0. The term acts with num_iterations > 1 or "
                    "steps_per_generation > gradient_accumulation_steps."
                )
                warnings.warn(message, UserWarning, stacklevel=2)
                logger.warning(message)

    # -- p_theta: captured inside TRL's loss forward ------------------------------------------------------------
    def _compute_loss(self, model, inputs):
        if self.attn_coef == 0:
            return super()._compute_loss(model, inputs)
        with capture_attention(model, num_rows=inputs["completion_ids"].size(1), layer=self.attn_layer) as cap:
            loss = super()._compute_loss(model, inputs)
        probs = cap.probs
        p_theta = attention_policy(probs)
        old = inputs.get("old_attention_probs")
        if old is not None and old.shape != probs.shape:
            raise RuntimeError(f"old_attention_probs has shape {tuple(old.shape)}, expected {tuple(probs.shape)}")
        p_old = p_theta.detach() if old is None else attention_policy(old.to(probs.device))
        per_token_jsd = jsd(p_theta, p_old)  # (B, C)
        advantages = inputs["advantages"]
        advantages = advantages.unsqueeze(1) if advantages.dim() == 1 else advantages
        mask = inputs["completion_mask"]
        mask = mask * inputs["tool_mask"] if "tool_mask" in inputs else mask
        attn_loss = self._aggregate_like_trl(advantages * per_token_jsd, mask.to(per_token_jsd.dtype), inputs)
        self._log_attention_metrics(inputs, probs.detach(), p_theta.detach(), per_token_jsd.detach(), mask)
        return loss + self.attn_coef * attn_loss.to(loss.dtype)

    def _aggregate_like_trl(self, per_token: torch.Tensor, mask: torch.Tensor, inputs) -> torch.Tensor:
        """Reduce a (B, C) per-token term exactly as GRPOTrainer reduces its policy loss for `self.loss_type`."""
        training = self.model.training
        accumulation = self.current_gradient_accumulation_steps if training else 1.0
        masked = per_token * mask
        if self.loss_type in ("grpo", "sapo"):
            return (masked.sum(-1) / mask.sum(-1).clamp(min=1.0)).mean() / accumulation
        if self.loss_type == "bnpo":
            return masked.sum() / mask.sum().clamp(min=1.0) / accumulation
        if self.loss_type == "dr_grpo":
            return masked.sum() / (per_token.size(0) * self.max_completion_length) / accumulation
        if self.loss_type in ("cispo", "dapo", "vespo"):
            normalizer = inputs["num_items_in_batch"].clamp(min=1.0) / self.accelerator.num_processes
            if training:
                normalizer = normalizer * self.current_gradient_accumulation_steps / self.args.steps_per_generation
            return masked.sum() / normalizer
        if self.loss_type == "luspo":
            return masked.sum(-1).mean() / accumulation
        raise ValueError(f"AttentionGRPOTrainer does not know how TRL normalises loss_type={self.loss_type!r}")

    def _log_attention_metrics(self, inputs, probs, p_theta, per_token_jsd, mask):
        mode = "train" if self.model.training else "eval"
        mask = mask.float()

        def global_masked_mean(values):
            totals = torch.stack([(values * mask).sum(), mask.sum()])
            totals = self.accelerator.reduce(totals, reduction="sum")
            return (totals[0] / totals[1].clamp(min=1.0)).item()

        self._metrics[mode]["attention/jsd"].append(global_masked_mean(per_token_jsd))
        self._metrics[mode]["attention/entropy"].append(global_masked_mean(attention_entropy(p_theta)))
        visual = self._visual_token_mask(torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1))
        if visual is not None:
            image_mass = (probs * visual[:, None, :].to(probs.dtype)).sum(-1)
            self._metrics[mode]["attention/image_mass"].append(global_masked_mean(image_mass))

    def _visual_token_mask(self, input_ids: torch.Tensor) -> torch.Tensor | None:
        """Positions holding image/video placeholder tokens; None for text-only models."""
        config = unwrap_model(self.model).config
        ids = [getattr(config, name, None) for name in ("image_token_id", "video_token_id")]
        ids = [i for i in ids if i is not None]
        if not ids:
            return None
        return torch.isin(input_ids, torch.tensor(ids, device=input_ids.device))
