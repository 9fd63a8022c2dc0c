"""Video-R1-260k records -> trainer rows, so the RAL paper's RL stage (Video-R1 data) runs on the video path.

A Video-R1 record: `problem`, `data_type` ("image" | "video"), `problem_type` (multiple choice, numerical, OCR,
free-form, regression), `options` (["A. ...", ...] for multiple choice), `solution` ("<answer>X</answer>"), `path`
(the image or video, relative to a media root) and, optionally, `problem_id`, `process` (a CoT), `data_source`.
A row: a conversational `prompt` (one image or video part, then the question, the options, a per-type answer hint
and the RAL / RAL-zero format instruction), `image` or `video` (the absolute path), `solution` (the bare answer),
`problem_type`, and the record's `problem_id`, `process`, `data_source`. Rows score with
`trl_attention.rewards.video_r1_accuracy_reward`. Every malformed record is an error naming its index."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from ..rewards import ANSWER_TAG, PROMPT_FORMATS, answer_number, choice_letter, problem_type_name

__all__ = [
    "ANSWER_HINTS",
    "DEFAULT_TEMPLATE",
    "VideoR1Error",
    "convert_video_r1",
    "load_video_r1",
    "read_video_r1_records",
    "video_r1_dataset",
    "write_synthetic_video_r1",
]

REQUIRED = ("problem", "data_type", "problem_type", "solution", "path")
DATA_TYPES = ("image", "video")
# {question}, {options} ("\nOptions:\nA. ...", empty unless multiple choice), {hint} (ANSWER_HINTS) and {format}
# (the RAL or RAL-zero instruction of trl_attention.rewards.PROMPT_FORMATS, with its leading space).
DEFAULT_TEMPLATE = "{question}{options}\n{hint}{format}"
ANSWER_HINTS = {
    "multiple choice": "Answer with the letter of one option (e.g. A).",
    "numerical": "Answer with a number (e.g. 42 or 3.14).",
    "OCR": "Answer with the text exactly as it is written.",
    "free-form": "Answer in a short phrase or sentence.",
    "regression": "Answer with a number (e.g. 42 or 3.14).",
}


class VideoR1Error(ValueError):
    """A malformed Video-R1 record (or record file); the message names the record's index (and problem_id)."""


def _fail(i: int, record, message: str) -> VideoR1Error:
    pid = record.get("problem_id") if isinstance(record, dict) else None
    return VideoR1Error(f"Video-R1 record {i}{f' (problem_id {pid!r})' if pid is not None else ''}: {message}")


def _check_template(template: str) -> None:
    try:
        text = template.format(question="Q", options="", hint="", format="")
    except (KeyError, IndexError, ValueError) as err:
        raise VideoR1Error(
            f"prompt_template {template!r} cannot be filled ({type(err).__name__}: {err}); it may use {{question}}, "
            "{options}, {hint} and {format} only"
        ) from None
    if "Q" not in text:
        raise VideoR1Error(f"prompt_template {template!r} has no {{question}} field")


def _answer(i: int, record, kind: str, options) -> str:
    solution = record["solution"]
    if not isinstance(solution, str):
        raise _fail(i, record, f"solution must be a string like '<answer>B</answer>', got {type(solution).__name__}")
    tags = ANSWER_TAG.findall(solution)
    answer = (tags[-1] if tags else solution).strip()
    if not answer:
        raise _fail(i, record, f"solution {solution!r} has an empty answer")
    if kind in ("numerical", "regression") and answer_number(answer) is None:
        raise _fail(i, record, f"{kind} solution {answer!r} is not a number")
    if kind == "multiple choice":
        letters = [choice_letter(o) or chr(ord("A") + k) for k, o in enumerate(options)]
        if choice_letter(answer) not in letters:
            raise _fail(i, record, f"multiple-choice solution {answer!r} is not the letter of an option {letters}")
    return answer


def _options(i: int, record, kind: str) -> list[str]:
    options = record.get("options")
    if kind != "multiple choice":
        return []
    if not isinstance(options, list) or not options or not all(isinstance(o, str) and o.strip() for o in options):
        raise _fail(i, record, f"a multiple-choice record needs `options`, a list of strings, got {options!r}")
    return [o.strip() for o in options]


def _convert_one(i: int, record, root: Path, template: str, fmt: str, check_files: bool) -> dict:
    if not isinstance(record, dict):
        raise _fail(i, record, f"expected a mapping of field: value, got {type(record).__name__}")
    missing = [k for k in REQUIRED if record.get(k) is None]
    if missing:
        raise _fail(i, record, f"missing field(s) {missing} (a record needs {list(REQUIRED)})")
    data_type = record["data_type"]
    if data_type not in DATA_TYPES:
        raise _fail(i, record, f"unknown data_type {data_type!r}; expected 'image' or 'video'")
    try:
        kind = problem_type_name(record["problem_type"])
    except ValueError as err:
        raise _fail(i, record, str(err)) from None
    options = _options(i, record, kind)
    answer = _answer(i, record, kind, options)
    question = str(record["problem"]).strip()
    if not question:
        raise _fail(i, record, "empty problem")
    if not isinstance(record["path"], str) or not record["path"].strip():
        raise _fail(i, record, f"path must be a non-empty string, got {record['path']!r}")
    path = os.path.abspath(root / record["path"])
    if check_files and not os.path.isfile(path):
        raise _fail(i, record, f"{data_type} file {path!r} does not exist (path {record['path']!r} under {root})")
    text = template.format(
        question=question,
        options="\nOptions:\n" + "\n".join(options) if options else "",
        hint=ANSWER_HINTS[kind],
        format=fmt,
    )
    content = [{"type": data_type}, {"type": "text", "text": text}]
    return {
        "prompt": [{"role": "user", "content": content}],
        data_type: path,
        "solution": answer,
        "problem_type": kind,
        "problem_id": record.get("problem_id"),
        "process": record.get("process"),
        "data_source": record.get("data_source"),
    }


def _rows(indexed, root, template: str, ral_zero: bool, check_files: bool, as_dataset: bool):
    _check_template(template)
    fmt = PROMPT_FORMATS["answer" if ral_zero else "reasoning"]
    root = Path(root).expanduser()
    rows = [_convert_one(i, r, root, template, fmt, check_files) for i, r in indexed]
    if not rows:
        raise VideoR1Error("no Video-R1 records to convert")
    kinds = [k for k in DATA_TYPES if any(k in row for row in rows)]  # every row gets every kind's column
    rows = [{"prompt": r["prompt"], **{k: r.get(k) for k in kinds}, **r} for r in rows]
    return video_r1_dataset(rows) if as_dataset else rows


def convert_video_r1(
    records,
    root,
    *,
    prompt_template: str = DEFAULT_TEMPLATE,
    ral_zero: bool = False,
    check_files: bool = False,
    as_dataset: bool = True,
):
    """Video-R1 records -> a `datasets.Dataset` of trainer rows (a list of dicts with `as_dataset=False`).

    `root`: the directory the records' `path`s are relative to. `ral_zero`: the answer-only instruction
    (RAL-zero) instead of think-then-answer (RAL). `check_files`: also require every image / video file to exist.
    Raises VideoR1Error naming the first malformed record. Rows have an `image` column if any record is an image
    and a `video` column if any is a video (None on the rows of the other kind), so image-only data never reaches
    the video checks."""
    return _rows(enumerate(records), root, prompt_template, ral_zero, check_files, as_dataset)


def video_r1_dataset(rows):
    """Converted rows -> `datasets.Dataset`, its `image` column decoded from the paths (PIL), as TRL expects."""
    from datasets import Dataset, Image

    dataset = Dataset.from_list(list(rows))
    if "image" in dataset.column_names:
        dataset = dataset.cast_column("image", Image())
    return dataset


def read_video_r1_records(path) -> list:
    """The records of a Video-R1 file: a JSON list (Video-R1-260k.json) or JSON Lines (one record per line)."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise VideoR1Error(f"Video-R1 record file {os.fspath(path)!r} does not exist")
    text = path.read_text(encoding="utf-8")
    if path.suffix.lower() != ".jsonl" and text.lstrip().startswith("["):
        try:
            records = json.loads(text)
        except json.JSONDecodeError as err:
            raise VideoR1Error(f"{path}: not valid JSON ({err})") from None
        return records
    records = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            raise VideoR1Error(f"{path} line {number}: not valid JSON ({err})") from None
    return records


def load_video_r1(
    path,
    root=None,
    *,
    num_samples: int | None = None,
    seed: int = 0,
    prompt_template: str = DEFAULT_TEMPLATE,
    ral_zero: bool = False,
    check_files: bool = True,
    as_dataset: bool = True,
):
    """`convert_video_r1` of a record file; `root` defaults to the file's directory. `num_samples`: a seeded
    random subset of that many records, in file order (the RAL paper trains on 51.2k of the 260k); errors still
    name the records' indices in the file. `check_files` is on by default here (a real record file: a missing image
    would otherwise train until its row is sampled); `check_files=False` for records whose media come later."""
    records = read_video_r1_records(path)
    if not isinstance(records, list):
        raise VideoR1Error(f"{path}: expected a JSON list of records, got {type(records).__name__}")
    root = Path(path).expanduser().parent if root is None else root
    keep = range(len(records))
    if num_samples is not None and num_samples < len(records):
        keep = sorted(random.Random(seed).sample(keep, num_samples))
    indexed = ((i, records[i]) for i in keep)
    return _rows(indexed, root, prompt_template, ral_zero, check_files, as_dataset)


# ------------------------------------------------------------------------------------------- synthetic records

_PLAN = (
    ("video", "multiple choice"),
    ("image", "numerical"),
    ("video", "free-form"),
    ("image", "OCR"),
    ("video", "regression"),
    ("image", "multiple choice"),
)


def _clip(rng, frames: int, size: int):
    from ..tiny.data import COLORS, SHAPES
    from ..tiny.video_data import DIRECTIONS, motion_frames

    shape, still = rng.sample(SHAPES, 2)
    start, end, still_color = rng.sample(sorted(COLORS), 3)
    direction = rng.choice(sorted(DIRECTIONS))
    images, boxes = motion_frames(shape, start, end, direction, (still, still_color), frames, size, rng)
    travel = abs(boxes[-1][0] - boxes[0][0]) + abs(boxes[-1][1] - boxes[0][1])
    return {"frames": images, "shape": shape, "start": start, "end": end, "direction": direction, "travel": travel}


def _problem(data_type: str, kind: str, clip: dict, rng) -> tuple[str, list, str, object]:
    """(problem, options, answer, media) of one synthetic record: a question the clip or its first frame answers."""
    from PIL import ImageDraw

    from ..tiny.data import COLORS
    from ..tiny.video_data import DIRECTIONS

    shape, first = clip["shape"], clip["frames"][0].copy()
    if data_type == "video" and kind == "multiple choice":
        names = sorted(DIRECTIONS)
        options = [f"{chr(65 + k)}. {d}" for k, d in enumerate(names)]
        return f"Which way does the {shape} move?", options, chr(65 + names.index(clip["direction"])), clip["frames"]
    if data_type == "video" and kind == "free-form":
        return f"What colour is the {shape} in the last frame?", [], clip["end"], clip["frames"]
    if data_type == "video":  # regression
        question = f"How many pixels does the {shape} travel from the first to the last frame?"
        return question, [], str(clip["travel"]), clip["frames"]
    if kind == "numerical":
        return "How many shapes are in the image?", [], "2", first
    if kind == "OCR":
        word = rng.choice(sorted(COLORS)).upper()
        ImageDraw.Draw(first).text((2, first.height - 12), word, fill=(0, 0, 0))
        return "What word is written at the bottom of the image?", [], word, first
    colours = sorted({clip["start"], *rng.sample(sorted(set(COLORS) - {clip["start"]}), 3)})
    options = [f"{chr(65 + k)}. {c}" for k, c in enumerate(colours)]
    return f"What colour is the {shape}?", options, chr(65 + colours.index(clip["start"])), first


def write_synthetic_video_r1(
    directory, n: int = 6, seed: int = 0, frames: int = 8, size: int = 64, fps: float = 4.0
) -> Path:
    """Write `n` Video-R1-format records (a JSON list, `records.json`) with their media under `directory`: videos
    as MPEG-4 files of the tiny moving-shape clips, images as PNGs of a clip's first frame, cycling through
    (video, multiple choice), (image, numerical), (video, free-form), (image, OCR), (video, regression), (image,
    multiple choice). For the `--tiny` recipe and the tests; returns the record file's path."""
    from .frames import write_video

    directory = Path(directory)
    (directory / "videos").mkdir(parents=True, exist_ok=True)
    (directory / "images").mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    records = []
    for i in range(n):
        data_type, kind = _PLAN[i % len(_PLAN)]
        problem, options, answer, media = _problem(data_type, kind, _clip(rng, frames, size), rng)
        if data_type == "video":
            rel = f"./videos/clip_{i}.mp4"
            write_video(directory / rel, media, fps=fps)
        else:
            rel = f"./images/frame_{i}.png"
            media.save(directory / rel)
        records.append(
            {
                "problem_id": i,
                "problem": problem,
                "data_type": data_type,
                "problem_type": kind,
                "options": options,
                "process": f"<think>The {data_type} shows the answer: {answer}.</think>",
                "solution": f"<answer>{answer}</answer>",
                "path": rel,
                "data_source": "synthetic",
            }
        )
    path = directory / "records.json"
    path.write_text(json.dumps(records, indent=1), encoding="utf-8")
    return path
