"""Video through GRPOTrainer: generation, TRL's scoring and loss forwards, and the batch buffering.

TRL 1.16 knows `image` / `images` columns only: a `video` column would reach the model as one unexpanded
`<|video_pad|>` and no pixels. For a batch with a video row, `VideoGRPOMixin` takes the visual columns out of the
rows TRL sees and owns them:
- `_tokenize_prompts` returns the expanded prompt ids and the generation fields (`pixel_values[_videos]`,
  `*_grid_thw`, `second_per_grid_ts`, `mm_token_type_ids`), so `generate` sees every frame with M-RoPE's temporal
  positions;
- the rows' visual tensors travel in the batch as `visual_inputs` (one dict per row): TRL's shuffle and split keep
  lists aligned with their rows;
- `_get_per_token_logps_and_entropies` hands each chunk's tensors (and `mm_token_type_ids` rebuilt from its ids)
  to the model through a forward pre-hook, so TRL's own forward runs unchanged.
Batches without a video row take TRL's path untouched."""

from __future__ import annotations

from collections import deque

import torch
from accelerate.utils import gather_object

from ..capture.models import unwrap_model
from .arguments import video_arguments
from .encode import merge_visuals, tokenize_visual_prompts
from ..visual.rows import VIDEO_COLUMNS, VISUAL_COLUMNS, row_name, row_visuals
from .rows import VideoError, check_trainer_videos, encode_row

__all__ = ["LOGGED_COLUMNS", "VideoGRPOMixin", "mm_token_type_ids", "visual_forward_kwargs"]

LOGGED_COLUMNS = ("image", "images", "video", "videos", "video_fps")  # kept in _logs["visual_rows"]


def mm_token_type_ids(model, input_ids: torch.Tensor) -> torch.Tensor:
    """1 on image placeholders, 2 on video placeholders, 0 elsewhere (what Qwen-VL's M-RoPE reads)."""
    config = unwrap_model(model).config
    types = torch.zeros_like(input_ids)
    types[input_ids == config.image_token_id] = 1
    types[input_ids == config.video_token_id] = 2
    return types


def visual_forward_kwargs(model, visuals, input_ids: torch.Tensor) -> dict:
    """The model inputs of rows `visuals` (their tensors concatenated) for a forward over `input_ids`."""
    if len(visuals) != input_ids.size(0):
        raise RuntimeError(f"{len(visuals)} rows of visual inputs for a forward over {input_ids.size(0)} rows")
    kwargs = {k: v.to(input_ids.device) for k, v in merge_visuals(visuals).items()}
    kwargs["mm_token_type_ids"] = mm_token_type_ids(model, input_ids)
    return kwargs


class VideoGRPOMixin:
    """Mix into a GRPOTrainer subclass, right before GRPOTrainer; call `_init_video()` after its `__init__`."""

    def _init_video(self, train_dataset=None, eval_dataset=None) -> None:
        self._batch_visuals = None  # the rows of the generation batch in flight
        self._forward_visuals = None  # the rows of the loss batch in flight
        self.video_args = video_arguments(self.args)
        self.has_video = check_trainer_videos(self, self.video_args, train_dataset, eval_dataset)
        if self.has_video:
            self._suppress_video_token()
            if self.log_multimodal:  # the heatmap callback's rollouts, in step with TRL's gathered _logs["prompt"]
                self._logs["visual_rows"] = deque(maxlen=self.args.generation_batch_size)
        if self.has_video and (self.use_vllm or self.tools or self.environment_factories):
            raise VideoError(
                "video rows are generated with transformers' generate: use_vllm, tools and environments are not "
                "supported with them yet"
            )

    def _suppress_video_token(self) -> None:
        """A sampled <|video_pad|> would not match the video features of the next forward (TRL suppresses the
        image token the same way); kept when the user's generation_kwargs set suppress_tokens themselves."""
        if "suppress_tokens" in (getattr(self.args, "generation_kwargs", None) or {}):
            return
        video_id = unwrap_model(self.model).config.video_token_id
        tokens = list(self.generation_config.suppress_tokens or [])
        if video_id not in tokens:
            tokens.append(video_id)
        self.generation_config.suppress_tokens = tokens
        self.generation_kwargs["suppress_tokens"] = tokens

    def _log_visual_rows(self, inputs, video_batch: bool) -> None:
        """Rows' visual columns for the heatmaps; in video batches also TRL's `_logs["images"]`, which TRL does not
        extend when the image columns are taken out (its completions table would pair old images with new prompts)."""
        if not self.log_multimodal or "visual_rows" not in self._logs:
            return
        self._logs["visual_rows"].extend(
            gather_object([{k: r[k] for k in LOGGED_COLUMNS if r.get(k) is not None} for r in inputs])
        )
        if video_batch:
            self._logs["images"].extend(gather_object([row_visuals(r)[0] or None for r in inputs]))

    def _generate_and_score_completions(self, inputs):
        if not self.has_video or not any(row.get(c) is not None for row in inputs for c in VIDEO_COLUMNS):
            output = super()._generate_and_score_completions(inputs)
            if self.has_video:
                self._log_visual_rows(inputs, video_batch=False)
            return output
        cache: dict = {}
        visuals = [
            encode_row(i, row, self.processing_class, self.video_args, cache, f"sampled {row_name(row)}")
            for i, row in enumerate(inputs)
        ]
        stripped = [{k: v for k, v in row.items() if k not in VISUAL_COLUMNS} for row in inputs]
        self._batch_visuals = self._forward_visuals = visuals
        try:
            output = super()._generate_and_score_completions(stripped)
        finally:
            self._batch_visuals = self._forward_visuals = None
        # The heatmaps re-encode from _logs["visual_rows"]: the batch carries the tensors, not the uint8 frames.
        output["visual_inputs"] = [{k: v for k, v in vis.items() if k != "video_frames"} for vis in visuals]
        self._log_visual_rows(inputs, video_batch=True)
        return output

    def _tokenize_prompts(self, prompts):
        if self._batch_visuals is None:
            return super()._tokenize_prompts(prompts)
        tokenizer = self.processing_class.tokenizer
        config = unwrap_model(self.model).config
        image_token, video_token = tokenizer.convert_ids_to_tokens([config.image_token_id, config.video_token_id])
        template = {"chat_template": self.chat_template, **(self.chat_template_kwargs or {})}
        prompt_ids, fields = tokenize_visual_prompts(
            self.processing_class, prompts, self._batch_visuals, image_token, video_token, template
        )
        return prompt_ids, None, fields

    def _compute_loss(self, model, inputs):
        if inputs.get("visual_inputs") is None:
            return super()._compute_loss(model, inputs)
        self._forward_visuals = inputs["visual_inputs"]
        try:
            return super()._compute_loss(model, inputs)
        finally:
            self._forward_visuals = None

    def _get_per_token_logps_and_entropies(
        self, model, input_ids, attention_mask, logits_to_keep, batch_size=None, *args, visual_inputs=None, **kwargs
    ):
        visuals = visual_inputs if visual_inputs is not None else self._forward_visuals
        if visuals is None:
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, batch_size, *args, **kwargs
            )
        step = batch_size or input_ids.size(0)
        chunks = iter([visuals[s : s + step] for s in range(0, input_ids.size(0), step)])

        def add_visuals(module, args_, kwargs_):  # TRL calls model(**inputs): one call per chunk, in order
            ids = kwargs_["input_ids"]
            kwargs_.update(visual_forward_kwargs(module, next(chunks), ids))
            return args_, kwargs_

        handle = unwrap_model(model).register_forward_pre_hook(add_visuals, with_kwargs=True, prepend=True)
        try:
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, batch_size, *args, **kwargs
            )
        finally:
            handle.remove()
