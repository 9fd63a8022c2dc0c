"""`AttentionHeatmapCallback`: attention heatmaps (and attention metrics) in TensorBoard / W&B during training.

Every `every_n_steps` logged steps the callback takes a few samples, runs one captured forward per sample
(`plotting.capture_image_attention`), overlays the selected tokens' attention on the image (`overlay_heatmap`)
and sends the images to the backends `args.report_to` names:

- samples: with a GRPO-family trainer, the latest rollouts TRL keeps for its completions table (prompt,
  completion, images); otherwise (or when TRL kept no images) the fixed `examples` given to the callback, with a
  short greedy completion generated for each;
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

from .plotting import capture_image_attention, overlay_heatmap
from .rewards import completion_text

__all__ = ["AttentionHeatmapCallback"]

logger = logging.get_logger(__name__)
_MARK = "trl_attention_heatmap"  # PIL info key marking overlays already added to TRL's completions table
_SCALAR_PREFIXES = ("attention/", "sayo/")


class AttentionHeatmapCallback(TrainerCallback):
    """Log attention heatmaps every `every_n_steps` (default: every logging step).

    Args:
        trainer: the trainer (for TRL's rollouts, the processor and the TensorBoard writer); pass it, as with
            TRL's own `LogCompletionsCallback`.
        examples: rows with `prompt` and `image`/`images` used when no rollouts with images are available.
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
        """(row index in TRL's `_logs`, prompt, completion text, images) of the latest rollouts with images."""
        logs = getattr(self.trainer, "_logs", None)
        if not logs or not logs.get("images") or len(logs["images"]) != len(logs["prompt"]):
            return []
        samples = []
        for index in range(len(logs["prompt"]) - 1, -1, -1):
            images = [im for im in logs["images"][index] or [] if not im.info.get(_MARK)]
            if images:
                samples.append((index, logs["prompt"][index], completion_text(logs["completion"][index]), images))
            if len(samples) == self.num_samples:
                break
        return samples[::-1]

    @torch.no_grad()
    def _example_samples(self, model):
        samples = []
        tokenizer = getattr(self.processor, "tokenizer", self.processor)
        for example in self.examples[: self.num_samples]:
            images = example.get("images") or [example["image"]]
            text = self.processor.apply_chat_template(example["prompt"], add_generation_prompt=True, tokenize=False)
            inputs = self.processor(text=[text], images=images, return_tensors="pt").to(model.device)
            out = model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False)
            completion = tokenizer.decode(out[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
            samples.append((None, example["prompt"], completion, images))
        return samples

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
            for index, prompt, completion, images in samples:
                attention = capture_image_attention(model, self.processor, prompt, images, completion, self.layer)
                grid = attention.select(self.tokens if completion else None)
                overlay = overlay_heatmap(attention.image, grid, alpha=self.alpha)
                overlay.info[_MARK] = True
                caption = f"step {state.global_step}: {completion[:80]!r} (image mass {grid.sum():.3f})"
                rendered.append((index, caption, overlay, float(grid.sum())))
        finally:
            model.train(was_training)
        if not rendered:
            logger.warning_once("AttentionHeatmapCallback: no rollouts with images and no `examples`: nothing to plot")
            return
        self.last_images = [(caption, image) for _, caption, image, _ in rendered]
        if not state.is_world_process_zero:
            return
        scalars = {"attention_heatmap/image_mass": float(np.mean([mass for *_, mass in rendered]))}
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
        for i, (_, caption, image, _) in enumerate(rendered):
            writer.add_image(f"attention_heatmap/{i}", np.asarray(image), state.global_step, dataformats="HWC")
            writer.add_text(f"attention_heatmap/{i}", caption, state.global_step)
        writer.flush()

    def _log_wandb(self, state, scalars, rendered):
        wandb = sys.modules.get("wandb")
        if wandb is None or getattr(wandb, "run", None) is None:
            return
        images = [wandb.Image(image, caption=caption) for _, caption, image, _ in rendered]
        wandb.log({"attention_heatmap/images": images, **scalars, "train/global_step": state.global_step})

    def _add_to_completions_table(self, rendered):
        """Append each overlay to its rollout's images, which TRL's table logging (run right after the callbacks'
        `on_log`) turns into its `image` column. New lists: the originals may be the dataset's own objects."""
        logs = getattr(self.trainer, "_logs", None)
        if not getattr(self.trainer, "log_completions", False) or not logs:
            return
        for index, _, image, _ in rendered:
            if index is not None:  # replace the overlay of an earlier step on the same (reused) rollout
                logs["images"][index] = [im for im in logs["images"][index] if not im.info.get(_MARK)] + [image]

    def on_train_end(self, args, state, control, **kwargs):
        if self._writer is not None:
            self._writer.close()
            self._writer = None
