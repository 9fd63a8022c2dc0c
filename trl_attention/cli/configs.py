"""`trl-attention configs`: where the shipped DeepSpeed ZeRO JSONs and accelerate YAMLs are installed."""

from __future__ import annotations

import argparse
import sys

from ..distributed import config_path, list_configs

__all__ = ["register"]


def register(commands) -> callable:
    """The `configs` subcommand of `trl-attention`: where the shipped configs are installed."""
    help_text = "Print the paths of the shipped DeepSpeed ZeRO JSONs and accelerate YAMLs."
    parser = commands.add_parser("configs", help=help_text, description=help_text)
    parser.add_argument("--path", metavar="NAME", help="print only this config's path (zero3, accelerate/zero3.yaml)")
    _configs.command = "configs"
    return _configs


def _configs(args: argparse.Namespace) -> int:
    if args.path:
        try:
            print(config_path(args.path))
        except ValueError as error:
            print(f"trl-attention configs: error: {error}", file=sys.stderr)
            return 2
        return 0
    for name, path in list_configs().items():
        print(f"{name:<32} {path}")
    return 0
