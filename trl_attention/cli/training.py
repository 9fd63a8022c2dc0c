"""YAML configs + command-line overrides for the training subcommands, the way TRL's CLI does it.

`trl-attention grpo --config run.yaml --learning_rate 1e-5` parses with `trl.TrlParser`: dataclass defaults (and a
recipe's defaults) < the YAML file < the command line. An `env:` mapping in the YAML sets environment variables.
Bad input that TRL reports as a traceback (a missing file, `--config` without a path, an unknown YAML key listed
as '--key value', an unknown flag reported only after the configs were built and validated) becomes a
`ConfigError` naming the offending key, with the closest field names, before anything is built.
"""

from __future__ import annotations

import argparse
import difflib
import sys

import yaml
from trl import TrlParser

__all__ = ["ConfigError", "add_training_command", "parse_config", "recipe_defaults", "run_training", "train_and_save"]


class ConfigError(ValueError):
    """A bad config file or option; the CLI prints it as `trl-attention CMD: error: ...` and exits with 2."""


def _suggest(key: str, known: list[str]) -> str:
    close = difflib.get_close_matches(key, known, n=3, cutoff=0.75)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""


def _keys(strings: list[str]) -> list[str]:
    """Option names in a list of leftover strings ('--key', 'value', ...)."""
    return [s.split("=", 1)[0].lstrip("-") for s in strings if s.startswith("-")]


def _check_config_keys(path: str, known: list[str]) -> None:
    """Read the YAML once more than TrlParser does, to name unknown keys (TrlParser lists them as '--key value')."""
    try:
        with open(path) as f:
            config = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (OSError, yaml.YAMLError) as error:
        raise ConfigError(f"cannot read config file {path}: {error}") from error
    if not isinstance(config, dict):
        raise ConfigError(f"config file {path} must hold a mapping of option: value, got {type(config).__name__}")
    unknown = [str(key) for key in config if key != "env" and key not in known]
    if unknown:
        raise ConfigError(
            f"unknown key{'s' if len(unknown) > 1 else ''} in {path}: "
            + ", ".join(f"{key!r}{_suggest(key, known)}" for key in unknown)
        )


def parse_config(dataclass_types, argv: list[str], prog: str, defaults: dict | None = None) -> tuple:
    """Instances of `dataclass_types` from `argv` (which may hold `--config FILE.yaml`).

    `defaults`: recipe values that replace the dataclasses' defaults (the YAML and the command line still win).
    Raises ConfigError for a missing or unreadable config file and for unknown keys; `--help` raises SystemExit(0)
    after printing the help, as argparse does.
    """
    epilog = "--config FILE.yaml reads options from a YAML mapping (option: value); flags given here override it."
    parser = TrlParser(dataclass_types, prog=prog, allow_abbrev=False, epilog=epilog)
    if defaults:
        parser.set_defaults(**defaults)
    argv, path = list(argv), None
    known = sorted({action.dest for action in parser._actions if action.dest != "help"})
    rest = argv
    if "--config" in argv:
        index = argv.index("--config")
        if index + 1 >= len(argv) or argv[index + 1].startswith("--"):
            raise ConfigError("--config needs the path of a YAML file")
        path, rest = argv[index + 1], argv[:index] + argv[index + 2 :]
        _check_config_keys(path, known)
    # Unknown options before any dataclass is built, so they are reported ahead of a config's own validation.
    _, unknown = argparse.ArgumentParser.parse_known_args(parser, rest)
    if unknown:
        keys = _keys(unknown) or unknown
        raise ConfigError("unrecognized arguments: " + ", ".join(f"{k}{_suggest(k, known)}" for k in keys))
    try:
        parsed = parser.parse_args_and_config(argv)
    except ValueError as error:  # a config's own validation (e.g. GRPOConfig's batch-size checks)
        raise ConfigError(str(error)) from error
    return tuple(parsed)


def train_and_save(trainer, training_args):
    """Train (resuming when asked) and save to `output_dir`; returns the trainer."""
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    return trainer


def recipe_defaults(argv: list[str], recipe: dict, tiny: dict, **overrides) -> dict:
    """An example script's defaults: its recipe, the tiny sizes when `--tiny` is in argv, then `overrides`."""
    return {**recipe, **(tiny if "--tiny" in argv else {}), **overrides}


def run_training(argv: list[str], parse, build) -> int:
    """Parse (`parse(argv)` -> script, training, model args), build the trainer, train, save, say where."""
    script_args, training_args, model_args = parse(argv)
    try:
        trainer = build(script_args, training_args, model_args)
    except ValueError as error:  # bad reward names, dataset columns, boxes, tokenizers: the message names the culprit
        raise ConfigError(str(error)) from error
    train_and_save(trainer, training_args)
    trainer.accelerator.print(f"Trained {trainer.state.global_step} steps; model saved to {training_args.output_dir}")
    return 0


def add_training_command(commands, name: str, help: str, parse, build):
    """Register `name` so that everything after it reaches `run_training(argv, parse, build)` untouched (TrlParser
    does the parsing, including `--help`); returns the `handler(args) -> int` that `cli.build_parser` expects."""
    # A prefix character no option uses: argparse then treats `--config x.yaml ...` as the REMAINDER positional.
    sub = commands.add_parser(name, help=help, add_help=False, prefix_chars="\x00")
    sub.add_argument("argv", nargs=argparse.REMAINDER)

    def handler(args: argparse.Namespace) -> int:
        try:
            return run_training(list(args.argv), parse, build)
        except ConfigError as error:
            print(f"trl-attention {name}: error: {error}", file=sys.stderr)
            return 2
        except SystemExit as exit_:  # --help (0) or an argparse usage error (2)
            return exit_.code if isinstance(exit_.code, int) else 2

    handler.command = name
    return handler
