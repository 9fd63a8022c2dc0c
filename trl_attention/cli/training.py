"""What the training subcommands (`grpo`, `gkd`) share: YAML configs + command-line overrides, the way TRL's CLI does
it, a short `--help`, and the build / train / save steps.

`trl-attention grpo --config run.yaml --learning_rate 1e-5` parses with `trl.TrlParser`: dataclass defaults (and a
recipe's defaults) < the YAML file < the command line. An `env:` mapping in the YAML sets environment variables.
Bad input that TRL reports as a traceback (a missing file, `--config` without a path, an unknown YAML key listed
as '--key value', an unknown flag reported only after the configs were built and validated) becomes a
`ConfigError` naming the offending key, with the closest field names, before anything is built.

`--help` lists only the command's own options, from plain dataclasses, without importing TRL (TrlParser's help
of every TRL field is 1,400 lines and takes seconds to import); `--help-all` prints TrlParser's full help.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import sys
import textwrap
import typing
from collections.abc import Callable

__all__ = [
    "ConfigError",
    "TrainingCommand",
    "add_training_command",
    "build_trainer",
    "parse_config",
    "recipe_defaults",
    "run_training",
    "train_and_save",
]


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
    import yaml

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


CONFIG_EPILOG = "--config FILE.yaml reads options from a YAML mapping (option: value); flags given here override it."


def parse_config(dataclass_types, argv: list[str], prog: str, defaults: dict | None = None) -> tuple:
    """Instances of `dataclass_types` from `argv` (which may hold `--config FILE.yaml`).

    `defaults`: recipe values that replace the dataclasses' defaults (the YAML and the command line still win).
    Raises ConfigError for a missing or unreadable config file and for unknown keys; `--help` raises SystemExit(0)
    after printing the help, as argparse does.
    """
    from trl import TrlParser

    parser = TrlParser(dataclass_types, prog=prog, allow_abbrev=False, epilog=CONFIG_EPILOG)
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


# ------------------------------------------------------------------------------------------------ short --help


def _metavar(kind) -> tuple[str, str | None]:
    """(metavar, nargs) for a field type in the syntax TrlParser accepts: `--flag [BOOL]`, `--list X [X ...]`."""
    if typing.get_origin(kind) is typing.Union or type(kind).__name__ == "UnionType":  # Optional[X] -> X
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    if kind is bool:
        return "BOOL", "?"
    if typing.get_origin(kind) is list:
        return _metavar(typing.get_args(kind)[0])[0], "+"
    if typing.get_origin(kind) is typing.Literal:
        return "{" + ",".join(str(a) for a in typing.get_args(kind)) + "}", None
    return getattr(typing.get_origin(kind) or kind, "__name__", "value").upper(), None


def _add_field_help(parser: argparse.ArgumentParser, cls, shown: set[str]) -> None:
    """One help row per field of `cls` not already in `shown`, in a group named after the class."""
    doc = (cls.__doc__ or "").strip().splitlines()
    group = parser.add_argument_group(cls.__name__, doc[0] if doc else None)
    from . import dataclass_options

    for f, kind, default, help_ in dataclass_options(cls):
        if f.name in shown:
            continue
        shown.add(f.name)
        metavar, nargs = _metavar(kind)
        help_text = help_.replace("%", "%%") + " (default: %(default)s)"
        group.add_argument(f"--{f.name}", metavar=metavar, nargs=nargs, default=default, help=help_text)


class _ParagraphsFormatter(argparse.HelpFormatter):
    """Wraps each paragraph of a description or epilog on its own (argparse joins them into one), and never inside
    an option name (`--help-all`)."""

    def _fill_text(self, text, width, indent):
        paragraphs = (" ".join(p.split()) for p in text.split("\n\n"))
        return "\n\n".join(
            textwrap.fill(p, width, initial_indent=indent, subsequent_indent=indent, break_on_hyphens=False)
            for p in paragraphs
        )


@dataclasses.dataclass(frozen=True)
class TrainingCommand:
    """What `grpo` and `gkd` differ in; parsing, `--help` and the subcommand handler are shared.

    `script_arguments` and `own_arguments` are plain dataclasses (they import nothing heavy), so `--help` can
    list them without importing TRL; `config()` returns the full config class (TRL's config + `own_arguments`).
    """

    name: str
    script_arguments: type
    own_arguments: tuple[type, ...]
    config: Callable[[], type]
    build: Callable
    trl_config: str  # e.g. "GRPOConfig", for the help text
    trl_docs: str  # TRL's page of that trainer
    examples: str  # a few of TRL's options, for the help text

    @property
    def prog(self) -> str:
        return f"trl-attention {self.name}"

    def dataclass_types(self) -> tuple:
        """(script arguments, full config, TRL's ModelConfig): what TrlParser parses."""
        from trl import ModelConfig

        return (self.script_arguments, self.config(), ModelConfig)

    def format_help(self, defaults: dict | None = None) -> str:
        """The short `--help`: this command's own options, then where TRL's are documented."""
        epilog = (
            f"Every field of TRL's {self.trl_config} (with transformers' TrainingArguments) and of TRL's ModelConfig "
            f"is accepted too, e.g. {self.examples}. The options above are documented in docs/configuration.md, "
            f"TRL's in TRL's documentation ({self.trl_docs}); `{self.prog} --help-all` lists every option."
            f"\n\n{CONFIG_EPILOG} Flags may also be spelled with dashes (--max-steps)."
        )
        parser = argparse.ArgumentParser(
            prog=self.prog,
            usage=f"{self.prog} [-h] [--help-all] [--config FILE.yaml] [--OPTION VALUE ...]",
            add_help=False,
            formatter_class=_ParagraphsFormatter,
            epilog=epilog,
        )
        parser.add_argument("-h", "--help", action="store_true", help="show this help message and exit")
        parser.add_argument("--help-all", action="store_true", help="show every option, TRL's included, and exit")
        parser.add_argument("--config", metavar="FILE.yaml", help="read options from this YAML file")
        shown: set[str] = set()
        for cls in (self.script_arguments, *self.own_arguments):
            _add_field_help(parser, cls, shown)
        if defaults:  # an example script's recipe values, as TrlParser's help would show them
            parser.set_defaults(**{key: value for key, value in defaults.items() if key in shown})
        return parser.format_help()

    def parse(self, argv: list[str], defaults: dict | None = None) -> tuple:
        """(script args, config, ModelConfig) from argv (may contain `--config FILE.yaml`), as `parse_config`.

        `-h`/`--help` prints the short help and `--help-all` TrlParser's full one; both raise SystemExit(0).
        Then `output_dir` is checked against `resume_from_checkpoint` / `overwrite_output_dir`, and
        `resume_from_checkpoint` becomes the checkpoint to resume or None (`trl_attention.cli.checkpoints`).
        """
        argv = list(argv)
        if "--help-all" in argv:
            argv = ["--help"]
        elif "-h" in argv or "--help" in argv:
            print(self.format_help(defaults), end="")
            raise SystemExit(0)
        from .checkpoints import prepare_output_dir

        script_args, training_args, model_args = parse_config(self.dataclass_types(), argv, self.prog, defaults)
        prepare_output_dir(training_args, overwrite=getattr(script_args, "overwrite_output_dir", False))
        return script_args, training_args, model_args

    def register(self, commands, command) -> Callable[[argparse.Namespace], int]:
        """The subcommand (see `trl_attention.cli.COMMANDS`)."""
        return add_training_command(commands, command.name, command.help, self.parse, self.build)


# ------------------------------------------------------------------------------------------------ build, train, save


def build_trainer(trainer_class, script_args, training_args, model_args, prepare=None, **kwargs):
    """Load the model, processor and dataset the options name, make `trainer_class` on them (LoRA from
    `model_args`) and attach the heatmap callback. `prepare(dataset)`: the training set derived from the prepared
    dataset (the heatmaps still use the prepared rows); `kwargs` go to the trainer."""
    from trl import get_peft_config

    from .data import add_heatmap_callback, load_model_and_data

    model, processor, dataset = load_model_and_data(script_args, model_args, training_args.seed)
    trainer = trainer_class(
        model=model,
        args=training_args,
        train_dataset=prepare(dataset) if prepare is not None else dataset,
        processing_class=processor,
        peft_config=get_peft_config(model_args),
        **kwargs,
    )
    add_heatmap_callback(trainer, script_args, dataset)
    return trainer


def train_and_save(trainer, training_args):
    """Train (resuming when asked) and save to `output_dir`; returns the trainer."""
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    return trainer


def recipe_defaults(argv: list[str], recipe: dict, tiny: dict, **overrides) -> dict:
    """An example script's defaults: its recipe, the tiny sizes when `--tiny` is in argv, then `overrides`. Under
    `--tiny` the recipe's (and overrides') model, dataset and teacher are dropped: with --tiny they are an error."""
    if "--tiny" not in argv:
        return {**recipe, **overrides}
    real = ("model_name_or_path", "dataset_name", "teacher_model_name_or_path")
    return {key: value for key, value in {**recipe, **tiny, **overrides}.items() if key not in real}


def run_training(argv: list[str], parse, build) -> int:
    """Parse (`parse(argv)` -> script, training, model args), build the trainer, train, save, say where."""
    script_args, training_args, model_args = parse(argv)
    try:
        trainer = build(script_args, training_args, model_args)
    except ValueError as error:  # bad reward names, dataset columns, boxes, tokenizers: the message names the culprit
        raise ConfigError(str(error)) from error
    train_and_save(trainer, training_args)
    processes = trainer.accelerator.num_processes  # what a launcher really started (the tests check it)
    trainer.accelerator.print(
        f"Trained {trainer.state.global_step} steps on {processes} process{'es' if processes > 1 else ''}; "
        f"model saved to {training_args.output_dir}"
    )
    # Every rank waits for the main one's save, then the process group is torn down: a rank that exited with its
    # gloo group alive while rank 0 still wrote shards aborted (SIGABRT, "terminate called without an active
    # exception"), failing a finished run's exit code in one of four runs on a loaded machine.
    trainer.accelerator.wait_for_everyone()
    trainer.accelerator.end_training()
    return 0


def add_training_command(commands, name: str, help: str, parse, build):
    """Register `name` so that everything after it reaches `run_training(argv, parse, build)` untouched (`parse`
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

    return handler
