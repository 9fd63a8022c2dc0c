"""Rule-based text rewards shared by the recipes, the CLI (`--rewards` names) and the demo.

Completions come in either TRL format (a string, or a conversation ending in the assistant message);
`completion_text` reads both. SAYO's attention reward and its format reward live in `trl_attention.sayo`.
"""

from __future__ import annotations

import difflib
import re
import string

__all__ = [
    "ANSWER_TAG",
    "accuracy_reward",
    "answer_format_reward",
    "answer_text",
    "char_overlap",
    "completion_text",
    "exact_answer",
    "reasoning_format_reward",
]

ANSWER_TAG = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_REASONING = re.compile(r"^\s*<think>.+?</think>\s*<answer>.+?</answer>\s*$", re.DOTALL)
_ANSWER_ONLY = re.compile(r"^\s*<answer>.+?</answer>\s*$", re.DOTALL)


def completion_text(completion) -> str:
    """Text of a completion in either TRL format: a string, or a conversation ending in the assistant message."""
    if isinstance(completion, str):
        return completion
    content = completion[-1]["content"] if completion else ""
    if isinstance(content, list):
        content = " ".join(part.get("text") or "" for part in content if part.get("type") == "text")
    return content or ""


def _normalise(text: str) -> str:
    text = text.lower().translate(str.maketrans("", "", string.punctuation))
    return " ".join(text.split())


def accuracy_reward(completions, solution, **kwargs):
    """Exact match of the <answer> content (or the whole completion if untagged) with `solution`, ignoring case,
    punctuation and extra whitespace. None (skipped by TRL) where the row has no solution."""
    rewards = []
    for completion, target in zip(completions, solution):
        if target is None:
            rewards.append(None)
            continue
        text = completion_text(completion)
        match = ANSWER_TAG.search(text)
        rewards.append(float(_normalise(match.group(1) if match else text) == _normalise(str(target))))
    return rewards


def reasoning_format_reward(completions, **kwargs) -> list[float]:
    """1.0 for exactly `<think>...</think><answer>...</answer>` (RAL's reasoning format), else 0.0."""
    return [float(bool(_REASONING.match(completion_text(c)))) for c in completions]


def answer_format_reward(completions, **kwargs) -> list[float]:
    """1.0 for exactly `<answer>...</answer>` (RAL-zero's answer-only format), else 0.0."""
    return [float(bool(_ANSWER_ONLY.match(completion_text(c)))) for c in completions]


def answer_text(value) -> str:
    """The reference answer: the first of a list (ChartQA's `label`), the <answer> tag's content if tagged."""
    if isinstance(value, (list, tuple)):
        value = value[0] if value else ""
    match = ANSWER_TAG.search(str(value))
    return (match.group(1) if match else str(value)).strip()


def exact_answer(completions, answer, **kwargs) -> list[float]:
    """1.0 if the completion's first word (letters only, case-insensitive) is the answer word, else 0.0."""
    rewards = []
    for completion, target in zip(completions, answer):
        words = re.findall(r"[a-z]+", completion_text(completion).lower())
        rewards.append(1.0 if words[:1] == [target.lower()] else 0.0)
    return rewards


def char_overlap(completions, answer, **kwargs) -> list[float]:
    """Dense shaping in [0, 1]: length of the longest common substring of the answer word and the completion
    (case-insensitive), divided by the answer's length. "gre" for "green" scores 0.6; containing the answer scores 1.
    """
    rewards = []
    for completion, target in zip(completions, answer):
        text, target = completion_text(completion).lower(), target.lower()
        match = difflib.SequenceMatcher(None, target, text, autojunk=False).find_longest_match(
            0, len(target), 0, len(text)
        )
        rewards.append(match.size / max(len(target), 1))
    return rewards


def __getattr__(name: str):  # SAYO's reward protocol and format reward moved to trl_attention.sayo
    from ._compat import moved_names

    return moved_names(__name__)(name)
