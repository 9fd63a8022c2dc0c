"""Accuracy without VRGA and with each VRGA preset on a JSONL of {"image": path, "question": ..., "answer": ...}.

    python examples/vrga_eval.py --model DIR --data questions.jsonl [--preset reference|paper] [--gamma 0.5]

Image paths are relative to the JSONL's folder unless absolute (`image` may also be a list of paths). A prediction
is correct when the answer's words appear contiguously in it, case-blind (`trl_attention.vrga.qa.is_correct`).
Every `VRGAConfig` field is a flag. Without --preset both presets run ("reference": what the released code computes;
"paper": the paper's rules; docs/vrga-fidelity.md). Prints each accuracy, its change, and per preset the mean
number of boosted heads (heads boosted at least once) and of focus tokens per sample.
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
from trl_attention.vrga.config import PRESETS
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
    parser.set_defaults(preset=None)  # no --preset: evaluate both
    args = parser.parse_args(argv)
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(VRGAConfig) if f.name != "preset"}
    configs = {name: VRGAConfig(preset=name, **values) for name in ([args.preset] if args.preset else PRESETS)}
    rows = read_jsonl(args.data, args.limit)
    model, processor = load_model(args.model, args.device)
    samples = [(images, question) for images, question, _ in rows]
    accuracy, means = {}, {}
    for name, cfg in {"plain": None, **configs}.items():
        answers, diagnostics = answer_questions(model, processor, samples, cfg, args.max_new_tokens, args.batch_size)
        accuracy[name] = sum(is_correct(a, row[2]) for a, row in zip(answers, rows)) / max(len(rows), 1)
        means[name] = mean_counts(diagnostics)
    print(f"samples: {len(rows)}")
    print(f"accuracy {'plain:':<11} {accuracy['plain']:.4f}")
    for name, cfg in configs.items():
        change = accuracy[name] - accuracy["plain"]
        print(f"accuracy {name + ':':<11} {accuracy[name]:.4f}  (gamma={cfg.gamma}, change {change:+.4f})")
    for name in configs:
        heads, focus = means[name]
        print(f"{name}: mean per sample: boosted heads {heads:.2f}, focus tokens {focus:.2f}")
    return 0


def mean_counts(diagnostics) -> tuple:
    """(heads boosted at least once, focus tokens), each averaged over the samples that have images."""
    used = [d for d in diagnostics if d is not None]
    if not used:
        return 0.0, 0.0
    heads = sum(int((d.boost_counts > 0).sum()) for d in used) / len(used)
    return heads, sum(int(sum(f.sum() for f in d.focus)) for d in used) / len(used)


if __name__ == "__main__":
    sys.exit(main())
