"""`trl-attention vrga --model DIR --image PATH --question TEXT`: the answer with and without VRGA, and a heatmap
of VRGA's refined focus map over each image. Every `VRGAConfig` field is a flag (`--gamma`, `--radius`, ...)."""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from ..vrga.config import VRGAConfig  # a plain dataclass: `vrga --help` imports no torch

__all__ = ["register"]


def register(commands, command) -> callable:
    """The `vrga` subcommand (see `trl_attention.cli.COMMANDS`)."""
    from . import add_dataclass_arguments

    parser = commands.add_parser(
        command.name,
        help=command.help,
        description="Greedy answers with plain generation and with VRGA, plus a PNG of the focus map per image.",
    )
    parser.add_argument("--model", required=True, help="Local directory of a Qwen2-VL / Qwen2.5-VL / Qwen3-VL model.")
    parser.add_argument("--image", required=True, action="append", help="Image path (repeat for several images).")
    parser.add_argument("--question", required=True, help="The question about the image(s).")
    parser.add_argument("--max_new_tokens", "--max-new-tokens", type=int, default=64, help="(default: %(default)s)")
    parser.add_argument(
        "--heatmap",
        default="vrga_focus.png",
        help="PNG path of the focus map; with several images _1, _2, ... are appended (default: %(default)s)",
    )
    parser.add_argument("--device", default="cpu", help="Torch device (default: %(default)s)")
    add_dataclass_arguments(parser, VRGAConfig)
    return _run


def _heatmap_paths(path: str, count: int) -> list:
    if count == 1:
        return [Path(path)]
    base = Path(path)
    return [base.with_name(f"{base.stem}_{i + 1}{base.suffix or '.png'}") for i in range(count)]


def _run(args: argparse.Namespace) -> int:
    from PIL import Image

    from ..plotting import plot_heatmap
    from ..vrga.qa import answer_questions, load_model

    try:
        config = VRGAConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(VRGAConfig)})
        images = [Image.open(path).convert("RGB") for path in args.image]
    except (ValueError, OSError) as error:
        print(f"trl-attention vrga: error: {error}", file=sys.stderr)
        return 2
    model, processor = load_model(args.model, args.device)
    sample = [(images, args.question)]
    (plain,), _ = answer_questions(model, processor, sample, None, args.max_new_tokens)
    (steered,), (diag,) = answer_questions(model, processor, sample, config, args.max_new_tokens)
    print(f"question: {args.question}")
    print(f"plain:    {plain}")
    print(f"vrga:     {steered}")
    if diag is None:
        print("VRGA found no image tokens in the prompt.")
        return 0
    print(f"visual heads (layer, head): {diag.visual_heads}{' (R_img fallback)' if diag.used_fallback else ''}")
    print(
        f"background heads: {len(diag.background_heads)}; boosted head-steps per layer: "
        f"{diag.boost_counts.sum(-1).tolist()}"
    )
    for i, (path, image) in enumerate(zip(_heatmap_paths(args.heatmap, len(images)), images)):
        refined, focus = diag.refined_maps[i], diag.focus[i]
        refined, focus = (refined.sum(0), focus.any(0)) if refined.dim() == 3 else (refined, focus)
        title = f"{args.question}\nVRGA focus: {int(focus.sum())} of {focus.numel()} tokens (gamma={config.gamma})"
        plot_heatmap(image, refined.numpy(), path, title=title, label="VRGA refined map")
        print(f"focus tokens of image {i + 1}: {int(focus.sum())}/{focus.numel()}, heatmap: {path}")
    return 0
