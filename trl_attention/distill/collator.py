"""Batches of conversational image / video datasets for distillation: [left-padded prompt | right-padded completion].

Rows hold either `messages` (the last message is the assistant's completion) or `prompt` + `completion`
(conversational lists, or a plain string completion), their images in `images` (a list) or `image` (one), and their
videos in `videos` / `video` (frames or file paths; see `trl_attention.video`). The fixed prompt width lets GKD's
on-policy generation and the training forward share the visual token types: `prompt_mm_token_type_ids` (1 image,
2 video placeholders) covers the prompt, the completion is text.

Batches without a video go through the processor as before. A batch with a video row is encoded by the video
package (`encode_row`, `tokenize_visual_prompts`): transformers' video processors need torchvision, and Qwen's
processors would not expand the placeholders of frames they did not decode.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..visual.checks import check_row_images, image_processor_of, open_image
from ..visual.rows import count_parts, first_rows, row_visuals
from ..trl_internals import pad
from ..video.arguments import VideoArguments
from ..video.encode import tokenize_visual_prompts
from ..video.rows import VideoError, encode_row

__all__ = ["VisionDistillationCollator", "is_processor", "validate_distillation_dataset"]


def is_processor(processing_class) -> bool:
    """A multimodal processor (tokenizer + image processor), as opposed to a plain tokenizer."""
    return hasattr(processing_class, "tokenizer") and hasattr(processing_class, "image_processor")


def _split(example: dict, where: str) -> tuple[list, list]:
    if example.get("messages") is not None:
        messages = example["messages"]
        if not isinstance(messages, list) or len(messages) < 2 or messages[-1].get("role") != "assistant":
            raise ValueError(f"{where}: `messages` must be a list ending with an assistant message")
        return messages[:-1], messages[-1:]
    if example.get("prompt") is None or example.get("completion") is None:
        raise ValueError(f"{where}: needs a `messages` column, or `prompt` and `completion` columns")
    prompt, completion = example["prompt"], example["completion"]
    if isinstance(completion, str):
        completion = [{"role": "assistant", "content": [{"type": "text", "text": completion}]}]
    if not isinstance(prompt, list) or not isinstance(completion, list):
        raise TypeError(f"{where}: `prompt` and `completion` must be conversational (lists of messages)")
    return prompt, completion


def _videos(example: dict, where: str) -> list:
    """The row's videos, frames given as {"bytes", "path"} dicts opened: `datasets` stores a `videos` column (lists
    of frame lists) that way, as it does not infer nested Image features."""
    return [
        [
            open_image(f, f"{where}, video {v}, frame {i}", decode=True) if isinstance(f, dict) else f
            for i, f in enumerate(video)
        ]
        if isinstance(video, (list, tuple))
        else video
        for v, video in enumerate(row_visuals(example)[1])
    ]


def _where(prefix: str, example: dict, index: int) -> str:
    return f"{prefix} {index}" + next(
        (f" ({c}={example[c]!r})" for c in ("row_id", "id") if example.get(c) is not None), ""
    )


def validate_distillation_dataset(dataset, processor=None, image_rows: int | None = 256) -> None:
    """Check the rows' conversation structure (every row of a map-style dataset, the first `image_rows` of a
    streaming one) and the images of the first `image_rows` rows (None inside `images`, unreadable or truncated
    files, aspect ratios `processor`'s image processor rejects); the error names the row and the column."""
    columns = getattr(dataset, "column_names", None)
    if columns is None:  # an IterableDataset from a generator
        first = next(iter(dataset), None)
        columns = [] if first is None else list(first)
    wanted = [c for c in ("messages", "prompt", "completion") if c in columns]
    if not wanted:
        raise ValueError(
            f"distillation dataset has columns {columns}: it needs `messages`, or `prompt` and "
            "`completion` (conversational), with images in `images` or `image`"
        )
    streaming = not hasattr(dataset, "__len__")
    structure = dataset.select_columns(wanted) if hasattr(dataset, "select_columns") and not streaming else None
    for index, row in first_rows(dataset, image_rows) if structure is None else enumerate(structure):
        _split(row, f"dataset row {index}")
    if "images" in columns or "image" in columns:
        image_processor = image_processor_of(processor)
        for index, row in first_rows(dataset, image_rows):
            check_row_images(row, _where("dataset row", row, index), image_processor, prompt_parts=False)


@dataclass
class VisionDistillationCollator:
    """Tokenise prompts with the processor (images and videos expanded to their placeholder tokens), completions as
    text. `video_args` sets how videos are sampled and resized; the placeholder tokens default to the processor's
    (the trainer sets them from the model's config)."""

    processor: object
    max_length: int | None = None
    video_args: VideoArguments | None = None
    image_token: str | None = None
    video_token: str | None = None

    def _placeholders(self) -> tuple[str, str]:
        image = self.image_token or getattr(self.processor, "image_token", None) or "<|image_pad|>"
        video = self.video_token or getattr(self.processor, "video_token", None) or "<|video_pad|>"
        return image, video

    def _video_prompts(self, prompts, rows) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Left-padded prompt ids, mask and visual tensors of a batch with a video row (the video package's
        encoder and placeholder expansion; token types from the ids). `rows`: each row's opened visuals."""
        args = self.video_args if self.video_args is not None else VideoArguments()
        cache, visuals = {}, []
        for index, row in enumerate(rows):
            try:
                visuals.append(encode_row(index, row, self.processor, args, cache))
            except VideoError as err:
                raise VideoError(f"batch example {str(err).removeprefix('row ')}") from err
        ids, fields = tokenize_visual_prompts(self.processor, prompts, visuals, *self._placeholders())
        types = fields.pop("mm_token_type_ids")
        pad_id = self.processor.tokenizer.pad_token_id
        prompt_ids = pad([torch.tensor(i) for i in ids], padding_value=pad_id, padding_side="left")
        prompt_mask = pad([torch.ones(len(i), dtype=torch.long) for i in ids], padding_value=0, padding_side="left")
        fields["mm_token_type_ids"] = pad([torch.tensor(t) for t in types], padding_value=0, padding_side="left")
        return prompt_ids, prompt_mask, fields

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        prompts, prompt_texts, completion_texts, images, visual_rows = [], [], [], [], []
        image_processor = image_processor_of(self.processor)
        for index, example in enumerate(examples):
            where = _where("batch example", example, index)
            prompt, completion = _split(example, where)
            example_images = check_row_images(example, where, image_processor, prompt_parts=False)
            videos = _videos(example, where)
            for kind, items in (("image", example_images), ("video", videos)):
                if count_parts(prompt, kind) != len(items):
                    raise ValueError(
                        f"{where}: the prompt has {count_parts(prompt, kind)} {kind} placeholder(s) but the row "
                        f"carries {len(items)} {kind}(s)"
                    )
            prompt_text = self.processor.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
            full_text = self.processor.apply_chat_template(prompt + completion, tokenize=False)
            if not full_text.startswith(prompt_text):
                raise ValueError(f"{where}: the chat template's prompt is not a prefix of the whole conversation")
            prompts.append(prompt)
            prompt_texts.append(prompt_text)
            completion_texts.append(full_text[len(prompt_text) :])
            images.append(example_images)
            visual_rows.append({"images": example_images, "videos": videos, "video_fps": example.get("video_fps")})
        if any(row["videos"] for row in visual_rows):
            prompt_ids, prompt_mask, batch = self._video_prompts(prompts, visual_rows)
        else:
            kwargs = {"images": images} if any(images) else {}
            batch = self.processor(text=prompt_texts, padding=True, padding_side="left", return_tensors="pt", **kwargs)
            prompt_ids, prompt_mask = batch["input_ids"], batch["attention_mask"]
        tokenizer = self.processor.tokenizer
        width = prompt_ids.size(1)
        budget = None if self.max_length is None else self.max_length - width
        if budget is not None and budget <= 0:
            raise ValueError(
                f"prompts of {width} tokens (with image / video tokens) leave no room within max_length="
                f"{self.max_length}; raise max_length"
            )
        completions = [
            torch.tensor(ids[:budget] if budget is not None else ids, dtype=torch.long)
            for ids in tokenizer(completion_texts, add_special_tokens=False)["input_ids"]
        ]
        for index, text in enumerate(completion_texts):  # a placeholder there would have no features
            for kind, placeholder in zip(("image", "video"), self._placeholders()):
                if placeholder in text:
                    raise ValueError(
                        f"batch example {index}: the completion contains the {kind} placeholder {placeholder!r}"
                    )
        completion_ids = pad(completions, padding_value=tokenizer.pad_token_id, padding_side="right")
        completion_mask = pad([torch.ones_like(c) for c in completions], padding_value=0, padding_side="right")
        input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
        labels = torch.cat(
            [torch.full_like(prompt_ids, -100), completion_ids.masked_fill(completion_mask == 0, -100)], dim=1
        )
        out = {
            "input_ids": input_ids,
            "attention_mask": torch.cat([prompt_mask, completion_mask], dim=1),
            "labels": labels,
            "prompts": prompt_ids,
            "prompt_attention_mask": prompt_mask,
        }
        for key in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "second_per_grid_ts"):
            if key in batch:
                out[key] = batch[key]
        if "mm_token_type_ids" in batch:
            out["prompt_mm_token_type_ids"] = batch["mm_token_type_ids"]
        return out
