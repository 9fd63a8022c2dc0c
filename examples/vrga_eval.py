"""Accuracy with and without VRGA on a JSONL of {"image": path, "question": ..., "answer": ...}.

    python examples/vrga_eval.py --model DIR --data questions.jsonl [--gamma 0.5] [--limit 100]

Image paths are relative to the JSONL's folder unless absolute (`image` may also be a list of paths). A prediction
is correct when the answer's words appear contiguously in it, case-blind (`trl_attention.vrga.qa.is_correct`).
Every `VRGAConfig` field is a flag. Prints both accuracies and the change.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

from PIL import Image

from trl_attention.cli import add_dataclass_arguments
from trl_attention.vrga import VRGAConfig
from trl_attention.vrga.qa import answer_questions, is_correct, load_model


def read_jsonl(path: Path, limit: int | None = None) -> list:
    """[(images, question, answer)]; a clear error names the line of a bad record."""
    rows = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        record = json.loads(line)
        missing = {"image", "question", "answer"} - set(record)
        if missing:
            raise ValueError(f"{path}:{number}: missing field(s) {sorted(missing)}")
        paths = record["image"] if isinstance(record["image"], list) else [record["image"]]
        images = [Image.open(p if Path(p).is_absolute() else path.parent / p).convert("RGB") for p in paths]
        rows.append((images, record["question"], str(record["answer"])))
        if limit is not None and len(rows) >= limit:
            break
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True, type=Path)
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--device", default="cpu")
    add_dataclass_arguments(parser, VRGAConfig)
    args = parser.parse_args(argv)
    config = VRGAConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(VRGAConfig)})
    rows = read_jsonl(args.data, args.limit)
    model, processor = load_model(args.model, args.device)
    samples = [(images, question) for images, question, _ in rows]
    results = {}
    for name, cfg in (("plain", None), ("vrga", config)):
        answers, _ = answer_questions(model, processor, samples, cfg, args.max_new_tokens, args.batch_size)
        results[name] = sum(is_correct(a, row[2]) for a, row in zip(answers, rows)) / max(len(rows), 1)
    print(f"samples: {len(rows)}")
    print(f"accuracy plain: {results['plain']:.4f}")
    print(
        f"accuracy vrga:  {results['vrga']:.4f}  (gamma={config.gamma}, change {results['vrga'] - results['plain']:+.4f})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
