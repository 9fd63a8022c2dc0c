"""`trl-attention configs`: where the shipped DeepSpeed ZeRO JSONs and accelerate YAMLs are installed."""

from __future__ import annotations

import argparse
import sys

__all__ = ["register"]


def register(commands, command) -> callable:
    """The `configs` subcommand of `trl-attention`: where the shipped configs are installed."""
    parser = commands.add_parser(command.name, help=command.help, description=command.help)
    parser.add_argument("--path", metavar="NAME", help="print only this config's path (zero3, accelerate/zero3.yaml)")
    return _configs


def _configs(args: argparse.Namespace) -> int:
    from ..distributed import config_path, list_configs  # torch and transformers: only when the command runs

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
