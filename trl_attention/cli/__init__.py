"""Command line: `trl-attention COMMAND ...` (also `python -m trl_attention COMMAND ...`).

Subcommands are plugged in through `SUBCOMMANDS`: each entry names a module exposing
`register(commands) -> handler`, which adds its parser to the argparse subparsers and returns the function
`handler(args) -> exit status`. One module per method keeps the CLI of each method next to its code.

The `demo` flags are generated from `DemoConfig`'s fields (type, default and help from the field metadata), so
the CLI and the Python API cannot drift apart. Each flag is accepted with underscores (`--max_steps`, as in TRL's
scripts) or dashes (`--max-steps`).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
import typing

from .. import __version__

__all__ = ["SUBCOMMANDS", "add_dataclass_arguments", "build_parser", "main"]

# Modules (relative to this package) that register a subcommand, in the order `--help` lists them.
SUBCOMMANDS = ["demo", "grpo", "gkd", "env", "vrga", "configs"]


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls) -> None:
    """Add one `--field` option per dataclass field of `cls` (bools get `--field/--no-field`)."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        if typing.get_origin(kind) is typing.Union or type(kind).__name__ == "UnionType":  # Optional[X] -> X
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        names = [f"--{f.name}"] + ([f"--{f.name.replace('_', '-')}"] if "_" in f.name else [])
        help_text = f.metadata.get("help", "") + " (default: %(default)s)"
        if kind is bool:
            parser.add_argument(
                *names, dest=f.name, action=argparse.BooleanOptionalAction, default=default, help=help_text
            )
        else:
            metavar = getattr(kind, "__name__", "VALUE").upper()
            parser.add_argument(*names, dest=f.name, type=kind, default=default, metavar=metavar, help=help_text)


def build_parser() -> tuple[argparse.ArgumentParser, dict]:
    """The parser and {subcommand name: handler}."""
    parser = argparse.ArgumentParser(
        prog="trl-attention",
        description="Train and steer multimodal LLMs on where they look (TRL extension).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    handlers = {}
    for name in SUBCOMMANDS:
        module = importlib.import_module(f".{name}", __name__)
        handler = module.register(commands)
        handlers[handler.command] = handler
    return parser, handlers


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `trl-attention` console script; returns the exit status."""
    parser, handlers = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version and usage errors: return argparse's status instead of exiting
        return int(exit_.code or 0) if not isinstance(exit_.code, str) else 2
    return handlers[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
