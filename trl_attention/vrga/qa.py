"""Answer image questions with and without VRGA: shared by `trl-attention vrga` and `examples/vrga_eval.py`."""

from __future__ import annotations

import re

import torch

from ..visual.checks import check_aspect_ratio, image_processor_of, open_image
from .config import VRGAConfig
from .runtime import enable_vrga

__all__ = ["answer_questions", "is_correct", "load_model"]


def load_model(path: str, device: str = "cpu", dtype: str = "auto"):
    """(model, processor) from a local directory, on sdpa attention (VRGA keeps it where it does not act)."""
    from ..loading import load_model_and_processor

    model, processor = load_model_and_processor(path, dtype, "sdpa")
    return model.to(device).eval(), processor


def _prompt(question: str, num_images: int) -> list:
    return [{"role": "user", "content": [{"type": "image"}] * num_images + [{"type": "text", "text": question}]}]


@torch.no_grad()
def answer_questions(
    model, processor, samples, config: VRGAConfig | None = None, max_new_tokens: int = 32, batch_size: int = 8
):
    """Greedy answers for `samples` = [(images, question)] (images: a PIL image or a list of them), batched with
    left padding. With `config`, VRGA is on. Returns (answers, diagnostics per sample; None entries without VRGA)."""
    tokenizer = getattr(processor, "tokenizer", processor)
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    device = next(model.parameters()).device
    answers, diagnostics = [], []
    try:
        for start in range(0, len(samples), batch_size):
            chunk = [
                (list(im) if isinstance(im, (list, tuple)) else [im], q) for im, q in samples[start:][:batch_size]
            ]
            texts = [
                processor.apply_chat_template(_prompt(q, len(im)), add_generation_prompt=True, tokenize=False)
                for im, q in chunk
            ]
            images = []  # each opened, and checked against the processor's limits, named by sample and image
            for s, (sample_images, _) in enumerate(chunk):
                for i, image in enumerate(sample_images):
                    where = f"sample {start + s}, image {i}"
                    image = open_image(image, where, decode=True)
                    check_aspect_ratio(image.size, where, image_processor_of(processor))
                    images.append(image.convert("RGB"))
            inputs = processor(text=texts, images=images, return_tensors="pt", padding=True).to(device)
            kwargs = {"max_new_tokens": max_new_tokens, "do_sample": False}
            if config is None:
                out = model.generate(**inputs, **kwargs)
                diagnostics += [None] * len(chunk)
            else:
                with enable_vrga(model, config) as vrga:
                    out = model.generate(**inputs, **kwargs)
                diagnostics += vrga.diagnostics
            new = out[:, inputs["input_ids"].shape[1] :]
            answers += [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    finally:
        tokenizer.padding_side = side
    return answers, diagnostics


def _words(text: str) -> list:
    return re.findall(r"[a-z0-9]+", text.lower())


def is_correct(prediction: str, answer: str) -> bool:
    """True when the answer's words appear, in order and contiguous, among the prediction's words (case-blind)."""
    want, got = _words(answer), _words(prediction)
    return bool(want) and any(got[i : i + len(want)] == want for i in range(len(got) - len(want) + 1))
