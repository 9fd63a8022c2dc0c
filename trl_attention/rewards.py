"""Rule-based text rewards shared by the recipes, the CLI (`--rewards` names) and the demo.

Completions come in either TRL format (a string, or a conversation ending in the assistant message);
`completion_text` reads both. SAYO's attention reward and its format reward live in `trl_attention.sayo`. `video_r1_accuracy_reward` scores
Video-R1's five problem types, each by its own rule (docs/video.md#video-r1-records).
"""

from __future__ import annotations

import difflib
import re
import string

__all__ = [
    "ANSWER_TAG",
    "PROMPT_FORMATS",
    "PROBLEM_TYPES",
    "accuracy_reward",
    "answer_format_reward",
    "answer_number",
    "answer_text",
    "char_overlap",
    "choice_letter",
    "completion_text",
    "exact_answer",
    "edit_distance",
    "problem_type_name",
    "reasoning_format_reward",
    "rouge_l_f1",
    "video_r1_accuracy_reward",
]

# The instruction appended to a question per prompt format, and the format each format reward checks: "reasoning"
# (RAL) -> reasoning_format_reward, "answer" (RAL-zero) -> answer_format_reward, "none" leaves the question as it is.
PROMPT_FORMATS = {
    "reasoning": " Think step by step inside <think></think>, then give the final answer inside <answer></answer>.",
    "answer": " Give only the final answer inside <answer></answer>.",
    "none": "",
}
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


# ------------------------------------------------------------------------------- Video-R1 accuracy, per problem type

PROBLEM_TYPES = ("multiple choice", "numerical", "OCR", "free-form", "regression")  # Video-R1's spellings
_TYPE_KEYS = {" ".join(t.lower().replace("-", " ").split()): t for t in PROBLEM_TYPES}
_LETTER_ALONE = re.compile(r"\(?([A-Za-z])\)?\.?")  # "B", "b", "(B)", "B."
_LETTER_LEAD = re.compile(r"\(?([A-Z])[.):](?:\s|$)")  # "B. a cat", "B) a cat", "(B) a cat"
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")


def problem_type_name(value) -> str:
    """Video-R1's spelling of a problem type, given in any case with spaces, '-' or '_'; ValueError otherwise."""
    key = " ".join(str(value).lower().replace("-", " ").replace("_", " ").split())
    if key not in _TYPE_KEYS:
        raise ValueError(f"unknown problem_type {value!r}; expected one of {list(PROBLEM_TYPES)}")
    return _TYPE_KEYS[key]


def edit_distance(a, b) -> int:
    """Levenshtein distance between two sequences (strings, or lists of words): insertions, deletions and
    substitutions each cost 1. Two rows of the DP table, O(len(a) * len(b)) time."""
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def _lcs(a, b) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, 1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l_f1(prediction: str, reference: str) -> float:
    """ROUGE-L F1 over words (lower case, punctuation dropped): LCS length l, precision l / len(prediction),
    recall l / len(reference), F1 = 2PR / (P + R). 0.0 when either side has no word."""
    pred, ref = _normalise(prediction).split(), _normalise(reference).split()
    common = _lcs(pred, ref)
    if not common:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


def choice_letter(text: str) -> str | None:
    """The option letter a multiple-choice answer gives ("B", "b)", "B. a dog" -> "B"), None when there is none."""
    text = text.strip()
    match = _LETTER_ALONE.fullmatch(text) or _LETTER_LEAD.match(text)
    return match.group(1).upper() if match else None


def answer_number(text: str) -> float | None:
    """The number a numerical answer is ("1,024" -> 1024.0), None when the text is not one number."""
    text = text.strip().replace(",", "")  # thousands separators: "1,024"
    if not _NUMBER.fullmatch(text):
        return None
    return float(text)


def _score(kind: str, pred: str, target: str) -> float:
    if kind == "multiple choice":
        letter = choice_letter(pred)
        return float(letter is not None and letter == choice_letter(target))
    if kind in ("numerical", "regression"):
        value, truth = answer_number(pred), answer_number(target)
        if value is None or truth is None:
            return 0.0
        if kind == "numerical":
            return float(abs(round(value, 2) - round(truth, 2)) < 1e-9)
        if truth == 0:
            return float(value == 0)
        return min(max(1.0 - abs(value - truth) / abs(truth), 0.0), 1.0)
    if kind == "OCR":
        ref, hyp = target.lower().split(), pred.lower().split()
        if not ref:
            return float(not hyp)
        return max(0.0, 1.0 - edit_distance(ref, hyp) / len(ref))
    return rouge_l_f1(pred, target)  # free-form


def video_r1_accuracy_reward(completions, solution, problem_type, **kwargs) -> list[float | None]:
    """Video-R1's accuracy reward: the completion's last <answer>...</answer> scored against `solution` (tagged or
    bare) by the row's `problem_type`:

    - multiple choice: 1.0 if the option letter matches ("B", "(B)", "B." or "B. text"; a lone letter in any case);
    - numerical: 1.0 if both parse as numbers and are equal once rounded to 2 decimals;
    - regression: 1 - |pred - gt| / |gt| clipped to [0, 1] (gt = 0: 1.0 only for pred = 0);
    - OCR: 1 - word error rate (word-level edit distance / reference words, case-insensitive), floored at 0;
    - free-form: ROUGE-L F1 over lower-cased words without punctuation.

    A completion without an answer tag, with an empty one, or with no number where one is needed scores 0.0; a
    row without a solution gets None (TRL skips it); an unknown problem_type is a ValueError (a dataset bug)."""
    rewards = []
    for completion, target, kind in zip(completions, solution, problem_type, strict=True):
        if target is None:
            rewards.append(None)
            continue
        kind = problem_type_name(kind)
        tags = ANSWER_TAG.findall(completion_text(completion))
        pred = tags[-1].strip() if tags else ""
        rewards.append(_score(kind, pred, answer_text(target)) if pred else 0.0)
    return rewards
