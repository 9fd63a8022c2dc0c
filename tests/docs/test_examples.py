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


@pytest.mark.parametrize(
    "flags, format_reward",
    [([], "reasoning_format_reward"), (["--ral-zero"], "answer_format_reward")],
    ids=["ral", "ral-zero"],
)
def test_ral_video_example_runs_with_tiny(flags, format_reward, tmp_path):
    """--tiny writes 6 Video-R1 records (MPEG-4 clips and PNGs) and trains the tiny VLM on them for 2 steps."""
    from trl_attention.cli.recipes import PROMPT_FORMATS

    example = _load("ral_video_grpo")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = example.main(["--tiny", "--output_dir", str(tmp_path), "--disable_tqdm", "true", *flags])
    args = trainer.args
    assert (args.attn_coef, args.num_iterations, args.video_nframes) == (1.0, 2, 4)
    assert (args.video_min_pixels, args.video_max_pixels, args.reward_weights) == (56 * 56, 112 * 112, [0.9, 0.1, 0.5])
    names = [f.__name__ for f in trainer.reward_funcs]
    assert names == ["video_r1_accuracy_reward", format_reward, "answer_overlap"]
    data = trainer.train_dataset
    assert len(data) == 6 and set(data["problem_type"]) == {
        "multiple choice",
        "numerical",
        "OCR",
        "free-form",
        "regression",
    }
    assert sum(v is not None for v in data["video"]) == 3 and all(v.endswith(".mp4") for v in data["video"] if v)
    suffix = PROMPT_FORMATS["answer" if flags else "reasoning"]
    assert all(p[0]["content"][-1]["text"].endswith(suffix) for p in data["prompt"])
    visual = [p.requires_grad for n, p in trainer.model.named_parameters() if ".visual." in f".{n}"]
    assert visual and not any(visual)  # vision tower frozen, as in the paper
    logs = [h for h in trainer.state.log_history if "attention/jsd" in h]
    assert len(logs) == 2 and logs[0]["attention/jsd"] < 1e-7 and logs[1]["attention/jsd"] > 0
    assert logs[0]["attention/video_mass"] > 0  # the batch carried video rows through generation and the loss
    assert "rewards/video_r1_accuracy_reward/mean" in trainer.state.log_history[0]
    assert (tmp_path / "model.safetensors").exists()


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--tiny", "--records", "r.json"], "--records given with --tiny"),
        (["--use_cpu", "true"], "--records is required"),
    ],
)
def test_ral_video_example_errors(argv, expected, tmp_path):
    from trl_attention.cli.training import ConfigError

    with pytest.raises(ConfigError, match=expected):
        _load("ral_video_grpo").parse([*argv, "--output_dir", str(tmp_path)])


def test_ral_video_example_recipe(tmp_path):
    """The paper's settings without --tiny (parsed only: the 7B run cannot happen here)."""
    script, args, model = _load("ral_video_grpo").parse(
        ["--records", "r.json", "--output_dir", str(tmp_path), "--use_cpu", "true", "--ral-zero"]
    )
    assert (
        script.ral_zero
        and script.num_samples == 51_200
        and model.model_name_or_path.endswith("Qwen2.5-VL-7B-Instruct")
    )
    assert (args.num_generations, args.num_iterations, args.attn_coef, args.video_nframes) == (8, 2, 1.0, 16)
    assert (args.temperature, args.learning_rate, args.beta, args.reward_weights) == (0.9, 1e-5, 0.04, [0.9, 0.1])
    assert args.freeze_vision_tower
