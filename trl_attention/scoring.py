"""One no-grad attention capture per generation batch, shared by RAL's p_old and attention-reading rewards.

TRL's `_generate_and_score_completions` runs at most one forward of the policy over the rollouts before the
rewards (the old-logps forward, when TRL needs it). `ScoringCaptureMixin` captures the final-layer attention
inside that forward; when TRL runs none and a reward needs attention, the mixin runs exactly one forward itself,
from the prompt ids and multimodal fields TRL tokenised for generation. The reference model's forward is never
captured (it is a different model, or the same one with its adapter disabled).
"""

from __future__ import annotations

import functools

import torch
from trl.trainer.utils import pad

from .capture import AttentionCapture, capture_attention, unwrap_model
from .regions import visual_token_positions
from .rewards import CompletionAttention

__all__ = ["ScoringCaptureMixin"]

# Keys of a TRL batch that `_get_per_token_logps_and_entropies` takes as model inputs.
_FORWARD_KEYS = (
    "pixel_values", "image_grid_thw", "num_images", "pixel_attention_mask", "spatial_shapes", "num_tiles",
    "image_sizes", "token_type_ids", "mm_token_type_ids", "image_position_ids",
)  # fmt: skip


class ScoringCaptureMixin:
    """Mix into a GRPOTrainer subclass before it; call `_init_scoring_capture(layer)` at the end of `__init__`."""

    def _init_scoring_capture(self, layer: int, needs_old_attention: bool) -> None:
        self._scoring_layer = layer
        self._needs_old_attention = needs_old_attention
        self._scoring_pending = False
        self._scoring = None  # stash of the last captured scoring forward
        self._scoring_prompts = None  # (prompt_ids, images, multimodal_fields) as TRL tokenised them
        self._reward_attention = None
        self._attention_reward_indices = [
            i for i, func in enumerate(self.reward_funcs) if getattr(func, "requires_attention", False)
        ]
        if not self._attention_reward_indices:
            return
        if self.rollout_func is not None or self.environment_factories is not None or self.tools:
            raise ValueError(
                "attention rewards need TRL's default single-turn generation path (no rollout_func, "
                "environment_factory or tools)"
            )
        AttentionCapture(self.model, layer=layer)  # unsupported model / attention implementation: fail now
        for index in self._attention_reward_indices:
            func = self.reward_funcs[index]
            for dataset in (self.train_dataset, self.eval_dataset):
                if dataset is not None and hasattr(func, "validate") and not isinstance(dataset, dict):
                    func.validate(dataset)
            self.reward_funcs[index] = self._with_attention(func)

    def _with_attention(self, func):
        @functools.wraps(func)
        def reward(*args, **kwargs):
            return func(*args, attention=self._reward_attention, **kwargs)

        reward.requires_attention = True
        return reward

    def _trl_scores_old_logps(self) -> bool:
        """TRL's own condition for running the old-logps forward (see GRPOTrainer._generate_and_score_completions)."""
        generate_every = self.args.steps_per_generation * self.num_iterations
        return self.args.gradient_accumulation_steps % generate_every != 0 or bool(
            self.use_vllm and self.vllm_importance_sampling_correction
        )

    # -- capture inside TRL's scoring forward -------------------------------------------------------------------
    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, *args, **kwargs):
        if not self._scoring_pending or model is not self.model or torch.is_grad_enabled():
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, *args, **kwargs
            )
        self._scoring_pending = False  # only the first scoring forward is the rollout policy's
        if self._attention_reward_indices:
            kwargs["compute_entropy"] = True  # TRL ignores them for old logps; rewards select tokens by entropy
        with capture_attention(model, num_rows=logits_to_keep, layer=self._scoring_layer) as cap:
            result = super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, *args, **kwargs
            )
        self._scoring = {
            "probs": cap.probs, "input_ids": input_ids, "attention_mask": attention_mask, "rows": logits_to_keep,
            "entropies": result[1], "image_grid_thw": kwargs.get("image_grid_thw"),
            "num_images": kwargs.get("num_images"),
        }  # fmt: skip
        return result

    def _tokenize_prompts(self, prompts):
        result = super()._tokenize_prompts(prompts)
        self._scoring_prompts = result if self._attention_reward_indices else None
        return result

    def _generate_and_score_completions(self, inputs):
        if not (self._needs_old_attention or self._attention_reward_indices):
            return super()._generate_and_score_completions(inputs)
        self._scoring = None
        self._scoring_pending = self._trl_scores_old_logps()
        try:
            output = super()._generate_and_score_completions(inputs)
        finally:
            self._scoring_pending = False
            self._scoring_prompts = None
        scoring, self._scoring = self._scoring, None
        if self._needs_old_attention and "old_per_token_logps" in output:
            if scoring is None:
                scoring = self._scoring_forward(
                    output["prompt_ids"],
                    output["prompt_mask"],
                    output["completion_ids"],
                    output["completion_mask"],
                    {key: output.get(key) for key in _FORWARD_KEYS},
                )
            output["old_attention_probs"] = scoring["probs"]
        return output

    @torch.no_grad()
    def _scoring_forward(self, prompt_ids, prompt_mask, completion_ids, completion_mask, forward_kwargs) -> dict:
        """One no-grad forward through TRL's own scoring method, captured; used only when TRL ran none."""
        mode = "train" if self.model.training else "eval"
        batch_size = self.args.per_device_train_batch_size if mode == "train" else self.args.per_device_eval_batch_size
        self._scoring_pending = True
        try:
            self._get_per_token_logps_and_entropies(
                self.model, torch.cat([prompt_ids, completion_ids], 1), torch.cat([prompt_mask, completion_mask], 1),
                completion_ids.size(1), batch_size=batch_size,
                **{k: v for k, v in forward_kwargs.items() if v is not None},
            )  # fmt: skip
        finally:
            self._scoring_pending = False
        scoring, self._scoring = self._scoring, None
        return scoring

    # -- attention for rewards ----------------------------------------------------------------------------------
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        if not self._attention_reward_indices:
            return super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        if self._scoring is None:  # TRL ran no scoring forward: run one, from what it tokenised for generation
            self._scoring = self._scoring_forward(*self._rollout_tensors(completion_ids_list))
        self._reward_attention = self._per_completion(self._scoring)
        try:
            return super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        finally:
            self._reward_attention = None

    def _rollout_tensors(self, completion_ids_list):
        """Padded prompt/completion tensors and model inputs rebuilt from the generation-time tokenisation."""
        prompt_ids_list, images, fields = self._scoring_prompts
        device, pad_id = self.accelerator.device, self._tokenizer.pad_token_id
        prompts = [torch.as_tensor(ids) for ids in prompt_ids_list]
        completions = [torch.as_tensor(ids, dtype=torch.long) for ids in completion_ids_list]
        prompt_ids = pad(prompts, padding_value=pad_id, padding_side="left").to(device)
        prompt_mask = pad([torch.ones_like(p) for p in prompts], padding_value=0, padding_side="left").to(device)
        completion_ids = pad(completions, padding_value=pad_id, padding_side="right").to(device)
        completion_mask = pad([torch.ones_like(c) for c in completions], padding_value=0, padding_side="right").to(
            device
        )
        kwargs = {k: torch.as_tensor(fields[k]).to(device) for k in ("pixel_values", "image_grid_thw") if k in fields}
        if images is not None:
            kwargs["num_images"] = [len(image_list) if image_list else 0 for image_list in images]
        if "mm_token_type_ids" in fields:  # the processor's types over the prompt, zeros over the completion (as TRL)
            types = [torch.as_tensor(t, dtype=torch.long) for t in fields["mm_token_type_ids"]]
            types = pad(types, padding_value=0, padding_side="left").to(device)
            kwargs["mm_token_type_ids"] = torch.cat([types, torch.zeros_like(completion_ids)], 1)
        return prompt_ids, prompt_mask, completion_ids, completion_mask, kwargs

    def _per_completion(self, scoring) -> list:
        """Split a captured batch into one CompletionAttention per completion, padding removed."""
        config = unwrap_model(self.model).config
        image_token = getattr(config, "image_token_id", None)
        merge = getattr(getattr(config, "vision_config", None), "spatial_merge_size", 2)
        grids, counts = scoring["image_grid_thw"], scoring["num_images"]
        offsets = [0] + list(torch.tensor(counts or []).cumsum(0).tolist())
        rows_total, items = scoring["rows"], []
        for i in range(scoring["input_ids"].size(0)):
            keep = scoring["attention_mask"][i].bool()
            completion = keep[-rows_total:]
            sample_grids = (
                [] if grids is None or not counts else [tuple(g.tolist()) for g in grids[offsets[i] : offsets[i + 1]]]
            )
            prompt_length = int(keep.sum() - completion.sum())
            ids = scoring["input_ids"][i][keep][
                :prompt_length
            ].cpu()  # images live in the prompt (a sampled pad id is text)
            positions = [] if image_token is None else visual_token_positions(ids, image_token, sample_grids, merge)
            entropies = scoring["entropies"]
            items.append(CompletionAttention(
                rows=scoring["probs"][i, :rows_total][completion][:, keep].float().cpu(),
                image_positions=positions, image_grids=sample_grids,
                entropies=None if entropies is None else entropies[i][completion].float().cpu(),
                merge_size=merge, prompt_length=prompt_length,
            ))  # fmt: skip
        return items
