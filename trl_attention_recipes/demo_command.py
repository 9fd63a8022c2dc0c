"""`trl-attention demo`: SFT, then GRPO and RAL, on the tiny VLM and synthetic grounding data (flags from
`DemoConfig`'s fields). A recipe: the CLI finds it through the `trl_attention.commands` entry point."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from trl_attention.cli import Command, add_dataclass_arguments

__all__ = ["COMMAND", "format_summary", "register"]

COMMAND = Command(
    "demo", __name__, "Train the tiny VLM with AttentionGRPOTrainer (RAL) on synthetic grounding data, on CPU."
)
"""Registered with the CLI through the `trl_attention.commands` entry point (pyproject.toml)."""


def register(commands, command) -> callable:
    """The `demo` subcommand."""
    from .demo import DemoConfig  # imported when the command runs or its help is asked

    demo = commands.add_parser(
        command.name,
        help=command.help,
        description="SFT a tiny Qwen2.5-VL on synthetic grounding data (TRL SFTTrainer), then GRPO and RAL "
        "(AttentionGRPOTrainer) from it, each measured on held-out rows; writes the models, metrics, plots and "
        "summary.json into --output_dir.",
    )
    add_dataclass_arguments(demo, DemoConfig)
    return _run_demo


def _run_demo(args: argparse.Namespace) -> int:
    from .demo import DemoConfig, run_demo

    try:
        config = DemoConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(DemoConfig)})
    except ValueError as error:
        print(f"trl-attention demo: error: {error}", file=sys.stderr)
        return 2
    summary = run_demo(config)
    print(format_summary(summary))
    return 0


def format_summary(summary: dict) -> str:
    """The demo's closing table: each model on the held-out rows, the image-blind baseline and the box's share."""
    lines = [
        f"\nHeld-out rows: {summary['config']['eval_samples']}. Image-blind baseline accuracy "
        f"{summary['majority_accuracy']:.3f}; the target box holds {summary['box_token_share']:.3f} of the image's "
        "tokens (the region share of uniform attention, lift 1).",
        f"{'model':<6} {'accuracy':>9} {'region share':>13} {'lift':>6} {'entropy':>8} {'format':>7}",
    ]
    for name, r in summary["results"].items():
        lines.append(
            f"{name:<6} {r['accuracy']:9.3f} {r['region_share']:13.3f} {r['lift']:6.2f} {r['entropy']:8.2f} "
            f"{r['answer_format']:7.2f}"
        )
    jsd = summary["max_attention_jsd"]
    lines.append(f"RAL's largest attention/jsd: {jsd:.3g}. Total {summary['seconds']:.0f} s.")
    paths = summary["paths"]
    lines.append(
        f"Wrote: {paths['model']} (the RAL model), {paths['metrics']}, " + ", ".join(paths["heatmaps"].values())
    )
    return "\n".join(lines)
