"""What the `grpo` CLI and the example scripts share: dataset preparation, rewards by name, the prompt formats.

Prompt formats (RAL, docs/papers.md section 1; defined with their rewards in `trl_attention.rewards`): "reasoning"
asks for `<think>...</think><answer>...</answer>` (RAL), "answer" for `<answer>...</answer>` only (RAL-zero), "none"
leaves the question as it is.

Importing this module is cheap (no torch, datasets or TRL): `trl-attention grpo --help` lists the prompt formats and
reward names from here; the SAYO reward and the synthetic data are imported when they are used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from ..rewards import (
    PROMPT_FORMATS,
    accuracy_reward,
    answer_format_reward,
    answer_text,
    char_overlap,
    exact_answer,
    reasoning_format_reward,
    video_r1_accuracy_reward,
)
from ..visual.rows import VISUAL_COLUMNS

if TYPE_CHECKING:
    from datasets import Dataset

__all__ = [
    "PROMPT_FORMATS",
    "REWARDS",
    "prepare_dataset",
    "resolve_rewards",
    "synthetic_vqa",
]

# Column names tried, in order, when the dataset does not say (public VQA / reasoning datasets).
_QUESTION_COLUMNS = ("problem", "question", "query")
_ANSWER_COLUMNS = ("solution", "answer", "label", "answers")


def _region_attention_reward(prompt_format: str):
    from ..sayo.reward import RegionAttentionReward  # torch: imported when the reward is asked for

    return RegionAttentionReward()


def _sayo_format_reward(prompt_format: str):
    from ..sayo.reward import format_reward

    return format_reward


# {name: prompt_format -> reward callable (None when the name does not apply to that format)}
REWARDS = {
    "accuracy": lambda fmt: accuracy_reward,
    "format": lambda fmt: {"reasoning": reasoning_format_reward, "answer": answer_format_reward}.get(fmt),
    "sayo": _region_attention_reward,
    "sayo_format": _sayo_format_reward,
    "answer_match": lambda fmt: exact_answer,
    "char_overlap": lambda fmt: char_overlap,
    "video_r1_accuracy": lambda fmt: video_r1_accuracy_reward,  # Video-R1's problem types (video.md)
}


def resolve_rewards(names, prompt_format: str = "answer") -> list:
    """Reward callables for `names`: keys of `REWARDS` or dotted import paths (`my_pkg.rewards.func`)."""
    if isinstance(names, str):  # `rewards: accuracy` in a YAML config: one name, not its letters
        names = [names]
    if not names:
        raise ValueError(f"no reward given; choose from {sorted(REWARDS)} or a dotted import path")
    rewards = []
    for name in names:
        if name in REWARDS:
            reward = REWARDS[name](prompt_format)
            if reward is None:
                raise ValueError(f"reward 'format' needs prompt_format 'reasoning' or 'answer', got {prompt_format!r}")
        elif "." in name:
            module, _, attr = name.rpartition(".")
            try:
                reward = getattr(importlib.import_module(module), attr)
            except (ImportError, AttributeError) as error:
                raise ValueError(f"cannot import reward {name!r}: {error}") from error
        else:
            raise ValueError(f"unknown reward {name!r}; choose from {sorted(REWARDS)} or a dotted import path")
        rewards.append(reward)
    return rewards


def _pick(columns, given, candidates, what):
    if given is not None:
        if given not in columns:
            raise ValueError(f"{what} column {given!r} is not in the dataset (columns: {sorted(columns)})")
        return given
    found = next((c for c in candidates if c in columns), None)
    if found is None:
        raise ValueError(f"no {what} column: tried {list(candidates)} (columns: {sorted(columns)}); name it")
    return found


def prepare_dataset(
    dataset: Dataset,
    prompt_format: str = "answer",
    question_column: str | None = None,
    answer_column: str | None = None,
    image_column: str | None = None,
) -> Dataset:
    """A VQA-style dataset as TRL conversational prompts: `prompt` (one image part per image and one video part per
    video, the question plus the format instruction), the visual columns and `solution` (the bare answer). Rows that already have a `prompt` keep it
    (then only `solution` is derived). Columns are guessed (question: problem/question/query; answer:
    solution/answer/label/answers; visual: image/images/video/videos) unless named."""
    if prompt_format not in PROMPT_FORMATS:
        raise ValueError(f"prompt_format must be one of {sorted(PROMPT_FORMATS)}, got {prompt_format!r}")
    columns = set(dataset.column_names)
    answer = _pick(columns, answer_column, _ANSWER_COLUMNS, "answer")
    if "prompt" in columns and question_column is None:
        return dataset.map(lambda row: {"solution": answer_text(row[answer])})
    question = _pick(columns, question_column, _QUESTION_COLUMNS, "question")
    if image_column is not None:
        visual = [_pick(columns, image_column, (), "image")]
    else:
        visual = [c for c in VISUAL_COLUMNS if c in columns]
        if not visual:
            raise ValueError(f"no image or video column: tried {list(VISUAL_COLUMNS)} (columns: {sorted(columns)})")
    suffix = PROMPT_FORMATS[prompt_format]

    def convert(row):
        content = []
        for column in visual:  # images first, then videos; a None (the other kind's rows) adds no part
            value = row[column]
            if value is None:
                continue
            kind = "video" if column.startswith("video") else "image"
            many = column == "videos" or (kind == "image" and isinstance(value, list))
            content += [{"type": kind}] * (len(value) if many else 1)
        content.append({"type": "text", "text": str(row[question]).strip() + suffix})
        return {"prompt": [{"role": "user", "content": content}], "solution": answer_text(row[answer])}

    return dataset.map(convert)


def synthetic_vqa(n: int, seed: int = 0) -> Dataset:
    """The tiny grounding data as a raw VQA dataset (`question`, `answer`, `image`, `boxes`, ...), so `--tiny` runs
    go through the same `prepare_dataset` path as a hub dataset."""
    from ..tiny import make_grounding_dataset

    data = make_grounding_dataset(n, seed=seed)
    questions = [next(p["text"] for p in row[0]["content"] if p["type"] == "text") for row in data["prompt"]]
    return data.remove_columns(["prompt", "solution"]).add_column("question", questions)


# Names this module imported before it became light, still reachable as attributes: (module, attribute).
_LAZY = {
    "Dataset": ("datasets", "Dataset"),
    "RegionAttentionReward": ("trl_attention.sayo.reward", "RegionAttentionReward"),
    "sayo_format_reward": ("trl_attention.sayo.reward", "format_reward"),
    "make_grounding_dataset": ("trl_attention.tiny", "make_grounding_dataset"),
}


def __getattr__(name: str):
    if name in _LAZY:
        module, attribute = _LAZY[name]
        return getattr(importlib.import_module(module), attribute)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
