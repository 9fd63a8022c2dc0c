"""`trl-attention grpo` / `env`: YAML + override precedence, clear errors for bad keys and files, a tiny run."""

import json
import math
import os
import subprocess
import sys

import pytest
import yaml

from tests.testing_utils import ROOT
import trl_attention
from trl_attention import cli
from trl_attention.cli.grpo import GRPOScriptArguments, parse_args
from trl_attention.cli.training import ConfigError, parse_config
from trl_attention.ral import AttentionGRPOConfig
from trl_attention.cli.recipes import prepare_dataset, resolve_rewards, synthetic_vqa

ROOT = ROOT
TINY_YAML = ROOT / "examples" / "configs" / "grpo_tiny.yaml"


def _yaml(tmp_path, **values):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


def test_precedence_defaults_then_recipe_then_yaml_then_command_line(tmp_path):
    config = _yaml(
        tmp_path,
        tiny=True,
        learning_rate=0.125,
        attn_coef=0.5,
        beta=0.25,
        rewards=["accuracy", "sayo"],
        output_dir=str(tmp_path),
        use_cpu=True,
        env={"TRL_ATTENTION_TEST_VAR": "from-yaml"},
    )
    script, training, model = parse_args(
        ["--config", config, "--attn_coef", "2.0", "--num_iterations", "3"], defaults={"beta": 0.5, "top_p": 0.75}
    )
    assert isinstance(script, GRPOScriptArguments) and isinstance(training, AttentionGRPOConfig)
    assert script.tiny is True and script.rewards == ["accuracy", "sayo"]  # YAML over the dataclass default
    assert training.learning_rate == 0.125  # YAML over the dataclass default
    assert training.attn_coef == 2.0 and training.num_iterations == 3  # command line over YAML / default
    assert training.beta == 0.25  # YAML over the recipe default
    assert training.top_p == 0.75  # recipe default where the YAML is silent
    assert training.attn_layer == -1 and model.model_name_or_path is None  # untouched defaults
    assert os.environ.pop("TRL_ATTENTION_TEST_VAR") == "from-yaml"  # TrlParser's `env:` mapping


def test_unknown_yaml_key_is_an_error_naming_it(tmp_path, capsys):
    config = _yaml(tmp_path, attn_coeff=1.0, max_step=3, tiny=True)
    with pytest.raises(ConfigError) as error:
        parse_args(["--config", config])
    message = str(error.value)
    assert "unknown keys in" in message and config in message
    assert "'attn_coeff' (did you mean 'attn_coef'?)" in message and "'max_step' (did you mean 'max_steps'" in message
    assert cli.main(["grpo", "--config", config]) == 2
    assert "trl-attention grpo: error: unknown keys" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--config", "does/not/exist.yaml"], "config file not found: does/not/exist.yaml"),
        (["--config"], "--config needs the path of a YAML file"),
        (["--tiny", "--attn_coeff", "1"], "unrecognized arguments: attn_coeff (did you mean 'attn_coef'?)"),
        (["--tiny", "--prompt_format", "essay"], "prompt_format must be one of"),
        (["--tiny", "--use_cpu", "--rewards", "nope"], "unknown reward 'nope'"),
        (["--use_cpu", "--output_dir", "x"], "model_name_or_path and dataset_name are required"),
    ],
)
def test_cli_errors(argv, expected, capsys):
    assert cli.main(["grpo", *argv]) == 2
    err = capsys.readouterr().err
    assert f"trl-attention grpo: error: {expected}" in err, err


def test_yaml_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping of option: value, got list"):
        parse_config([AttentionGRPOConfig], ["--config", str(path)], "test")


def test_help_lists_every_option_group(capsys):
    assert cli.main(["grpo", "--help"]) == 0
    text = capsys.readouterr().out
    for option in (
        "--config",
        "--tiny",
        "--rewards",
        "--prompt_format",
        "--attn_coef",
        "--num_iterations",
        "--model_name_or_path",
        "--lora_r",
    ):
        assert option in text, option
    assert cli.main(["--help"]) == 0
    text = capsys.readouterr().out
    assert all(name in text for name in ("demo", "grpo", "gkd", "env"))


def test_grpo_runs_the_tiny_yaml_with_overrides_a_teacher_and_heatmaps(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from trl_attention.tiny import save_tiny_vlm

    teacher = save_tiny_vlm(tmp_path / "teacher", seed=1)  # RAL's distillation terms from the command line too
    argv = [
        "grpo",
        "--config",
        str(TINY_YAML),
        "--max_steps",
        "2",
        "--output_dir",
        str(tmp_path),
        "--heatmap_every",
        "1",
        "--report_to",
        "tensorboard",
        "--disable_tqdm",
        "true",
        "--teacher_model_name_or_path",
        teacher,
        "--attn_distill_coef",
        "0.5",
    ]
    assert cli.main(argv) == 0
    assert "Trained 2 steps" in capsys.readouterr().out
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / "processor_config.json").is_file()
    (event_file,) = (tmp_path / "runs").rglob("events.out.tfevents.*")
    events = EventAccumulator(str(event_file), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    assert [e.step for e in events.Images("attention_heatmap/0")] == [1, 2]
    jsd = [e.value for e in events.Scalars("train/attention/jsd")]
    assert len(jsd) == 2 and jsd[0] < 1e-7 and 0 < jsd[1] < math.log(2)  # num_iterations=2 from the YAML
    distill = [e.value for e in events.Scalars("train/attention/distill_jsd")]
    assert len(distill) == 2 and all(0 < v < math.log(2) for v in distill)  # another model: JSD > 0


def test_rewards_and_dataset_preparation():
    assert [f.__name__ for f in resolve_rewards(["accuracy", "format"], "reasoning")] == [
        "accuracy_reward",
        "reasoning_format_reward",
    ]
    assert resolve_rewards(["format"], "answer")[0].__name__ == "answer_format_reward"
    assert resolve_rewards(["trl_attention.rewards.answer_format_reward"])[0].__name__ == "answer_format_reward"
    assert resolve_rewards("answer_match") == resolve_rewards(["answer_match"])  # YAML `rewards: answer_match`
    with pytest.raises(ValueError, match="needs prompt_format 'reasoning' or 'answer'"):
        resolve_rewards(["format"], "none")
    reasoning, answer = resolve_rewards(["format"], "reasoning")[0], resolve_rewards(["format"], "answer")[0]
    texts = ["<think>a b</think> <answer>red</answer>", "<answer>red</answer>", "red", "<think>x</think>"]
    assert reasoning(texts) == [1.0, 0.0, 0.0, 0.0] and answer(texts) == [0.0, 1.0, 0.0, 0.0]

    raw = synthetic_vqa(3, seed=1)
    data = prepare_dataset(raw, "answer")
    row = data[0]
    assert row["solution"] == raw[0]["answer"] and row["prompt"][0]["content"][0]["type"] == "image"
    assert row["prompt"][0]["content"][1]["text"].endswith("Give only the final answer inside <answer></answer>.")
    from datasets import Dataset

    chart = Dataset.from_dict(
        {"query": ["q?"], "label": [["<answer> 12 </answer>"]], "images": [[raw[0]["image"]] * 2]}
    )
    row = prepare_dataset(chart, "none")[0]
    assert row["solution"] == "12" and [p["type"] for p in row["prompt"][0]["content"]] == ["image", "image", "text"]
    with pytest.raises(ValueError, match=r"no question column: tried \['problem', 'question', 'query'\]"):
        prepare_dataset(Dataset.from_dict({"text": ["a"], "answer": ["b"], "image": [None]}))
    with pytest.raises(ValueError, match="answer column 'ans' is not in the dataset"):
        prepare_dataset(raw, answer_column="ans")


def test_env_reports_versions_and_backend(capsys):
    assert cli.main(["env", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    import torch
    import transformers
    import trl

    assert info["torch"] == torch.__version__ and info["transformers"] == transformers.__version__
    assert info["trl"] == trl.__version__ and info["trl_attention"] == trl_attention.__version__
    assert {"deepspeed", "triton", "cuda available", "capture backend (auto)"} <= set(info)
    expected = "triton on cuda" if torch.cuda.is_available() else "torch on cpu"
    assert info["capture backend (auto)"].startswith(expected)
    assert cli.main(["env"]) == 0 and "- capture backend (auto): " in capsys.readouterr().out


def test_gkd_runs_the_tiny_yaml_and_logs_the_distillation_jsd(tmp_path, capsys):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    argv = [
        "gkd",
        "--config",
        str(ROOT / "examples" / "configs" / "gkd_tiny.yaml"),
        "--max_steps",
        "2",
        "--output_dir",
        str(tmp_path),
        "--heatmap_every",
        "2",
        "--report_to",
        "tensorboard",
        "--disable_tqdm",
        "true",
    ]
    assert cli.main(argv) == 0
    assert "Trained 2 steps" in capsys.readouterr().out and (tmp_path / "model.safetensors").is_file()
    (event_file,) = (tmp_path / "runs").rglob("events.out.tfevents.*")
    events = EventAccumulator(str(event_file), size_guidance={"images": 0, "scalars": 0})
    events.Reload()
    jsd = [e.value for e in events.Scalars("train/attention/distill_jsd")]
    assert len(jsd) == 2 and all(0 < v < math.log(2) for v in jsd)  # different student and teacher attention
    assert [e.step for e in events.Images("attention_heatmap/0")] == [2]  # heatmap_every=2


def test_gkd_errors(capsys):
    argv = ["gkd", "--use_cpu", "true", "--model_name_or_path", "x", "--dataset_name", "y"]
    assert cli.main(argv) == 2
    assert "trl-attention gkd: error: teacher_model_name_or_path is required" in capsys.readouterr().err
    assert cli.main(["gkd", "--tiny", "--attn_distil_coef", "1"]) == 2
    assert "unrecognized arguments: attn_distil_coef (did you mean 'attn_distill_coef'?)" in capsys.readouterr().err


def test_grpo_under_torchrun_with_two_processes(tmp_path):
    """Two CPU processes (DDP over gloo), heatmaps computed on both, written by rank 0. torchrun, not `accelerate
    launch --cpu --num_processes 2`: accelerate 1.15 starts one process with --cpu whatever --num_processes says
    (docs/cli.md), so the test asserts the world size the run reports."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",  # a free port: other runs may hold torchrun's default one
        "--nproc_per_node",
        "2",
        "-m",
        "trl_attention",
        "grpo",
        "--config",
        str(TINY_YAML),
        "--max_steps",
        "2",
        "--output_dir",
        str(tmp_path),
        "--disable_tqdm",
        "true",
        "--heatmap_every",
        "2",
        "--report_to",
        "tensorboard",
    ]
    done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("Trained 2 steps on 2 processes;") == 1  # accelerator.print: the main process only
    (event_file,) = (tmp_path / "runs").rglob("events.out.tfevents.*")
    events = EventAccumulator(str(event_file), size_guidance={"images": 0})
    events.Reload()
    assert [e.step for e in events.Images("attention_heatmap/1")] == [2]
