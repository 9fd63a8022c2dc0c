"""The example scripts' code paths, on the tiny VLM (the 7B runs cannot happen here)."""

import importlib.util
import sys
import warnings

import peft
import pytest
import torch

from tests.testing_utils import ROOT

EXAMPLES = ROOT / "examples"
SMALL = [
    "--use_cpu",
    "true",
    "--report_to",
    "none",
    "--num_generations",
    "4",
    "--per_device_train_batch_size",
    "4",
    "--max_completion_length",
    "8",
    "--save_strategy",
    "no",
    "--logging_steps",
    "1",
    "--disable_tqdm",
    "true",
]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def test_sayo_example_runs_the_recipe_on_the_tiny_vlm(tmp_path):
    sayo = _load("sayo_grpo")
    argv = ["--dataset_path", "data", "--output_dir", str(tmp_path), "--use_cpu", "true"]
    _, args = sayo.parse([*argv, "--per_device_train_batch_size", "16"])
    assert (args.beta, args.num_generations, args.temperature, args.top_p, args.max_completion_length) == (
        0.001,
        16,
        1.0,
        0.9,
        110,
    )
    _, args = sayo.parse(["--tiny", "--output_dir", str(tmp_path)])  # --tiny: sized for a CPU
    assert (args.num_generations, args.per_device_train_batch_size, args.beta, args.top_p) == (4, 4, 0.001, 0.9)
    assert args.bf16 is torch.cuda.is_available() and args.report_to == []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = sayo.main(["--tiny", "--output_dir", str(tmp_path), "--max_steps", "2", *SMALL])
    assert isinstance(trainer.model, peft.PeftModel)
    logs = [h for h in trainer.state.log_history if "rewards/region_attention/mean" in h]
    assert len(logs) == 2 and all(-1 < h["rewards/region_attention/mean"] < 1 for h in logs)
    assert all("rewards/format_reward/mean" in h and "rewards/accuracy_reward/mean" in h for h in logs)
    assert (tmp_path / "adapter_config.json").exists()


def test_sayo_example_tiny_runs_as_documented(tmp_path):
    """The docstring's command, nothing added: --tiny alone must size the run for a CPU."""
    sayo = _load("sayo_grpo")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = sayo.main(["--tiny", "--output_dir", str(tmp_path), "--max_steps", "1"])
    assert trainer.state.global_step == 1 and (tmp_path / "adapter_config.json").exists()
    assert [h["step"] for h in trainer.state.log_history if "rewards/region_attention/mean" in h] == [1]


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--tiny", "--model_name_or_path", "m"], "--model_name_or_path given with --tiny"),
        (["--output_dir", "x", "--use_cpu", "true", "--num_generations", "8"], "--dataset_path is required"),
    ],
)
def test_sayo_example_errors(argv, expected):
    from trl_attention.cli.training import ConfigError

    with pytest.raises(ConfigError) as error:
        _load("sayo_grpo").parse(argv)
    assert expected in str(error.value)


@pytest.mark.parametrize(
    "name, suffix, format_reward",
    [
        ("ral_grpo", "then give the final answer inside <answer></answer>.", "reasoning_format_reward"),
        ("ral_zero_grpo", "Give only the final answer inside <answer></answer>.", "answer_format_reward"),
    ],
)
def test_ral_examples_run_with_tiny(name, suffix, format_reward, tmp_path):
    _load("ral_grpo")  # ral_zero_grpo imports it
    example = _load(name)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = example.main(["--tiny", "--output_dir", str(tmp_path), "--max_steps", "2", "--disable_tqdm", "true"])
    assert trainer.args.attn_coef == 1.0 and trainer.args.num_iterations == 2
    assert trainer.args.reward_weights == [0.9, 0.1, 0.5]  # the paper's 0.9 / 0.1, plus --tiny's shaping reward
    assert [f.__name__ for f in trainer.reward_funcs] == ["accuracy_reward", format_reward, "char_overlap"]
    assert trainer.train_dataset[0]["prompt"][0]["content"][-1]["text"].endswith(suffix)
    visual = [p.requires_grad for n, p in trainer.model.named_parameters() if ".visual." in f".{n}"]
    assert visual and not any(visual)  # vision tower frozen, as in the paper
    jsd = [h["attention/jsd"] for h in trainer.state.log_history if "attention/jsd" in h]
    assert len(jsd) == 2 and jsd[0] < 1e-7 and jsd[1] > 0  # the term acts on the reused rollouts
    assert (tmp_path / "model.safetensors").exists()
