"""Held-out measurement of a grounding VLM (the demo and `benchmarks/evidence.py`): greedy accuracy, and where the
answer tokens look.

For each held-out row: greedy generation, exact-match accuracy (`trl_attention.rewards.accuracy_reward`), then one
captured forward over prompt + completion (`trl_attention.plotting.capture_image_attention`, the demo's heatmap
capture) giving the final-layer head-averaged attention of every completion token over the image's visual tokens.
The rows kept are the queries that predict the answer words (the token before the answer, up to the one before
`</answer>`; all completion tokens when the answer tag is missing). On their mean grid:

- region share: attention on the target box's visual tokens / attention on all visual tokens (`sayo/region_share`'s
  definition; box -> tokens with `trl_attention.tiny.box_to_token_mask`, SAYO's mapping);
- lift: region share / the box's share of the image's tokens (1 = looking as at a uniform spread);
- entropy: of that attention renormalised over the image's tokens (nats; ln 64 = 4.16 for 64 tokens uniform);
- image mass: attention on all visual tokens (the rest is on text).
"""

from __future__ import annotations

import math

import numpy as np
import torch

from trl_attention.plotting import capture_image_attention
from trl_attention.rewards import ANSWER_TAG, accuracy_reward, answer_format_reward
from trl_attention.tiny import box_to_token_mask

METRICS = ("accuracy", "region_share", "lift", "entropy", "image_mass")


@torch.no_grad()
def generate(model, processor, dataset, max_new_tokens: int, batch_size: int = 16) -> list[str]:
    """Greedy completions (text, special tokens dropped) of the dataset's prompts, left-padded batches."""
    model.eval()
    tok = processor.tokenizer
    texts = []
    for start in range(0, len(dataset), batch_size):
        rows = dataset.select(range(start, min(start + batch_size, len(dataset))))
        prompts = [
            processor.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in rows["prompt"]
        ]
        inputs = processor(
            text=prompts, images=[[im.convert("RGB")] for im in rows["image"]], padding=True, return_tensors="pt"
        )
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tok.pad_token_id)
        texts += tok.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    return texts


def answer_rows(tokenizer, completion: str, n_rows: int) -> slice:
    """Rows (query positions of the completion) that predict the answer words; all rows without an answer tag."""
    match = ANSWER_TAG.search(completion)
    if match is None or not match.group(1).strip():
        return slice(0, n_rows)
    prefix = tokenizer(completion[: match.start(1)], add_special_tokens=False)["input_ids"]
    content = tokenizer(match.group(1), add_special_tokens=False)["input_ids"]
    full = tokenizer(completion, add_special_tokens=False)["input_ids"]
    if full[: len(prefix) + len(content)] != prefix + content:  # BPE merged across the boundary
        return slice(0, n_rows)
    return slice(len(prefix) - 1, len(prefix) + len(content) - 1)


def attention_metrics(model, processor, row: dict, completion: str) -> dict:
    """Region share, lift, entropy and image mass of the answer tokens' attention for one row."""
    if not completion:
        return dict.fromkeys(("region_share", "lift", "entropy", "image_mass"), math.nan)
    att = capture_image_attention(model, processor, row["prompt"], row["image"], completion=completion)
    grid = att.select(answer_rows(processor.tokenizer, completion, att.grids.shape[0]))
    rows, cols = grid.shape
    box = box_to_token_mask(row["box"], att.image.size, (1, 2 * rows, 2 * cols)).numpy().reshape(rows, cols)
    mass = float(grid.sum())
    p = grid / max(mass, 1e-12)
    share = float(p[box].sum())
    return {
        "region_share": share,
        "lift": share / (box.sum() / box.size),
        "entropy": float(-(p * np.log(np.clip(p, 1e-12, None))).sum()),
        "image_mass": mass,
    }


def _answer_grid(model, processor, row: dict, completion: str) -> np.ndarray:
    """The answer tokens' mean attention over the image's tokens (as `attention_metrics` reads it), normalised."""
    att = capture_image_attention(model, processor, row["prompt"], row["image"], completion=completion)
    grid = att.select(answer_rows(processor.tokenizer, completion, att.grids.shape[0])).astype(np.float64)
    return grid / max(float(grid.sum()), 1e-12)


def attention_shift(model, reference, processor, dataset, completions) -> float:
    """Mean over rows of JSD(model's answer-token image attention || reference's), both on the row's prompt plus
    `completions[i]` (the model's own), in nats (<= ln 2): how far training moved where the answer looks."""
    values = []
    for i, completion in enumerate(completions):
        if not completion:
            continue
        p = _answer_grid(model, processor, dataset[i], completion).ravel()
        q = _answer_grid(reference, processor, dataset[i], completion).ravel()
        m = 0.5 * (p + q)
        with np.errstate(divide="ignore", invalid="ignore"):
            kl_p = np.where(p > 0, p * np.log(p / np.where(m > 0, m, 1)), 0.0).sum()
            kl_q = np.where(q > 0, q * np.log(q / np.where(m > 0, m, 1)), 0.0).sum()
        values.append(0.5 * (kl_p + kl_q))
    return float(np.mean(values)) if values else math.nan


def evaluate(model, processor, dataset, max_new_tokens: int) -> dict:
    """Means over the held-out rows of `METRICS` (accuracy from greedy generation), `answer_format` (the share of
    completions exactly `<answer>...</answer>`) and one example completion."""
    if len(dataset) == 0:
        raise ValueError("evaluate: the held-out dataset is empty (there is no row to measure)")
    completions = generate(model, processor, dataset, max_new_tokens)
    correct = accuracy_reward(completions, dataset["solution"])
    per_row = [attention_metrics(model, processor, dataset[i], c) for i, c in enumerate(completions)]
    result = {"accuracy": float(np.mean(correct)), "answer_format": float(np.mean(answer_format_reward(completions)))}
    for key in METRICS[1:]:
        values = [r[key] for r in per_row if math.isfinite(r[key])]
        result[key] = float(np.mean(values)) if values else math.nan
    result["example"] = completions[0]
    return result


def box_token_share(dataset, image_size: int) -> float:
    """Mean share of the image's visual tokens that the target box covers (the region share of uniform attention)."""
    grid = image_size // 14
    return float(np.mean([box_to_token_mask(b, image_size, (1, grid, grid)).float().mean() for b in dataset["box"]]))


def majority_accuracy(train, held) -> float:
    """Held-out accuracy of always giving the commonest training answer of the question's kind (its first three
    words: "What colour is" / "What shape is"): the accuracy a model that ignores the image can reach."""
    from collections import Counter

    def kind(row):
        return " ".join(next(p["text"] for p in row["prompt"][0]["content"] if p["type"] == "text").split()[:3])

    counts: dict[str, Counter] = {}
    for row in train:
        counts.setdefault(kind(row), Counter())[row["answer"]] += 1
    best = {k: c.most_common(1)[0][0] for k, c in counts.items()}
    hits = [best.get(kind(row)) == row["answer"] for row in held]
    return float(np.mean(hits)) if hits else math.nan
