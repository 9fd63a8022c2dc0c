"""RAL (Reinforced Attention Learning): GRPO plus an advantage-weighted JSD on final-layer attention.

L = L_GRPO + attn_coef * masked_mean_t( A_t * JSD(p_theta^t || p_old^t) ), docs/papers.md section 1. Ablations:
`attn_layers` (averaged over layers), `attn_divergence` (KL either way), `attn_heads="per_head"` (the divergence
per query head, averaged over heads; p_old then (B, H, C, T)).

How it rides on TRL without copying its methods:
- p_old: `ScoringCaptureMixin` (scoring.py) captures inside TRL's own old-logps forward. When TRL skips that
  forward (the policy is the rollout policy), p_old is p_theta detached, exactly like TRL's old logps: the term
  is then 0 with 0 gradient, as it is mathematically.
- p_theta: `_compute_loss` wraps TRL's loss forward in a capture (no second forward) and adds the term with the
  normalisation TRL applies to its policy loss for the configured `loss_type` (`trl_internals.aggregate_like_trl`).
- SAYO's attention rewards (`sayo.RewardAttentionMixin`) and the distillation teacher terms
  (`distill.GRPOTeacherMixin`) share the same captures.

Which components the trainer is made of, in which order, what each overrides and shares: composition.py.
"""

from __future__ import annotations

import contextlib
import logging
import warnings

import torch
from trl import GRPOTrainer

from ..capture import capture_attention
from ..capture.models import resolve_attention_layer, visual_masses
from ..distill.losses import backbone_hidden_states
from ..distributed import DistributedChecksCallback, check_capture_supported, freeze_vision_tower
from ..loading import check_local_path
from ..losses import attention_divergence, attention_entropy, attention_policy
from ..papers import model_card_paper
from ..trl_internals import (
    aggregate_like_trl,
    importance_weighted,
    log_global_masked_mean,
    loss_mask,
    reuses_rollouts,
)
from . import composition
from .config import AttentionGRPOConfig
from .group_reference import prompt_attention

__all__ = ["AttentionGRPOTrainer"]

logger = logging.getLogger(__name__)


class AttentionGRPOTrainer(*composition.mixins(), GRPOTrainer):  # the components, in order: composition.py
    """[`~trl.GRPOTrainer`] with RAL's attention-policy loss (Reinforced Attention Learning, arXiv 2602.04884).

    Same constructor as GRPOTrainer; configure with [`AttentionGRPOConfig`] (a plain `GRPOConfig` gets the RAL
    defaults; `attn_coef=0` is GRPO exactly). Rewards marked `requires_attention` (SAYO's `RegionAttentionReward`)
    receive the policy's attention; `teacher_model` (a model, path or hub id) adds the paper's distillation terms.

    Example:

    ```python
    from trl_attention import AttentionGRPOConfig, AttentionGRPOTrainer
    from trl_attention.tiny import build_tiny_vlm, make_grounding_dataset

    model, processor = build_tiny_vlm()
    args = AttentionGRPOConfig(output_dir="out", num_iterations=2, per_device_train_batch_size=4,
                               num_generations=4, max_completion_length=8, max_steps=2, use_cpu=True, report_to=[])
    trainer = AttentionGRPOTrainer(model=model, reward_funcs=lambda completions, **kw: [float(len(c)) for c in
                                   completions], args=args, train_dataset=make_grounding_dataset(8),
                                   processing_class=processor)
    trainer.train()
    ```
    """

    _tag_names = [*GRPOTrainer._tag_names, "trl-attention", "ral"]
    _name = "RAL (AttentionGRPO)"
    _paper = model_card_paper(["ral"], GRPOTrainer._paper)

    def __init__(self, *args, teacher_model=None, **kwargs):
        check_local_path("model", kwargs.get("model", args[0] if args else None))  # named, not a repo-id error
        check_local_path("teacher_model", teacher_model)
        super().__init__(*args, **kwargs)
        self._init_reward_checks()  # a reward's missing column: an error now, not a TypeError at step 1
        self._init_data_checks()  # every image row the processor would refuse: named now, not at its sampling
        self._init_video(self.train_dataset, self.eval_dataset)  # video rows: checked now, not at step 1
        if getattr(self.args, "freeze_vision_tower", False):  # the optimizer is built later, in train()
            freeze_vision_tower(self.model)
        self.attn_coef = float(getattr(self.args, "attn_coef", AttentionGRPOConfig.attn_coef))
        self.attn_layer = int(getattr(self.args, "attn_layer", AttentionGRPOConfig.attn_layer))
        self.attn_layers = list(getattr(self.args, "attn_layers", None) or [self.attn_layer])  # RAL's term
        self.attn_divergence = getattr(self.args, "attn_divergence", "jsd")
        self.attn_heads = getattr(self.args, "attn_heads", "mean")  # "per_head": the term per query head
        self.attn_reference = getattr(self.args, "attn_reference", "rollout")  # "group": group_reference.py
        group = self.attn_coef != 0 and self.attn_reference == "group"
        if group and self.args.per_device_train_batch_size % self.num_generations:
            raise ValueError(
                f"attn_reference='group' needs whole groups on each device: per_device_train_batch_size="
                f"{self.args.per_device_train_batch_size} is not a multiple of num_generations={self.num_generations}"
            )
        # The policy is captured only for RAL's term, an attention reward or attention distillation: otherwise no
        # decoder layer is looked up (plain GRPO on any model GRPOTrainer trains, hybrids included).
        rewards_attention = any(getattr(func, "requires_attention", False) for func in self.reward_funcs)
        self.attn_model_layer = None  # the model's own decoder layer index of `attn_layer`, when captured
        if self.attn_coef != 0 or rewards_attention:  # unsupported model / option: fail now, not at step 1
            check_capture_supported(self.model, self.attn_layer, "attn_layer")
            self.attn_model_layer = resolve_attention_layer(self.model, self.attn_layer, "attn_layer")[1]
            for layer in self.attn_layers if self.attn_coef != 0 else []:
                resolve_attention_layer(self.model, layer, "attn_layers")  # out of range: fail now
        self._init_teacher(teacher_model)
        self.add_callback(DistributedChecksCallback(self))  # batch sizes, ZeRO-3 gathering, teacher size at train()
        self._init_reward_attention()
        self._init_scoring_capture(
            self.attn_layer,
            self.attn_coef != 0 and not group,
            bool(self.attention_reward_indices),
            self.attn_layers,
            old_heads="all" if self.attn_heads == "per_head" else "mean",
            group_reference=group,
        )
        self._set_model_card_methods()
        if self.attn_coef != 0 and not group:
            if not reuses_rollouts(self):
                message = (
                    f"attn_coef={self.attn_coef} has no effect with num_iterations={self.num_iterations}, "
                    f"steps_per_generation={self.args.steps_per_generation} and gradient_accumulation_steps="
                    f"{self.args.gradient_accumulation_steps}: every update uses the parameters that generated the "
                    "rollouts, so p_theta == p_old and dJSD/dp = 0. The term acts with num_iterations > 1 or "
                    "steps_per_generation > gradient_accumulation_steps."
                )
                warnings.warn(message, UserWarning, stacklevel=2)
                logger.warning(message)

    def capture_layers(self) -> dict:
        """{"model": attn_layer, "teacher": teacher_attn_layer} of the models this run captures (the pre-flight
        checks look only at these; {} for plain GRPO)."""
        layers = {}
        distill = self.teacher_model is not None and self.attn_distill_coef != 0
        if self.attn_coef != 0 or self.attention_reward_indices or distill:
            layers["model"] = self.attn_layer
        if distill:
            layers["teacher"] = self.teacher_attn_layer
        return layers

    # -- p_theta: captured inside TRL's loss forward ------------------------------------------------------------
    def _compute_loss(self, model, inputs):
        distill = self.teacher_model is not None and self.attn_distill_coef != 0
        # RAL's layers; attn_layer too for distillation and for the metrics (an `attn_layers` without it: one more row)
        ral_layers = [*self.attn_layers, self.attn_layer] if self.attn_coef != 0 else []
        layers = [*ral_layers, *([self.attn_layer] if distill else [])]
        if not layers and self.teacher_model is None:
            return super()._compute_loss(model, inputs)
        rows = inputs["completion_ids"].size(1)
        per_head = self.attn_heads == "per_head" and self.attn_coef != 0
        heads = {layer: "all" if per_head and layer in self.attn_layers else "mean" for layer in layers}
        with contextlib.ExitStack() as stack:
            caps = {
                layer: stack.enter_context(capture_attention(model, num_rows=rows, layer=layer, heads=heads[layer]))
                for layer in dict.fromkeys(layers)
            }
            hidden = (
                stack.enter_context(backbone_hidden_states(model)) if self.gkd_coef and self.teacher_model else None
            )
            loss = super()._compute_loss(model, inputs)
        if self.teacher_model is not None:
            student = caps[self.attn_layer].probs if distill else None
            if student is not None and heads[self.attn_layer] == "all":  # distillation keeps the head average
                student = student.mean(1)
            loss = loss + self.teacher_loss(inputs, student, hidden).to(loss.dtype)
        if self.attn_coef == 0:
            return loss
        probs = [caps[layer].probs for layer in self.attn_layers]
        old = inputs.get("old_attention_probs")
        if old is not None:
            old = old.to(probs[0].device)
            old = [old] if old.dim() == probs[0].dim() else list(old.unbind(1))  # one layer, or (B, L, ...)
            if len(old) != len(probs) or old[0].shape != probs[0].shape:
                shape = (len(old), *old[0].shape)
                raise RuntimeError(
                    f"old_attention_probs holds {shape}, expected {len(probs)} x {tuple(probs[0].shape)}"
                )
        metrics = caps[self.attn_layer].probs.detach()  # the metrics read attn_layer (its help), head-averaged
        metrics = metrics.mean(1) if heads[self.attn_layer] == "all" else metrics
        mask = loss_mask(inputs).to(probs[0].dtype)
        if self.attn_reference == "group":  # the target already carries the advantages
            per_token = weighted = self._group_divergence(probs[0], inputs)
        else:
            per_token = self._rollout_divergence(probs, old, per_head)
            advantages = inputs["advantages"]
            weighted = (advantages.unsqueeze(1) if advantages.dim() == 1 else advantages) * per_token
        attn_loss = aggregate_like_trl(self, importance_weighted(self, weighted, inputs), mask, inputs)
        self._log_attention_metrics(inputs, metrics, attention_policy(metrics), per_token.detach(), mask)
        return loss + self.attn_coef * attn_loss.to(loss.dtype)

    def _rollout_divergence(self, probs, old, per_head: bool) -> torch.Tensor:
        """(B, C) D(p_theta^t || p_old^t), the paper's reference (averaged over `attn_layers`, per head when
        asked)."""
        batch = probs[0].shape[0]
        if per_head:  # (B, H, C, T) per layer: the policies and divergences of the B * H head rows
            probs = [p.flatten(0, 1) for p in probs]
            old = None if old is None else [p.flatten(0, 1) for p in old]
        p_theta = [attention_policy(p) for p in probs]
        p_old = [p.detach() for p in p_theta] if old is None else [attention_policy(p) for p in old]
        divergences = [attention_divergence(self.attn_divergence, pt, po) for pt, po in zip(p_theta, p_old)]
        if per_head:  # (B * H, C) -> (B, C): the mean over query heads of the per-head divergence
            divergences = [d.unflatten(0, (batch, -1)).mean(1) for d in divergences]
        return torch.stack(divergences).mean(0)  # (B, C): the divergence averaged over the RAL layers

    def _group_divergence(self, probs, inputs) -> torch.Tensor:
        """(B, C) D(p_theta^t on the prompt's keys || q_g), zero for rollouts whose group has no target
        (attn_reference="group", group_reference.py); 0 outside training (the target is built for training
        batches)."""
        target = inputs.get("group_attention_target")
        if target is None:
            return probs.new_zeros(probs.shape[:2])
        target = target.to(probs.device, probs.dtype)
        rows = prompt_attention(probs, target.shape[-1])
        divergence = attention_divergence(self.attn_divergence, rows, target[:, None, :].expand_as(rows))
        return divergence * (target.sum(-1, keepdim=True) > 0)

    def _log_attention_metrics(self, inputs, probs, p_theta, per_token_jsd, mask):
        group = "group_" if self.attn_reference == "group" else ""  # the divergence to q_g, not to p_old
        log_global_masked_mean(self, f"attention/{group}{self.attn_divergence}", per_token_jsd, mask)
        log_global_masked_mean(self, "attention/entropy", attention_entropy(p_theta), mask)
        input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        masses = visual_masses(self.model, probs, input_ids)
        for name, mass in masses.items():  # image / video placeholders; none for text-only models
            log_global_masked_mean(self, f"attention/{name}", mass, mask)

    def _set_model_card_methods(self) -> None:
        """The model card's tags and papers: those of the components active on this run (composition.py)."""
        self._tag_names, self._paper = composition.model_card(self, GRPOTrainer._tag_names, GRPOTrainer._paper)
