"""`--help` is cheap: no TRL / transformers import for the top level and the commands whose options are plain
dataclasses, the training commands' help is short, `--help-all` is TrlParser's full form."""

import dataclasses
import json
import subprocess
import sys

import pytest

from tests.testing_utils import ROOT
from trl_attention import cli
from trl_attention.cli import gkd, grpo

HEAVY = ("torch", "transformers", "trl", "datasets")

# Runs `main(argv)` in a fresh interpreter; prints its status, the heavy modules it imported and its output.
PROBE = """
import contextlib, io, json, sys
from trl_attention.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    status = main(json.loads(sys.argv[1]))
loaded = [m for m in json.loads(sys.argv[2]) if m in sys.modules]
print(json.dumps({"status": status, "loaded": loaded, "text": out.getvalue()}))
"""


def _probe(argv: list[str]) -> dict:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(argv), json.dumps(HEAVY)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["grpo", "--help"],
        ["gkd", "--help"],
        ["demo", "--help"],
        ["vrga", "--help"],
        ["env", "--help"],
        ["configs", "-h"],
    ],
)
def test_help_imports_neither_trl_nor_transformers(argv):
    result = _probe(argv)
    assert result["status"] == 0 and result["text"]
    assert result["loaded"] == [], f"{argv} imported {result['loaded']}"


def test_python_m_help_lists_every_command_without_heavy_imports():
    code = (
        "import runpy, sys\nsys.argv = ['trl_attention', '--help']\ntry:\n"
        "    runpy.run_module('trl_attention', run_name='__main__')\nexcept SystemExit as e:\n"
        f"    assert e.code == 0, e.code\nprint([m for m in {HEAVY!r} if m in sys.modules])"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().endswith("[]"), done.stdout
    for command in cli.COMMANDS:
        assert f"    {command.name} " in done.stdout and command.help.split()[0] in done.stdout


def test_grpo_help_is_short_and_says_where_the_rest_is():
    text = _probe(["grpo", "--help"])["text"]
    for option in ("--attn_coef", "--rewards", "--tiny", "--gkd_coef", "--config", "--help-all"):
        assert f"  {option}" in text, option
    assert "docs/configuration.md" in text and "--learning_rate" in text and "--deepspeed" in text
    assert "'sayo_format'" in text  # the reward names, from trl_attention.cli.recipes without importing torch
    assert len(text.splitlines()) < 150
    assert "--lr_scheduler_type" not in text  # TRL's fields are only in --help-all


def test_gkd_help_is_short():
    text = _probe(["gkd", "--help"])["text"]
    assert "  --attn_distill_coef" in text and "  --prompt_format" in text and "--teacher_model_name_or_path" in text
    assert "GKDConfig" in text and "--help-all" in text and len(text.splitlines()) < 150


@pytest.mark.parametrize("command, trl_option", [("grpo", "--num_generations"), ("gkd", "--lmbda")])
def test_help_all_is_trlparsers_full_help(command, trl_option, capsys):
    assert cli.main([command, "--help-all"]) == 0
    text = capsys.readouterr().out
    for option in ("--learning_rate", trl_option, "--model_name_or_path", "--attn_distill_coef", "--tiny"):
        assert f"  {option}" in text, option


@pytest.mark.parametrize("module", [grpo, gkd])
def test_short_help_lists_every_field_the_method_adds_to_trl(module):
    """The light dataclasses the short help reads are exactly what the full config adds to TRL's config."""
    command = module.COMMAND
    config = command.config()
    trl_base = next(c for c in config.__mro__ if c.__module__.startswith("trl."))
    added = {f.name for f in dataclasses.fields(config)} - {f.name for f in dataclasses.fields(trl_base)}
    own = {f.name for cls in command.own_arguments for f in dataclasses.fields(cls)}
    assert added == own and all(issubclass(config, cls) for cls in command.own_arguments)
    text = command.format_help()
    assert all(f"  --{name} " in text for name in own | {f.name for f in dataclasses.fields(command.script_arguments)})


def test_short_help_shows_an_example_scripts_recipe_defaults(capsys):
    with pytest.raises(SystemExit) as exit_:
        grpo.parse_args(["--help"], defaults={"prompt_format": "reasoning", "learning_rate": 1e-5})
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    assert "(default: reasoning)" in text and "(default: answer)" not in text


def test_build_parser_still_builds_every_command(capsys):
    parser, handlers = cli.build_parser()
    assert sorted(handlers) == sorted(cli.SUBCOMMANDS) == sorted(c.name for c in cli.COMMANDS)
    args = parser.parse_args(["demo", "--max-steps", "3"])
    assert args.command == "demo" and args.max_steps == 3 and args.num_generations == 8
    assert parser.parse_args(["grpo", "--config", "x.yaml"]).argv == ["--config", "x.yaml"]
    assert cli.main(["nope"]) == 2 and "invalid choice: 'nope'" in capsys.readouterr().err
    assert cli.main([]) == 2 and cli.main(["--version"]) == 0
    assert cli.main(["demo", "--num_generations", "3", "--per_device_train_batch_size", "4"]) == 2
    assert "must be a multiple of num_generations" in capsys.readouterr().err
