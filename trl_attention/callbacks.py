"""`AttentionHeatmapCallback`: attention heatmaps (and attention metrics) in TensorBoard / W&B during training.

Every `every_n_steps` logged steps the callback takes a few samples, runs one captured forward per sample
(`plotting.capture_image_attention`, or `capture_video_attention` for a row with a video), overlays the selected
tokens' attention on the image (`overlay_heatmap`), or on a strip of frames with one panel per temporal group
(`overlay_video_strip`), and sends the images to the backends `args.report_to` names:

- samples: with a GRPO-family trainer, the latest rollouts TRL keeps for its completions table (prompt,
  completion, images; a video row's visual columns in `_logs["visual_rows"]`, see `VISUAL_ROWS`); otherwise (or
  when none has an image or a video) the fixed `examples` given to the callback, with a short greedy completion
  generated for each;
- TensorBoard: the `TensorBoardCallback`'s writer when there is one (same event file as the scalars), else its
  own writer under `output_dir/runs`, which then also receives the `attention/*` and `sayo/*` scalars;
- W&B: `wandb.log` when a run is active (the `WandbCallback`, if present, already logs the scalars);
- TRL's completions table (`log_completions=True`): the overlay is appended to the row's images, so W&B shows
  it next to the completion.

The forward runs on every process (ZeRO-3 shards need all ranks); only the main process writes.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import torch
from transformers import TrainerCallback
from transformers.utils import logging

from .capture import unwrap_model
from .plotting import capture_image_attention, capture_video_attention, overlay_heatmap, overlay_video_strip
from .rewards import completion_text
from .visual.rows import row_visuals

__all__ = ["VISUAL_ROWS", "AttentionHeatmapCallback"]

logger = logging.get_logger(__name__)
_MARK = "trl_attention_heatmap"  # PIL info key marking overlays already added to TRL's completions table
_SCALAR_PREFIXES = ("attention/", "sayo/")
# The `_logs` key where the video path keeps, aligned with `_logs["prompt"]`, each logged rollout's visual columns
# (image/images/video/videos/video_fps, or `encode_row`'s output; None for a row TRL's own path handled): TRL
# logs no video, and the video path takes the images of a video batch out of the rows TRL sees.
VISUAL_ROWS = "visual_rows"


class AttentionHeatmapCallback(TrainerCallback):
    """Log attention heatmaps every `every_n_steps` (default: every logging step).

    Args:
        trainer: the trainer (for TRL's rollouts, the processor and the TensorBoard writer); pass it, as with
            TRL's own `LogCompletionsCallback`.
        examples: rows with `prompt` and `image`/`images` or `video`/`videos` (+ `video_fps`), used when no
            rollout with an image or a video is available.
        tokens: which completion tokens to show: "mean", an int index, or a (start, stop) span.
        num_samples: heatmaps per logging step. layer: decoder layer (default: the trainer's `attn_layer`, else -1).
        max_new_tokens: length of the greedy completion generated for `examples`.
    """

    def __init__(
        self,
        trainer,
        examples=None,
        every_n_steps: int | None = None,
        tokens="mean",
        num_samples: int = 2,
        layer: int | None = None,
        max_new_tokens: int = 16,
        alpha: float = 0.55,
    ):
        if every_n_steps is not None and every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1, got {num_samples}")
        self.trainer, self.tokens, self.num_samples, self.alpha = trainer, tokens, num_samples, alpha
        self.examples = list(examples) if examples is not None else []
        self.every_n_steps = every_n_steps
        self.layer = layer if layer is not None else int(getattr(trainer.args, "attn_layer", -1))
        self.max_new_tokens = max_new_tokens
        self.processor = trainer.processing_class
        self._writer = None  # own SummaryWriter, only when no TensorBoardCallback exists
        self._last_step = -1
        self.last_images = []  # (caption, PIL image) of the latest logging step, for notebooks and tests

    # -- samples ---------------------------------------------------------------------------------------------
    def _rollout_samples(self):
        """(row index in TRL's `_logs`, prompt, completion text, kind, visual) of the latest rollouts with an image
        ("image", its images) or a video ("video", its encoded inputs). A trainer with video rows that keeps no
        `VISUAL_ROWS` log gives none: its `_logs["images"]` may belong to an earlier batch than its prompts."""
        logs = getattr(self.trainer, "_logs", None)
        if not logs or not logs.get("prompt"):
            return []
        n = len(logs["prompt"])
        rows = logs.get(VISUAL_ROWS)
        rows = rows if rows is not None and len(rows) == n else None
        if rows is None and getattr(self.trainer, "has_video", False):
            return []
        images = logs.get("images") if len(logs.get("images") or ()) == n else None
        samples = []
        for index in range(n - 1, -1, -1):
            visual = self._visual(rows[index] if rows else None, images[index] if images else None)
            if visual is not None:
                completion = completion_text(logs["completion"][index])
                samples.append((index, logs["prompt"][index], completion, *visual))
            if len(samples) == self.num_samples:
                break
        return samples[::-1]

    def _visual(self, row, images):
        """("video", encoded inputs) for a row with a video, else ("image", its unmarked PIL images), else None."""
        if row is not None:
            if row_visuals(row)[1] or row.get("video_frames"):
                return "video", self._encode(row)
            images = row_visuals(row)[0]
        images = [im for im in images or [] if hasattr(im, "info") and not im.info.get(_MARK)]
        return ("image", images) if images else None

    def _encode(self, row) -> dict:
        """A row's visual inputs as the trainer encodes them (the same frames, sizes and tensors)."""
        if row.get("video_grid_thw") is not None:  # already `encode_row`'s output
            return row
        from .video.arguments import video_arguments
        from .video.rows import encode_row

        return encode_row(0, row, self.processor, video_arguments(self.trainer.args))

    @torch.no_grad()
    def _example_samples(self, model):
        samples = []
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        for example in self.examples[: self.num_samples]:
            images, videos = row_visuals(example)
            if videos:
                visuals = self._encode(example)
                completion = self._complete_video(model, example["prompt"], visuals)
                samples.append((None, example["prompt"], completion, "video", visuals))
                continue
            text = self.processor.apply_chat_template(example["prompt"], add_generation_prompt=True, tokenize=False)
            inputs = self.processor(text=[text], images=images, return_tensors="pt").to(model.device)
            out = model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
            completion = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
            samples.append((None, example["prompt"], completion, "image", images))
        return samples

    def _complete_video(self, model, prompt, visuals) -> str:
        """A short greedy completion of a video row, its prompt expanded as the trainer expands it."""
        from .video.encode import merge_visuals, tokenize_visual_prompts
        from .video.grpo import mm_token_type_ids

        config, tokenizer = unwrap_model(model).config, getattr(self.processor, "tokenizer", self.processor)
        tokens = tokenizer.convert_ids_to_tokens([config.image_token_id, config.video_token_id])
        (ids,), _ = tokenize_visual_prompts(self.processor, [prompt], [visuals], *tokens)
        input_ids = torch.tensor([ids], device=model.device)
        kwargs = {k: v.to(model.device) for k, v in merge_visuals([visuals]).items()}
        kwargs.update(attention_mask=torch.ones_like(input_ids), mm_token_type_ids=mm_token_type_ids(model, input_ids))
        kwargs["suppress_tokens"] = [config.image_token_id, config.video_token_id]  # as the trainer: no placeholders
        out = model.generate(input_ids=input_ids, **kwargs, max_new_tokens=self.max_new_tokens, do_sample=False)
        return tokenizer.decode(out[0, input_ids.shape[1] :], skip_special_tokens=True)

    def _render(self, step, prompt, completion, kind, visual, model):
        """(caption, overlay, mass on the shown image / video) of one sample."""
        query = self.tokens if completion else None
        if kind == "video":
            attention = capture_video_attention(model, self.processor, prompt, visual, completion, self.layer)
            grids = attention.select(query)
            overlay = overlay_video_strip(attention.group_frames(), grids, alpha=self.alpha)
            groups = ", ".join(f"{g.sum():.3f}" for g in grids)
            caption = f"step {step}: {completion[:80]!r} (video mass {grids.sum():.3f}; per frame group {groups})"
            return caption, overlay, float(grids.sum())
        attention = capture_image_attention(model, self.processor, prompt, visual, completion, self.layer)
        grid = attention.select(query)
        overlay = overlay_heatmap(attention.image, grid, alpha=self.alpha)
        return f"step {step}: {completion[:80]!r} (image mass {grid.sum():.3f})", overlay, float(grid.sum())

    # -- the hook --------------------------------------------------------------------------------------------
    def on_log(self, args, state, control, logs=None, model=None, **kwargs):
        every = self.every_n_steps or args.logging_steps or 1
        if state.global_step == self._last_step or state.global_step % every or model is None:
            return
        self._last_step = state.global_step
        backends = set(args.report_to or [])
        was_training = model.training
        try:
            samples = self._rollout_samples() or (self._example_samples(model) if self.examples else [])
            rendered = []
            for index, prompt, completion, kind, visual in samples:
                caption, overlay, mass = self._render(state.global_step, prompt, completion, kind, visual, model)
                overlay.info[_MARK] = True
                rendered.append((index, caption, overlay, kind, mass))
        finally:
            model.train(was_training)
        if not rendered:
            logger.warning_once(
                "AttentionHeatmapCallback: no rollouts with images or videos and no `examples`: nothing to plot"
            )
            return
        self.last_images = [(caption, image) for _, caption, image, *_ in rendered]
        if not state.is_world_process_zero:
            return
        masses = {kind: [mass for *_, k, mass in rendered if k == kind] for kind in ("image", "video")}
        scalars = {f"attention_heatmap/{k}_mass": float(np.mean(v)) for k, v in masses.items() if v}
        if "tensorboard" in backends:
            self._log_tensorboard(args, state, logs or {}, scalars, rendered)
        if "wandb" in backends:
            self._log_wandb(state, scalars, rendered)
        self._add_to_completions_table(rendered)

    def _tensorboard_writer(self, args):
        for callback in self.trainer.callback_handler.callbacks:
            if getattr(callback, "tb_writer", None) is not None:
                return callback.tb_writer, False
        if self._writer is None:
            from torch.utils.tensorboard import SummaryWriter

            log_dir = os.environ.get("TENSORBOARD_LOGGING_DIR") or os.path.join(args.output_dir, "runs")
            self._writer = SummaryWriter(log_dir=log_dir)
        return self._writer, True

    def _log_tensorboard(self, args, state, logs, scalars, rendered):
        writer, own = self._tensorboard_writer(args)
        if own:  # no TensorBoardCallback: send the attention metrics ourselves
            scalars = {**{k: v for k, v in logs.items() if k.startswith(_SCALAR_PREFIXES)}, **scalars}
        for key, value in scalars.items():
            if isinstance(value, (int, float)):
                writer.add_scalar(key, value, state.global_step)
        for i, (_, caption, image, *_) in enumerate(rendered):
            writer.add_image(f"attention_heatmap/{i}", np.asarray(image), state.global_step, dataformats="HWC")
            writer.add_text(f"attention_heatmap/{i}", caption, state.global_step)
        writer.flush()

    def _log_wandb(self, state, scalars, rendered):
        wandb = sys.modules.get("wandb")
        if wandb is None or getattr(wandb, "run", None) is None:
            return
        images = [wandb.Image(image, caption=caption) for _, caption, image, *_ in rendered]
        wandb.log({"attention_heatmap/images": images, **scalars, "train/global_step": state.global_step})

    def _add_to_completions_table(self, rendered):
        """Append each overlay to its rollout's images, which TRL's table logging (run right after the callbacks'
        `on_log`) turns into its `image` column. New lists: the originals may be the dataset's own objects."""
        logs = getattr(self.trainer, "_logs", None)
        if not getattr(self.trainer, "log_completions", False) or not logs:
            return
        if len(logs.get("images") or ()) != len(logs.get("prompt") or ()):  # not one image list per rollout
            return
        for index, _, image, *_ in rendered:
            if index is not None:  # replace the overlay of an earlier step on the same (reused) rollout
                kept = [im for im in logs["images"][index] or [] if not im.info.get(_MARK)]
                logs["images"][index] = kept + [image]

    def on_train_end(self, args, state, control, **kwargs):
        if self._writer is not None:
            self._writer.close()
            self._writer = None
