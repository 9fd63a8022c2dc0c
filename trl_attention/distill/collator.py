"""Batches of conversational image datasets for distillation: [left-padded prompt | right-padded completion].

Rows hold either `messages` (the last message is the assistant's completion) or `prompt` + `completion`
(conversational lists, or a plain string completion), and their images in `images` (a list) or `image` (one).
The fixed prompt width lets GKD's on-policy generation and the training forward share the image token types:
`prompt_mm_token_type_ids` covers the prompt, the completion is text.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..sayo.checks import check_aspect_ratio, first_rows, image_processor_of, open_image
from ..trl_internals import pad

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


def _count_image_slots(messages: list) -> int:
    return sum(
        1
        for message in messages
        if isinstance(message.get("content"), list)
        for part in message["content"]
        if isinstance(part, dict) and part.get("type") == "image"
    )


def _images(example: dict) -> list:
    if example.get("images") is not None:
        return list(example["images"])
    return [] if example.get("image") is None else [example["image"]]


def _check_images(example: dict, where: str, image_processor) -> list:
    """The example's images, opened and decoded (path strings and {"bytes", "path"} dicts loaded), each checked
    against the processor's aspect-ratio limit; a ValueError names `where` and the column."""
    column = "images" if example.get("images") is not None else "image"
    checked = []
    for i, image in enumerate(_images(example)):
        name = f"{where}, column `{column}`, image {i}"
        if image is None:
            raise ValueError(f"{name}: the image is None (a text-only row has `image: None` or `images: []`)")
        opened = open_image(image, name, decode=True)
        check_aspect_ratio(opened.size, name, image_processor)
        checked.append(opened)
    return checked


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
            _check_images(row, _where("dataset row", row, index), image_processor)


@dataclass
class VisionDistillationCollator:
    """Tokenise prompts with the processor (images expanded to their placeholder tokens), completions as text."""

    processor: object
    max_length: int | None = None

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        prompt_texts, completion_texts, images = [], [], []
        image_processor = image_processor_of(self.processor)
        for index, example in enumerate(examples):
            where = _where("batch example", example, index)
            prompt, completion = _split(example, where)
            example_images = _check_images(example, where, image_processor)
            if _count_image_slots(prompt) != len(example_images):
                raise ValueError(
                    f"{where}: the prompt has {_count_image_slots(prompt)} image placeholder(s) but the row carries "
                    f"{len(example_images)} image(s)"
                )
            prompt_text = self.processor.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
            full_text = self.processor.apply_chat_template(prompt + completion, tokenize=False)
            if not full_text.startswith(prompt_text):
                raise ValueError(f"{where}: the chat template's prompt is not a prefix of the whole conversation")
            prompt_texts.append(prompt_text)
            completion_texts.append(full_text[len(prompt_text) :])
            images.append(example_images)
        kwargs = {"images": images} if any(images) else {}
        batch = self.processor(text=prompt_texts, padding=True, padding_side="left", return_tensors="pt", **kwargs)
        tokenizer = self.processor.tokenizer
        prompt_ids, prompt_mask = batch["input_ids"], batch["attention_mask"]
        width = prompt_ids.size(1)
        budget = None if self.max_length is None else self.max_length - width
        if budget is not None and budget <= 0:
            raise ValueError(
                f"prompts of {width} tokens (with image tokens) leave no room within max_length="
                f"{self.max_length}; raise max_length"
            )
        completions = [
            torch.tensor(ids[:budget] if budget is not None else ids, dtype=torch.long)
            for ids in tokenizer(completion_texts, add_special_tokens=False)["input_ids"]
        ]
        placeholder = getattr(self.processor, "image_token", None)
        for index, text in enumerate(completion_texts):
            if placeholder and placeholder in text:
                raise ValueError(
                    f"batch example {index}: the completion contains the image placeholder {placeholder!r}"
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
        for key in ("pixel_values", "image_grid_thw"):
            if key in batch:
                out[key] = batch[key]
        if "mm_token_type_ids" in batch:
            out["prompt_mm_token_type_ids"] = batch["mm_token_type_ids"]
        return out
