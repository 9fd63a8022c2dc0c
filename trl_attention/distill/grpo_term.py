"""The teacher terms of `AttentionGRPOTrainer`: the paper's L = L_RL + mu * L_GKD + gamma * L_AttnDistill on the
GRPO rollouts (`gkd_coef`, `attn_distill_coef`).

One no-grad teacher forward per loss step gives the teacher's logits and attention; the student's come from TRL's
loss forward (its backbone output, projected by the LM head, and the capture RAL already runs), so the student
runs no extra forward.
"""

from __future__ import annotations

import contextlib
import warnings

import torch

from ..capture import capture_attention, unwrap_model
from ..trl_internals import (
    TEACHER_FORWARD_KEYS,
    aggregate_like_trl,
    importance_weighted,
    log_global_masked_mean,
    loss_mask,
)
from ..video.grpo import visual_forward_kwargs
from .losses import attention_distill_per_token, token_generalized_jsd
from .teacher import check_teacher, load_teacher, prepare_teacher

__all__ = ["GRPOTeacherMixin"]


class GRPOTeacherMixin:
    """Mix into a GRPOTrainer subclass; call `_init_teacher(teacher_model)` in `__init__` and add
    `teacher_loss(...)` to the loss (see `AttentionGRPOTrainer._compute_loss`)."""

    def _init_teacher(self, teacher_model) -> None:
        self.gkd_coef = float(getattr(self.args, "gkd_coef", 0.0))
        self.attn_distill_coef = float(getattr(self.args, "attn_distill_coef", 0.0))
        self.gkd_beta = float(getattr(self.args, "gkd_beta", 0.5))
        self.teacher_attn_layer = int(getattr(self.args, "teacher_attn_layer", -1))
        self.teacher_model = None
        if teacher_model is None:
            if self.gkd_coef or self.attn_distill_coef:
                raise ValueError(
                    f"gkd_coef={self.gkd_coef} / attn_distill_coef={self.attn_distill_coef} need a teacher_model"
                )
            return
        if not (self.gkd_coef or self.attn_distill_coef):
            warnings.warn("teacher_model is unused: gkd_coef and attn_distill_coef are both 0", UserWarning, 3)
        if isinstance(teacher_model, str):
            teacher_model = load_teacher(teacher_model, getattr(self.args, "teacher_model_init_kwargs", None))
        check_teacher(
            self.model,
            teacher_model,
            self.processing_class,
            bool(self.attn_distill_coef),
            self.attn_layer,
            self.teacher_attn_layer,
        )
        self.teacher_model = prepare_teacher(teacher_model, self)

    def teacher_loss(self, inputs, student_probs, hidden) -> torch.Tensor:
        """mu * GKD token JSD + gamma * attention JSD to the teacher on these rollouts, reduced like TRL's loss."""
        rows = inputs["completion_ids"].size(1)
        mask = loss_mask(inputs).float()
        kwargs = {key: inputs[key] for key in TEACHER_FORWARD_KEYS if inputs.get(key) is not None}
        input_ids = torch.cat([inputs["prompt_ids"], inputs["completion_ids"]], dim=1)
        attention_mask = torch.cat([inputs["prompt_mask"], inputs["completion_mask"]], dim=1)
        if inputs.get("visual_inputs") is not None:  # video batches: the rows' own images and frames
            kwargs.update(visual_forward_kwargs(self.teacher_model, inputs["visual_inputs"], input_ids))
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.no_grad())
            stack.enter_context(self.accelerator.autocast())
            teacher_cap = None
            if self.attn_distill_coef:
                teacher_cap = stack.enter_context(
                    capture_attention(self.teacher_model, num_rows=rows, layer=self.teacher_attn_layer)
                )
            outputs = self.teacher_model(
                input_ids=input_ids, attention_mask=attention_mask, use_cache=False, logits_to_keep=rows + 1, **kwargs
            )
        total = torch.zeros((), device=mask.device)
        if self.gkd_coef:
            states = torch.cat(hidden, dim=0)[:, -rows - 1 : -1]  # positions predicting the completion tokens
            with self.accelerator.autocast():
                student_logits = unwrap_model(self.model).get_output_embeddings()(states)
            # at TRL's sampling temperature: the student's distribution is the policy whose logps GRPO optimises
            per_token = token_generalized_jsd(
                student_logits.float(), outputs.logits[:, :-1].float(), self.gkd_beta, self.temperature
            )
            weighted = importance_weighted(self, per_token, inputs)  # vLLM rollouts: TRL's IS correction
            total = total + self.gkd_coef * aggregate_like_trl(self, weighted, mask, inputs)
            log_global_masked_mean(self, "distill/gkd_jsd", per_token.detach(), mask)
        if self.attn_distill_coef:
            per_token = attention_distill_per_token(student_probs, teacher_cap.probs)
            weighted = importance_weighted(self, per_token, inputs)
            total = total + self.attn_distill_coef * aggregate_like_trl(self, weighted, mask, inputs)
            log_global_masked_mean(self, "attention/distill_jsd", per_token.detach(), mask)
        return total
