"""Command line: `trl-attention COMMAND ...` (also `python -m trl_attention COMMAND ...`).

Subcommands are listed once, in `COMMANDS` (name, module, one-line help). A command's module is imported only when
that command runs or its help is asked: `trl-attention --help` then costs an argparse parser, not an import of
torch, transformers and TRL. Each module exposes `register(commands, command) -> handler`, which adds the
command's parser to the argparse subparsers and returns `handler(args) -> exit status`; one module per method
keeps the CLI of each method next to its code.

The `demo` and `vrga` flags are generated from dataclass fields (`add_dataclass_arguments`: type, default and help
from the field metadata), so the CLI and the Python API cannot drift apart. Each flag is accepted with
underscores (`--max_steps`, as in TRL's scripts) or dashes (`--max-steps`).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import sys
import typing

from .. import __version__

__all__ = [
    "BUILTIN_COMMANDS",
    "COMMANDS",
    "ENTRY_POINT_GROUP",
    "SUBCOMMANDS",
    "Command",
    "add_dataclass_arguments",
    "dataclass_options",
    "build_parser",
    "main",
]


class Command(typing.NamedTuple):
    """One subcommand: its name, the module that registers it (relative to this package, or absolute for a command
    another package adds through the `trl_attention.commands` entry point), its `--help` line."""

    name: str
    module: str
    help: str


ENTRY_POINT_GROUP = "trl_attention.commands"
"""Packages add subcommands as entry points of this group, each naming a `Command` (`trl-attention demo` is one:
the demo is a recipe, shipped beside the library, which does not import it)."""

# The library's own commands, in the order `trl-attention --help` lists them after the added ones.
BUILTIN_COMMANDS = (
    Command("grpo", ".grpo", "RAL / SAYO GRPO training (AttentionGRPOTrainer) from a YAML config + overrides."),
    Command("gkd", ".gkd", "On-policy attention distillation (AttentionGKDTrainer) from a YAML config + overrides."),
    Command("env", ".env", "Print versions, CUDA and the attention-capture backend that will run."),
    Command(
        "vrga",
        ".vrga",
        "Answer a question about an image with and without VRGA (training-free visual attention boost).",
    ),
    Command("configs", ".configs", "Print the paths of the shipped DeepSpeed ZeRO JSONs and accelerate YAMLs."),
)


def dataclass_options(cls):
    """(field, type hint, default, help text) per init field of the dataclass `cls`: what both the parsed options
    (`add_dataclass_arguments`) and the help-only listings of `grpo` / `gkd` (`training.py`) are built from."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.init:
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            yield f, hints[f.name], default, f.metadata.get("help", "")


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls) -> None:
    """Add one `--field` option per dataclass field of `cls` (bools get `--field/--no-field`)."""
    for f, kind, default, help_ in dataclass_options(cls):
        if typing.get_origin(kind) is typing.Union or type(kind).__name__ == "UnionType":  # Optional[X] -> X
            kind = next(a for a in typing.get_args(kind) if a is not type(None))
        names = [f"--{f.name}"] + ([f"--{f.name.replace('_', '-')}"] if "_" in f.name else [])
        help_text = help_ + " (default: %(default)s)"
        if kind is bool:
            parser.add_argument(
                *names, dest=f.name, action=argparse.BooleanOptionalAction, default=default, help=help_text
            )
        else:
            metavar = getattr(kind, "__name__", "VALUE").upper()
            parser.add_argument(*names, dest=f.name, type=kind, default=default, metavar=metavar, help=help_text)


def _add_stub(commands, command: Command) -> None:
    """A placeholder that takes everything after the command's name: enough to list it and to find which runs."""
    sub = commands.add_parser(command.name, help=command.help, add_help=False, prefix_chars="\x00")
    sub.add_argument("argv", nargs=argparse.REMAINDER)


def build_parser(load: typing.Iterable[str] | None = None) -> tuple[argparse.ArgumentParser, dict]:
    """The parser and {subcommand name: handler}.

    `load`: the commands whose module is imported to build their full parser (default: all). The others get a
    placeholder parser and no handler, so a parser for `--help` or for one command imports only what it needs.
    """
    load = set((c.name for c in all_commands()) if load is None else load)
    parser = argparse.ArgumentParser(
        prog="trl-attention",
        description="Train and steer multimodal LLMs on where they look (TRL extension).",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    handlers = {}
    for command in all_commands():
        if command.name in load:
            handlers[command.name] = importlib.import_module(command.module, __name__).register(commands, command)
        else:
            _add_stub(commands, command)
    return parser, handlers


def _exit_status(exit_: SystemExit) -> int:
    return int(exit_.code or 0) if not isinstance(exit_.code, str) else 2


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `trl-attention` console script; returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        # First find the command with placeholders only (top-level --help, --version and usage errors end here),
        # then import that one command's module and parse for real.
        command = build_parser(load=())[0].parse_args(argv).command
        parser, handlers = build_parser(load=[command])
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version and usage errors: return argparse's status instead of exiting
        return _exit_status(exit_)
    return handlers[args.command](args)


def _added_commands() -> tuple[Command, ...]:
    """The commands other installed packages add (entry points of `ENTRY_POINT_GROUP`), sorted by name."""
    from importlib.metadata import entry_points

    added = []
    for entry in sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
        command = entry.load()
        if not isinstance(command, Command) or command.name != entry.name:
            raise TypeError(
                f"entry point {entry.name} = {entry.value!r} ({ENTRY_POINT_GROUP}) is not a Command of that name"
            )
        if command.name not in {c.name for c in BUILTIN_COMMANDS}:
            added.append(command)
    return tuple(added)


_COMMANDS: tuple | None = None


def all_commands() -> tuple[Command, ...]:
    """The added commands, then the built-in ones: `COMMANDS`. Loaded on first use, not at import: an added
    command's module imports `Command` and `add_dataclass_arguments` from here, and importing that module first
    (the demo's, say) must not find this package loading it back half-initialised."""
    global _COMMANDS
    if _COMMANDS is None:
        _COMMANDS = _added_commands() + BUILTIN_COMMANDS
    return _COMMANDS


def __getattr__(name: str):
    if name == "COMMANDS":
        return all_commands()
    if name == "SUBCOMMANDS":
        return [command.name for command in all_commands()]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


if __name__ == "__main__":
    sys.exit(main())
