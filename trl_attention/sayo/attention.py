"""Attention for rewards (SAYO): what a reward marked `requires_attention` receives, and the trainer mixin that
computes it inside the scoring capture (`ral.scoring`), once per generation batch whatever the number of such
rewards. When TRL ran no scoring forward, one is run from the prompt ids and multimodal fields TRL tokenised for
generation (kept by `_tokenize_prompts`). Datasets with video rows are refused at construction: the attention
handed to rewards describes image tokens only (docs/sayo.md, "Video rows").
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass

import torch

from ..capture import spatial_merge_size, unwrap_model
from ..visual.layouts import LayoutError, VisualLayout, visual_layout
from ..trl_internals import pad
from ..visual.checks import open_image
from ..visual.regions import visual_token_positions
from ..visual.rows import first_rows, first_video_row, named_datasets, row_images, row_name

__all__ = ["CompletionAttention", "RewardAttentionMixin", "completion_attention"]


@dataclass
class CompletionAttention:
    """The policy's attention for one completion, no gradient. Positions index the completion's own sequence: the
    prompt without padding followed by the completion without padding (length L = prompt_length + n)."""

    rows: torch.Tensor  # (n, L): final-layer head-averaged attention of the n completion tokens over all L positions
    image_positions: list | None  # per image, its visual-token positions (row-major, frame-major); None: truncated
    image_grids: list  # per image, (t, h, w) in patches (a fixed layout's (1, rows, cols) with merge_size 1)
    entropies: torch.Tensor | None  # (n,): policy entropy of each completion token at the sampling temperature
    merge_size: int
    prompt_length: int
    video_tokens: int = 0  # video placeholders in the prompt: rewards that map image regions must refuse them
    layout: VisualLayout | None = None  # the model's image layout (`trl_attention.visual.layouts`); None: unknown


def completion_attention(model, scoring: dict, layout: VisualLayout | None = None) -> list:
    """Split a captured scoring batch into one CompletionAttention per completion, padding removed; the image
    blocks are located through `layout` (`visual_layout(model)`; None: a model without a known layout, whose
    prompts with image tokens get `image_positions=None`).

    `scoring`: `probs` (B, C, T) captured rows, `input_ids` / `attention_mask` (B, T) of [left-padded prompt |
    right-padded completion], `rows` = C, `entropies` (B, C) or None, and the batch's `image_grid_thw` /
    `image_position_ids` with `num_images` (per sample) where the layout reads them."""
    config = unwrap_model(model).config
    image_token = getattr(config, "image_token_id", getattr(config, "image_token_index", None))
    video_token = getattr(config, "video_token_id", None)
    merge = layout.merge if layout is not None else spatial_merge_size(model)
    rows_total, items = scoring["rows"], []
    prompts = []
    for i in range(scoring["input_ids"].size(0)):
        keep = scoring["attention_mask"][i].bool()
        prompt_length = int(keep.sum() - keep[-rows_total:].sum())
        prompts.append(scoring["input_ids"][i][keep][:prompt_length].cpu())  # images live in the prompt
    if layout is not None:
        ids = pad(prompts, padding_value=-1, padding_side="left") if prompts else scoring["input_ids"]
        grids = layout.sample_grids(ids, layout.grids(scoring, required=False), scoring.get("num_images"))
    for i, ids in enumerate(prompts):
        keep = scoring["attention_mask"][i].bool()
        completion = keep[-rows_total:]
        if layout is not None:
            sample_grids = [tuple(g) for g in grids[i]] if grids[i] is not None else []
            positions = layout.blocks(ids, grids[i])
        else:
            sample_grids = []
            positions = [] if image_token is None else visual_token_positions(ids, image_token, [], merge)
        entropies = scoring["entropies"]
        items.append(
            CompletionAttention(
                rows=scoring["probs"][i, :rows_total][completion][:, keep].float().cpu(),
                image_positions=positions,
                image_grids=sample_grids,
                entropies=None if entropies is None else entropies[i][completion].float().cpu(),
                merge_size=merge,
                prompt_length=len(ids),
                video_tokens=0 if video_token is None else int((ids == video_token).sum()),
                layout=layout,
            )
        )
    return items


def _validate(func, dataset, name: str, processing_class) -> None:
    """`func.validate(dataset[, processing_class=])`, its ValueError prefixed with the dataset's name."""
    takes_processor = "processing_class" in inspect.signature(func.validate).parameters
    try:
        func.validate(dataset, processing_class=processing_class) if takes_processor else func.validate(dataset)
    except ValueError as error:
        raise ValueError(f"{name}: {error}") from None


class RewardAttentionMixin:
    """Mix into a GRPOTrainer subclass (with `ScoringCaptureMixin` after it); call `_init_reward_attention()`
    in `__init__` before `_init_scoring_capture`."""

    def _init_reward_attention(self) -> None:
        self._reward_attention = None
        self._rollout_prompts = None  # (prompt_ids, images, multimodal_fields) as TRL tokenised them
        self.attention_reward_indices = [
            i for i, func in enumerate(self.reward_funcs) if getattr(func, "requires_attention", False)
        ]
        if not self.attention_reward_indices:
            return
        if self.rollout_func is not None or self.environment_factories is not None or self.tools:
            raise ValueError(
                "attention rewards need TRL's default single-turn generation path (no rollout_func, "
                "environment_factory or tools)"
            )
        # (the capture itself was checked by the trainer, check_capture_supported, before this runs)
        grid_rewards = [
            getattr(self.reward_funcs[i], "__name__", type(self.reward_funcs[i]).__name__)
            for i in self.attention_reward_indices
            if getattr(self.reward_funcs[i], "needs_visual_grid", False)
        ]
        try:
            self._visual_layout = visual_layout(self.model, self.processing_class)
        except LayoutError as error:
            self._visual_layout = None
            if grid_rewards:
                raise LayoutError(
                    f"{', '.join(grid_rewards)} maps boxes to visual tokens, and cannot here: {error} "
                    "(docs/support-matrix.md, docs/sayo.md 'Layouts')"
                ) from None
        datasets = named_datasets(self.train_dataset, self.eval_dataset)
        self._refuse_video_rows(datasets)
        self._row_checks = []
        for index in self.attention_reward_indices:
            func = self.reward_funcs[index]
            for name, dataset in datasets:
                if dataset is not None and hasattr(func, "validate"):
                    _validate(func, dataset, name, self.processing_class)
            if hasattr(func, "check_batch"):
                self._row_checks.append(func.check_batch)
            self.reward_funcs[index] = self._with_attention(func)
        if grid_rewards:  # images the processor shows only in part (LLaVA's center crop): now and for each batch
            for name, dataset in datasets:
                if dataset is not None:
                    self._check_layout_images(first_rows(dataset, 256), name)
            self._row_checks.append(lambda rows, _: self._check_layout_images((None, row) for row in rows))

    def _check_layout_images(self, rows, prefix: str | None = None) -> None:
        """`VisualLayout.check_image` on the images of (index, row) pairs; a no-op for layouts without limits."""
        layout = self._visual_layout
        if layout is None or layout.image_processor is None or layout.kind != "fixed":
            return
        for index, row in rows:
            where = row_name(row, index) if prefix is None else f"{prefix}: {row_name(row, index)}"
            for i, image in enumerate(row_images(row) or []):
                layout.check_image(open_image(image, f"{where}, image {i}").size, f"{where}, image {i}")

    def _get_per_token_logps_and_entropies(self, model, input_ids, attention_mask, logits_to_keep, *args, **kwargs):
        """Gemma4's `image_position_ids` (its image grids) into the captured scoring batch the rewards read."""
        before = self.scoring_batch
        result = super()._get_per_token_logps_and_entropies(
            model, input_ids, attention_mask, logits_to_keep, *args, **kwargs
        )
        scoring = self.scoring_batch
        if scoring is not None and scoring is not before and kwargs.get("image_position_ids") is not None:
            scoring["image_position_ids"] = kwargs["image_position_ids"]
        return result

    def _refuse_video_rows(self, datasets) -> None:
        """Attention rewards with video rows: an error naming the first such row. `CompletionAttention` locates
        image tokens only and SAYO's boxes are per image; scoring video rows would be silently wrong."""
        if getattr(self, "has_video", None) is False:  # the video component found none (trl_attention.video.grpo)
            return
        names = [
            getattr(self.reward_funcs[i], "__name__", type(self.reward_funcs[i]).__name__)
            for i in self.attention_reward_indices
        ]
        for name, dataset in datasets:
            found = first_video_row(dataset) if dataset is not None else None
            if found is not None:
                from ..visual.rows import VideoError

                raise VideoError(
                    f"{name} row {found[0]}, column `{found[1]}`: a video row, but the reward(s) {', '.join(names)} "
                    "read the policy's attention, which describes image tokens only (SAYO's boxes are per image). "
                    "Drop the video rows (or train them without attention rewards); RAL's attention term "
                    "(attn_coef) covers video tokens. docs/sayo.md, 'Video rows'"
                )

    def _generate_and_score_completions(self, inputs):
        for check in getattr(self, "_row_checks", ()):  # every sampled row, before TRL's processor sees it
            check(inputs, self.processing_class)
        try:
            return super()._generate_and_score_completions(inputs)
        finally:
            self._rollout_prompts = None  # set by `_tokenize_prompts` for this generation batch only

    def _with_attention(self, func):
        @functools.wraps(func)
        def reward(*args, **kwargs):
            return func(*args, attention=self._reward_attention, **kwargs)

        reward.requires_attention = True
        return reward

    def _tokenize_prompts(self, prompts):
        result = super()._tokenize_prompts(prompts)
        self._rollout_prompts = result if self.attention_reward_indices else None
        return result

    # -- attention for rewards ----------------------------------------------------------------------------------
    def _calculate_rewards(self, inputs, prompts, completions, completion_ids_list):
        if not self.attention_reward_indices:
            return super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        scoring = self.scoring_batch
        if scoring is None:  # TRL ran no scoring forward: run one, from what it tokenised for generation
            scoring = self.score_rollouts(*self._rollout_tensors(completion_ids_list))
        self._reward_attention = self._per_completion(scoring)
        try:
            return super()._calculate_rewards(inputs, prompts, completions, completion_ids_list)
        finally:
            self._reward_attention = None

    def _rollout_tensors(self, completion_ids_list):
        """Padded prompt/completion tensors and model inputs rebuilt from the generation-time tokenisation."""
        prompt_ids_list, images, fields = self._rollout_prompts
        device, pad_id = self.accelerator.device, self._tokenizer.pad_token_id
        prompts = [torch.as_tensor(ids) for ids in prompt_ids_list]
        completions = [torch.as_tensor(ids, dtype=torch.long) for ids in completion_ids_list]
        prompt_ids = pad(prompts, padding_value=pad_id, padding_side="left").to(device)
        prompt_mask = pad([torch.ones_like(p) for p in prompts], padding_value=0, padding_side="left").to(device)
        completion_ids = pad(completions, padding_value=pad_id, padding_side="right").to(device)
        completion_mask = pad([torch.ones_like(c) for c in completions], padding_value=0, padding_side="right").to(
            device
        )
        image_keys = ("pixel_values", "image_grid_thw", "image_position_ids")  # per image (Gemma4: its positions)
        kwargs = {k: torch.as_tensor(fields[k]).to(device) for k in image_keys if k in fields}
        if images is not None:
            kwargs["num_images"] = [len(image_list) if image_list else 0 for image_list in images]
        for key in ("mm_token_type_ids", "token_type_ids"):  # the processor's types over the prompt, zeros over the
            if key in fields:  # completion (as TRL); Gemma3's token_type_ids make its image blocks bidirectional
                types = [torch.as_tensor(t, dtype=torch.long) for t in fields[key]]
                types = pad(types, padding_value=0, padding_side="left").to(device)
                kwargs[key] = torch.cat([types, torch.zeros_like(completion_ids)], 1)
        return prompt_ids, prompt_mask, completion_ids, completion_mask, kwargs

    def _per_completion(self, scoring) -> list:
        """Split a captured batch into one CompletionAttention per completion, padding removed."""
        layout = getattr(self, "_visual_layout", None)
        if layout is None:  # no grid reward was checked at construction: the layout where the model has one
            try:
                layout = visual_layout(self.model)
            except LayoutError:
                pass
        return completion_attention(self.model, scoring, layout)
