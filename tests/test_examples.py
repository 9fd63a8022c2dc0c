"""The example scripts' code paths, on the tiny VLM (the 7B runs cannot happen here)."""

import importlib.util
import sys
import warnings
from pathlib import Path

import peft

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
SMALL = ["--use_cpu", "true", "--report_to", "none", "--num_generations", "4", "--per_device_train_batch_size", "4",
         "--max_completion_length", "8", "--save_strategy", "no", "--logging_steps", "1", "--disable_tqdm", "true"]  # fmt: skip


def _load(name):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def test_sayo_example_runs_the_recipe_on_the_tiny_vlm(tmp_path):
    sayo = _load("sayo_grpo")
    _, args = sayo.parse(
        ["--tiny", "--output_dir", str(tmp_path), "--use_cpu", "true", "--per_device_train_batch_size", "16"]
    )
    assert (args.beta, args.num_generations, args.temperature, args.top_p, args.max_completion_length) == (
        0.001, 16, 1.0, 0.9, 110)  # fmt: skip
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = sayo.main(["--tiny", "--output_dir", str(tmp_path), "--max_steps", "2", *SMALL])
    assert isinstance(trainer.model, peft.PeftModel)
    logs = [h for h in trainer.state.log_history if "rewards/region_attention/mean" in h]
    assert len(logs) == 2 and all(-1 < h["rewards/region_attention/mean"] < 1 for h in logs)
    assert all("rewards/format_reward/mean" in h and "rewards/accuracy_reward/mean" in h for h in logs)
    assert (tmp_path / "adapter_config.json").exists()


def test_ral_example_runs_on_the_tiny_vlm(tmp_path, monkeypatch):
    ral = _load("ral_grpo")
    argv = ["ral_grpo.py", "--output_dir", str(tmp_path), "--max_steps", "2", "--num_iterations", "2", *SMALL]
    monkeypatch.setattr("sys.argv", argv)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ral.main()
    assert (tmp_path / "model.safetensors").exists()
