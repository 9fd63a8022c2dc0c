"""Shipped DeepSpeed/accelerate configs, freezing the vision tower, and the distributed pre-flight checks."""

import json
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from tests.testing_utils import ROOT, trainer_args
from trl_attention import AttentionGRPOConfig
from trl_attention.cli import main as cli_main
from trl_attention.distributed import (
    DistributedChecksCallback,
    check_batch_sizes,
    check_teacher_fits,
    check_zero3_capture_ready,
    config_path,
    deepspeed_config,
    freeze_vision_tower,
    list_configs,
)
from trl_attention.tiny import build_tiny_lm, build_tiny_vlm

ROOT = ROOT
STAGES = {"zero2": 2, "zero3": 3, "zero3_offload": 3}


def test_configs_are_listed_and_printed(capsys):
    names = set(list_configs())
    assert {f"deepspeed/{n}.json" for n in STAGES} | {f"accelerate/{n}.yaml" for n in STAGES} <= names
    assert "accelerate/zero3_multinode.yaml" in names
    assert cli_main(["configs"]) == 0
    out = capsys.readouterr().out
    assert all(Path(line.split()[1]).is_file() for line in out.strip().splitlines()) and len(out.splitlines()) == 7
    assert cli_main(["configs", "--path", "zero3"]) == 0
    assert capsys.readouterr().out.strip() == config_path("deepspeed/zero3.json")
    assert cli_main(["configs", "--path", "zero4"]) == 2 and "no shipped config" in capsys.readouterr().err


@pytest.mark.parametrize("name", list(STAGES))
def test_deepspeed_json_loads_through_hf_and_deepspeed_parsers(name, tmp_path):
    """HF fills every "auto" from TrainingArguments and the model; DeepSpeed's own parser accepts the result."""
    pytest.importorskip("deepspeed")
    from deepspeed.runtime.config import DeepSpeedConfig
    from transformers.integrations.deepspeed import HfTrainerDeepSpeedConfig, unset_hf_deepspeed_config

    raw = deepspeed_config(name)
    assert raw["zero_optimization"]["stage"] == STAGES[name] and raw["bf16"]["enabled"] == "auto"
    args = trainer_args(AttentionGRPOConfig, tmp_path, bf16=True, max_grad_norm=0.5, gradient_accumulation_steps=2)
    model, _ = build_tiny_vlm()
    try:  # the HF config registers itself globally (ZeRO-3 would partition every model built meanwhile)
        hf = HfTrainerDeepSpeedConfig(config_path(name))
        hf.trainer_config_process(args)
        hf.trainer_config_finalize(args, model, num_training_steps=10)
        filled = hf.config
    finally:
        unset_hf_deepspeed_config()
    assert "auto" not in json.dumps(filled)
    assert filled["bf16"]["enabled"] is True and filled["gradient_clipping"] == 0.5
    assert filled["zero_optimization"]["reduce_bucket_size"] == model.config.text_config.hidden_size**2
    parsed = DeepSpeedConfig(filled)
    assert parsed.zero_optimization_stage == STAGES[name] and parsed.bfloat16_config.enabled
    assert parsed.train_batch_size == 4 * 2 and parsed.gradient_clipping == 0.5
    assert parsed.zero_config.offload_optimizer is not None if "offload" in name else True


@pytest.mark.parametrize("name", [*STAGES, "zero3_multinode"])
def test_accelerate_yaml_loads_and_matches_its_json(name, monkeypatch):
    pytest.importorskip("deepspeed")
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.utils import DeepSpeedPlugin

    config = load_config_from_file(config_path(f"accelerate/{name}.yaml"))
    assert config.distributed_type == "DEEPSPEED" and config.mixed_precision == "bf16" and not config.use_cpu
    assert (config.num_machines, config.num_processes) == ((2, 16) if name == "zero3_multinode" else (1, 8))
    ds = config.deepspeed_config
    reference = deepspeed_config(name.replace("_multinode", ""))["zero_optimization"]
    assert ds["zero_stage"] == reference["stage"]
    offload = "cpu" if "offload_param" in reference else "none"
    assert ds["offload_param_device"] == ds["offload_optimizer_device"] == offload
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    plugin = DeepSpeedPlugin(
        zero_stage=ds["zero_stage"],
        offload_param_device=ds["offload_param_device"],
        offload_optimizer_device=ds["offload_optimizer_device"],
        zero3_init_flag=ds["zero3_init_flag"],
        zero3_save_16bit_model=ds["zero3_save_16bit_model"],
    )
    assert plugin.deepspeed_config["zero_optimization"]["stage"] == reference["stage"]
    assert "gradient_clipping" not in ds and plugin.deepspeed_config["gradient_clipping"] == "auto"  # max_grad_norm


@pytest.mark.parametrize("name", [*STAGES, "zero3_multinode"])
def test_accelerate_launch_turns_each_yaml_into_a_deepspeed_launch(name):
    """accelerate's own launch validation and DeepSpeed environment, short of spawning (impossible on CPU)."""
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils.launch import prepare_deepspeed_cmd_env

    argv = ["--config_file", config_path(f"accelerate/{name}.yaml"), "--machine_rank", "1", "train.py"]
    args, defaults, _ = _validate_launch_command(launch_command_parser().parse_args(argv))
    assert args.use_deepspeed and not args.cpu and args.num_processes == 8 * args.num_machines
    args.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)  # as launch_command does
    _, env = prepare_deepspeed_cmd_env(args)
    reference = deepspeed_config(name.replace("_multinode", ""))["zero_optimization"]
    offload = "cpu" if "offload_param" in reference else "none"
    assert env["ACCELERATE_USE_DEEPSPEED"] == "true" and env["ACCELERATE_MIXED_PRECISION"] == "bf16"
    assert env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == str(reference["stage"])
    assert (
        env["ACCELERATE_DEEPSPEED_OFFLOAD_PARAM_DEVICE"]
        == env["ACCELERATE_DEEPSPEED_OFFLOAD_OPTIMIZER_DEVICE"]
        == offload
    )


def test_installed_wheel_contains_the_configs(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("trl_attention-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert {f"trl_attention/configs/{name}" for name in list_configs()} <= names


# -- freezing ----------------------------------------------------------------------------------------------------
def test_freeze_vision_tower_counts_and_freezes_exactly_the_tower_and_merger():
    model, _ = build_tiny_vlm()
    visual = model.model.visual
    expected = sum(p.numel() for p in visual.parameters())  # Qwen2.5-VL: the merger (projector) is visual.merger
    assert any("merger" in n for n, _ in visual.named_parameters())
    assert freeze_vision_tower(model) == expected
    assert all(not p.requires_grad for p in visual.parameters())
    assert all(p.requires_grad for n, p in model.named_parameters() if not n.startswith("model.visual."))
    assert freeze_vision_tower(model) == 0  # already frozen


@pytest.mark.parametrize("kind", ["qwen2_vl", "qwen3_vl"])
def test_freeze_vision_tower_on_other_qwen_families(kind):
    from trl_attention.tiny import build_tiny_qwen_vl

    model, _ = build_tiny_qwen_vl(kind)
    visual = model.model.visual  # Qwen3-VL: merger and deepstack mergers live inside it
    assert freeze_vision_tower(model) == sum(p.numel() for p in visual.parameters()) > 0
    assert [n for n, p in model.named_parameters() if not p.requires_grad] == [
        n for n, _ in model.named_parameters() if n.startswith("model.visual.")
    ]


def test_freeze_vision_tower_finds_a_separate_projector():
    from torch import nn

    class Llava(nn.Module):
        def __init__(self):
            super().__init__()
            self.vision_tower, self.multi_modal_projector = nn.Linear(3, 4), nn.Linear(4, 5, bias=False)
            self.language_model = nn.Linear(5, 5)

    assert freeze_vision_tower(Llava()) == 3 * 4 + 4 + 4 * 5


def test_freeze_vision_tower_without_one_is_a_clear_error():
    model, _ = build_tiny_lm()
    with pytest.raises(ValueError, match="Qwen2ForCausalLM has no vision tower"):
        freeze_vision_tower(model)


# -- checks ------------------------------------------------------------------------------------------------------
def _args(**kw):
    values = dict(
        per_device_train_batch_size=8,
        gradient_accumulation_steps=1,
        num_generations=8,
        steps_per_generation=1,
        deepspeed=None,
    )
    return SimpleNamespace(**{**values, **kw})


def test_batch_check_names_world_size_and_valid_batch_sizes():
    check_batch_sizes(_args(), world_size=8)  # 8 GPUs x 8 rollouts of one prompt each
    check_batch_sizes(_args(per_device_train_batch_size=1), world_size=8)  # one group spread over 8 GPUs
    with pytest.raises(
        ValueError,
        match=r"num_generations=8 does not divide .* = 12.*use per_device_train_batch_size in \[2, 4, 6, 8\]",
    ):
        check_batch_sizes(_args(per_device_train_batch_size=3), world_size=4)
    check_batch_sizes(_args(per_device_train_batch_size=3, steps_per_generation=8), world_size=1)


def test_batch_check_rejects_hard_coded_deepspeed_batch_for_another_world_size():
    config = {**deepspeed_config("zero3"), "train_batch_size": 64, "train_micro_batch_size_per_gpu": 8}
    check_batch_sizes(_args(deepspeed=config), world_size=8)
    with pytest.raises(ValueError, match=r"train_batch_size=64 \(this launch: 8\).*\"auto\""):
        check_batch_sizes(_args(deepspeed=config), world_size=1)


def test_teacher_fit_check_uses_sharding_and_reports_sizes():
    teacher, _ = build_tiny_lm()
    n = sum(p.numel() for p in teacher.parameters())
    assert check_teacher_fits(teacher, world_size=8, zero_stage=3, device_memory=n * 4) == n * 4 // 8
    with pytest.raises(ValueError, match=r"replicated on each of 8 GPUs under ZeRO stage 2.*sharded"):
        check_teacher_fits(teacher, world_size=8, zero_stage=2, device_memory=n * 4, reserved=1)
    with pytest.raises(ValueError, match="sharded over 8 GPUs under ZeRO stage 3"):
        check_teacher_fits(teacher, world_size=8, zero_stage=3, device_memory=n * 4 // 8 - 1)


def test_zero3_check_passes_unpartitioned_models():
    model, _ = build_tiny_vlm()
    check_zero3_capture_ready(model)  # the partitioned cases run under ZeRO-3 in test_distributed_multiprocess.py


def test_tiny_models_build_whole_while_a_zero3_config_is_alive():
    """TrainingArguments(deepspeed=zero3) registers a global config that makes transformers partition models at
    construction; the tiny builders (used by the examples' --tiny) must still return whole, identical models."""
    pytest.importorskip("deepspeed")
    from transformers.integrations.deepspeed import (
        HfDeepSpeedConfig,
        is_deepspeed_zero3_enabled,
        unset_hf_deepspeed_config,
    )

    reference, _ = build_tiny_vlm(seed=3)
    alive = HfDeepSpeedConfig(deepspeed_config("zero3"))
    try:
        assert is_deepspeed_zero3_enabled()
        model, _ = build_tiny_vlm(seed=3)
        assert is_deepspeed_zero3_enabled() and alive.is_zero3()  # restored afterwards
    finally:
        unset_hf_deepspeed_config()
    for (name, a), (_, b) in zip(reference.named_parameters(), model.named_parameters()):
        assert not hasattr(b, "ds_id") and torch.equal(a, b), name


def test_checks_callback_runs_the_checks_when_training_starts():
    trainer = SimpleNamespace(accelerator=SimpleNamespace(num_processes=4), model=None, teacher_model=None)
    model, _ = build_tiny_lm()
    callback = DistributedChecksCallback(trainer)
    callback.on_train_begin(_args(), None, None, model=model)
    with pytest.raises(ValueError, match=r"num_generations=8 .* With 4 processes"):
        callback.on_train_begin(_args(per_device_train_batch_size=3), None, None, model=model)
    with torch.device("meta"):  # a teacher on the meta device: sized before anything is loaded
        big, _ = build_tiny_lm(hidden_size=256, intermediate_size=512)
    n = sum(p.numel() for p in big.parameters())
    trainer.teacher_model, callback.device_memory = big, 4 * n - 1
    with pytest.raises(ValueError, match="teacher does not fit"):
        callback.on_train_begin(_args(), None, None, model=model)
