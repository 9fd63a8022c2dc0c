"""RAL (Reinforced Attention Learning): GRPO plus an advantage-weighted JSD on final-layer attention.

L = L_GRPO + attn_coef * masked_mean_t( A_t * JSD(p_theta^t || p_old^t) ), PAPERS.md section 1.

How it rides on TRL without copying its methods:
- p_old: `ScoringCaptureMixin` (scoring.py) captures inside TRL's own old-logps forward; the rows travel in the
  batch dict as `old_attention_probs`, so TRL's shuffling and splitting keep them aligned. When TRL skips that
  forward (the policy is the rollout policy), p_old is p_theta detached, exactly like TRL's old logps: the term
  is then 0 with 0 gradient, as it is mathematically.
- p_theta: `_compute_loss` wraps TRL's loss forward in a capture (no second forward) and adds the term with the
  normalisation TRL applies to its policy loss for the configured `loss_type`.

The paper's combined objective, with an optional `teacher_model`: L = L_RL + mu * L_GKD + gamma * L_AttnDistill on the
GRPO rollouts (`gkd_coef`, `attn_distill_coef`). One no-grad teacher forward per loss step gives the teacher's
logits and attention; the student's come from TRL's loss forward (its backbone output, projected by the LM head).
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from dataclasses import dataclass, field

import torch
from trl import GRPOConfig, GRPOTrainer

from .capture import AttentionCapture, capture_attention, unwrap_model
from .distill import (
    attention_distill_per_token,
    backbone_hidden_states,
    check_same_tokenization,
    load_teacher,
    prepare_teacher,
    token_generalized_jsd,
)
from .distributed import DistributedChecksCallback, freeze_vision_tower
from .losses import attention_entropy, attention_policy, jsd
from .scoring import ScoringCaptureMixin

__all__ = ["AttentionGRPOConfig", "AttentionGRPOTrainer"]

logger = logging.getLogger(__name__)

# Batch keys the teacher forward takes as they are (mm/token type ids already span prompt + completion).
_TEACHER_KEYS = (
    "pixel_values", "image_grid_thw", "pixel_attention_mask", "image_sizes", "token_type_ids", "mm_token_type_ids",
    "spatial_shapes", "image_position_ids",
)  # fmt: skip


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
        gkd_coef (`float`, *optional*, defaults to `0.0`):
            Weight mu of the token-level generalized JSD to the `teacher_model` on the rollouts (needs a teacher).
        attn_distill_coef (`float`, *optional*, defaults to `0.0`):
            Weight gamma of the attention-distillation JSD to the `teacher_model` on the rollouts (needs a teacher).
        gkd_beta (`float`, *optional*, defaults to `0.5`):
            Interpolation beta of the generalized JSD (GKD's `beta`: 0 forward KL, 1 reverse KL).
        teacher_attn_layer (`int`, *optional*, defaults to `-1`):
            Teacher decoder layer providing the target attention.
        teacher_model_init_kwargs (`dict`, *optional*):
            Keyword arguments for loading `teacher_model` when it is given as a path or hub id.
        freeze_vision_tower (`bool`, *optional*, defaults to `False`):
            Freeze the vision encoder and projector before the optimizer is built (RAL trains only the LM).
    """

    attn_coef: float = field(
        default=1.0,
        metadata={"help": "Weight lambda_attn of the RAL attention-policy loss; 0 reproduces GRPO exactly."},
    )
    attn_layer: int = field(
        default=-1,
        metadata={"help": "Decoder layer whose head-averaged attention is the attention policy (-1 = last)."},
    )
    gkd_coef: float = field(
        default=0.0,
        metadata={"help": "Weight mu of the token-level generalized JSD to teacher_model on the rollouts."},
    )
    attn_distill_coef: float = field(
        default=0.0,
        metadata={"help": "Weight gamma of the attention-distillation JSD to teacher_model on the rollouts."},
    )
    gkd_beta: float = field(
        default=0.5, metadata={"help": "beta of the generalized JSD (0 = forward KL, 1 = reverse KL), as in GKD."}
    )
    teacher_attn_layer: int = field(
        default=-1, metadata={"help": "Teacher decoder layer whose attention is the distillation target."}
    )
    teacher_model_init_kwargs: dict | None = field(
        default=None, metadata={"help": "from_pretrained kwargs for a teacher_model given as a path or hub id."}
    )
    freeze_vision_tower: bool = field(
        default=False,
        metadata={
            "help": "Freeze the vision encoder and projector before the optimizer is built (train the LM only)."
        },
    )


class AttentionGRPOTrainer(ScoringCaptureMixin, GRPOTrainer):
    """[`~trl.GRPOTrainer`] with RAL's attention-policy loss, and attention for rewards that ask for it
    (`trl_attention.rewards`). Same constructor; configure with [`AttentionGRPOConfig`] (a plain `GRPOConfig`
    gets the RAL defaults). `teacher_model` (a model, path or hub id) adds the paper's distillation terms."""

    def __init__(self, *args, teacher_model=None, **kwargs):
        super().__init__(*args, **kwargs)
        if getattr(self.args, "freeze_vision_tower", False):  # the optimizer is built later, in train()
            freeze_vision_tower(self.model)
        self.attn_coef = float(getattr(self.args, "attn_coef", AttentionGRPOConfig.attn_coef))
        self.attn_layer = int(getattr(self.args, "attn_layer", AttentionGRPOConfig.attn_layer))
        self._init_teacher(teacher_model)
        self.add_callback(DistributedChecksCallback(self))  # batch sizes, ZeRO-3 gathering, teacher size at train()
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

    def _init_teacher(self, teacher_model) -> None:
        self.gkd_coef = float(getattr(self.args, "gkd_coef", 0.0))
        self.attn_distill_coef = float(getattr(self.args, "attn_distill_coef", 0.0))
        self.gkd_beta = float(getattr(self.args, "gkd_beta", 0.5))
        self.teacher_attn_layer = int(getattr(self.args, "teacher_attn_layer", -1))
        self.teacher_model = None
        if teacher_model is None:
            if self.gkd_coef or self.attn_distill_coef:
                raise ValueError(f"gkd_coef={self.gkd_coef} / attn_distill_coef={self.attn_distill_coef} need a "
                                 "teacher_model")  # fmt: skip
            return
        if not (self.gkd_coef or self.attn_distill_coef):
            warnings.warn("teacher_model is unused: gkd_coef and attn_distill_coef are both 0", UserWarning, 3)
        if isinstance(teacher_model, str):
            teacher_model = load_teacher(teacher_model, getattr(self.args, "teacher_model_init_kwargs", None))
        check_same_tokenization(self.model, teacher_model, self.processing_class)
        if self.attn_distill_coef:
            if unwrap_model(teacher_model) is unwrap_model(self.model):
                raise ValueError("attention distillation needs a teacher that is a different model from the policy")
            AttentionCapture(self.model, layer=self.attn_layer)
            AttentionCapture(teacher_model, layer=self.teacher_attn_layer)
        self.teacher_model = prepare_teacher(teacher_model, self)

    # -- p_theta: captured inside TRL's loss forward ------------------------------------------------------------
    def _compute_loss(self, model, inputs):
        capture = self.attn_coef != 0 or (self.teacher_model is not None and self.attn_distill_coef != 0)
        if not capture and self.teacher_model is None:
            return super()._compute_loss(model, inputs)
        rows = inputs["completion_ids"].size(1)
        with contextlib.ExitStack() as stack:
            cap = (
                stack.enter_context(capture_attention(model, num_rows=rows, layer=self.attn_layer))
                if capture
                else None
            )
            hidden = (
                stack.enter_context(backbone_hidden_states(model)) if self.gkd_coef and self.teacher_model else None
            )
            loss = super()._compute_loss(model, inputs)
        if self.teacher_model is not None:
            loss = loss + self._teacher_loss(inputs, None if cap is None else cap.probs, hidden).to(loss.dtype)
        if self.attn_coef == 0:
            return loss
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

    def _teacher_loss(self, inputs, student_probs, hidden) -> torch.Tensor:
        """mu * GKD token JSD + gamma * attention JSD to the teacher on these rollouts, reduced like TRL's loss."""
        rows = inputs["completion_ids"].size(1)
        mask = inputs["completion_mask"]
        mask = (mask * inputs["tool_mask"] if "tool_mask" in inputs else mask).float()
        kwargs = {key: inputs[key] for key in _TEACHER_KEYS if inputs.get(key) is not None}
        input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.no_grad())
            stack.enter_context(self.accelerator.autocast())
            teacher_cap = None
            if self.attn_distill_coef:
                teacher_cap = stack.enter_context(
                    capture_attention(self.teacher_model, num_rows=rows, layer=self.teacher_attn_layer)
                )
            outputs = self.teacher_model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False,
                                         logits_to_keep=rows + 1, **kwargs)  # fmt: skip
        mode = "train" if self.model.training else "eval"
        total = torch.zeros((), device=mask.device)
        if self.gkd_coef:
            states = torch.cat(hidden, dim=0)[:, -rows - 1 : -1]  # positions predicting the completion tokens
            with self.accelerator.autocast():
                student_logits = unwrap_model(self.model).get_output_embeddings()(states)
            per_token = token_generalized_jsd(student_logits.float(), outputs.logits[:, :-1].float(), self.gkd_beta)
            total = total + self.gkd_coef * self._aggregate_like_trl(per_token, mask, inputs)
            self._metrics[mode]["distill/gkd_jsd"].append(self._global_masked_mean(per_token.detach(), mask))
        if self.attn_distill_coef:
            per_token = attention_distill_per_token(student_probs, teacher_cap.probs)
            total = total + self.attn_distill_coef * self._aggregate_like_trl(per_token, mask, inputs)
            self._metrics[mode]["attention/distill_jsd"].append(self._global_masked_mean(per_token.detach(), mask))
        return total

    def _global_masked_mean(self, values: torch.Tensor, mask: torch.Tensor) -> float:
        totals = torch.stack([(values * mask).sum(), mask.sum()])
        totals = self.accelerator.reduce(totals, reduction="sum")
        return (totals[0] / totals[1].clamp(min=1.0)).item()

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
            return self._global_masked_mean(values, mask)

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
