"""`trl-attention demo`: RAL on the tiny VLM and synthetic grounding data (flags from `DemoConfig`'s fields)."""

from __future__ import annotations

import argparse
import dataclasses
import sys

from ..demo import DemoConfig, run_demo
from . import add_dataclass_arguments

__all__ = ["register"]


def register(commands, command) -> callable:
    """The `demo` subcommand."""
    demo = commands.add_parser(
        command.name,
        help=command.help,
        description="Run AttentionGRPOTrainer on a tiny Qwen2.5-VL and a synthetic grounding dataset, then write "
        "metrics.json/.csv, metrics.png and attention_heatmap.png into --output_dir.",
    )
    add_dataclass_arguments(demo, DemoConfig)
    return _run_demo


def _run_demo(args: argparse.Namespace) -> int:
    try:
        config = DemoConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(DemoConfig)})
    except ValueError as error:
        print(f"trl-attention demo: error: {error}", file=sys.stderr)
        return 2
    result = run_demo(config)
    print(f"\nTrained {result['steps']} steps in {result['train_seconds']:.1f} s. Final metrics:")
    for key, value in result["final_metrics"].items():
        print(f"  {key:<28} {value:.4g}")
    print(f"  {'max attention/jsd':<28} {result['max_attention_jsd']:.4g}")
    print(f"  {'heatmap image mass':<28} {result['heatmap_image_mass']:.4g}")
    print("Wrote:")
    for key in ("metrics_json", "metrics_csv", "metrics_png", "heatmap_png"):
        print(f"  {result[key]}")
    return 0
