"""AttentionGRPOTrainer on 2 CPU processes (gloo) under DDP, ZeRO-2 and ZeRO-3, and AttentionGKDTrainer under DDP
and ZeRO-3 (teacher sharded), equal 1 process on the same data.

The worker (`distributed_worker.py`) explains how "the same data" is made exact under GRPO. Tolerance: fp32,
rtol 1e-4 (~1000 ulps: batch shapes, bucketed/partitioned reductions and one SGD step reorder fp32 sums; observed
differences are ~1e-6 relative) and atol 1e-7 (attention/jsd ~ 3e-5 is a difference of O(1) entropies, so its
error is absolute, a few ulps of 1). A control shows the tolerance is far tighter than the errors it must catch:
doubling the learning rate, which is what summing instead of averaging gradients over 2 ranks does, moves the
step-2 loss, kl and attention/jsd by more than 10 times the tolerance (loss and kl by orders of magnitude).
"""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.scaleout.distributed_worker import GKD_KEYS, KEYS, run, run_gkd
from tests.testing_utils import ROOT
from trl_attention.distributed import CONFIG_DIR, config_path
from trl_attention.tiny import save_tiny_vlm

pytest.importorskip("deepspeed")

WORKER = Path(__file__).with_name("distributed_worker.py")
MODES = ("ddp", "zero2", "zero3", "zero3_teacher")
GKD_MODES = ("gkd_ddp", "gkd_zero3")  # run after MODES in the same processes: DDP after DeepSpeed
TOL = dict(rtol=1e-4, atol=1e-7)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_vlm(tmp_path_factory.mktemp("tiny_vlm"))


@pytest.fixture(scope="module")
def reference(model_dir, tmp_path_factory):
    return run(tmp_path_factory.mktemp("one_process"), model_dir, "ddp", world_size=1)


@pytest.fixture(scope="module")
def reference_teacher(model_dir, tmp_path_factory):
    return run(tmp_path_factory.mktemp("one_process_teacher"), model_dir, "ddp_teacher", world_size=1)


@pytest.fixture(scope="module")
def two_processes(model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("two_processes") / "results.json"
    _torchrun(str(out), model_dir, *MODES, *GKD_MODES, "distill_example")
    return json.loads(out.read_text())


def _assert_same(ours, reference, keys=KEYS):
    assert len(ours) == len(reference)
    for step, (a, b) in enumerate(zip(ours, reference)):
        keys = [k for k in keys if k in b]
        assert keys == [k for k in keys if k in a], step
        torch.testing.assert_close([a[k] for k in keys], [b[k] for k in keys], **TOL, msg=lambda m: f"{step}: {m}")


def test_reference_exercises_what_is_compared(reference):
    first, second = reference
    assert first["attention/jsd"] == 0 and second["attention/jsd"] > 1e-6  # step 2 reuses step 1's rollouts
    assert second["kl"] > 1e-3 and abs(second["loss"]) > 1e-3 and first["reward_std"] > 0
    assert 0 < first["attention/image_mass"] < 1 and first["engine"] == "Qwen2_5_VLForConditionalGeneration"


@pytest.mark.parametrize("mode", MODES)
def test_two_processes_equal_one_process(two_processes, reference, reference_teacher, mode):
    """zero3_teacher: RAL plus the GKD and attention-distillation terms to a ZeRO-3-sharded teacher, tower frozen."""
    steps = two_processes[mode]
    assert len(steps) == 2
    expected = ("DistributedDataParallel", None) if mode == "ddp" else ("DeepSpeedEngine", int(mode[4]))
    assert all((s["engine"], s["stage"]) == expected for s in steps)
    if mode.endswith("_teacher"):
        reference = reference_teacher
        assert steps[0]["teacher_engine"] == "DeepSpeedEngine" and reference[0]["teacher_engine"] != "DeepSpeedEngine"
        assert steps[0]["trainable"] == reference[0]["trainable"] < two_processes["zero3"][0]["trainable"]
        assert reference[1]["attention/distill_jsd"] > 1e-6 and reference[1]["distill/gkd_jsd"] > 1e-6
    if mode.startswith(
        "zero3"
    ):  # loaded under zero.Init, before the trainer: partitioned, and no engine gathers it yet
        assert (
            "ZeRO-3: the capture layer" in steps[0]["unprepared_check"] and "0-element" in steps[0]["unprepared_check"]
        )
    else:
        assert steps[0]["unprepared_check"] is None
    _assert_same(steps, reference)


@pytest.mark.parametrize("mode", GKD_MODES)
def test_distillation_on_two_processes_equals_one_process(two_processes, tmp_path, mode):
    """AttentionGKDTrainer: GKD's generalized JSD and the attention term normalised by the global token count (the
    two rows' completions differ in length), the teacher a ZeRO-3-sharded DeepSpeedEngine under zero3."""
    reference = run_gkd(tmp_path, "ddp", world_size=1)
    assert reference[1]["attention/distill_jsd"] > 1e-6 and reference[0]["grad_norm"] > 1e-3
    steps = two_processes[mode]
    engines = ("DistributedDataParallel", "Qwen2_5_VLForConditionalGeneration")
    assert all(
        (s["engine"], s["teacher_engine"]) == (engines if mode == "gkd_ddp" else ("DeepSpeedEngine",) * 2)
        for s in steps
    )
    _assert_same(steps, reference, GKD_KEYS)


def test_tolerance_catches_a_gradient_scale_error(reference, model_dir, tmp_path):
    doubled = run(tmp_path, model_dir, "ddp", world_size=1, learning_rate=1.0)
    _assert_same(doubled[:1], reference[:1])  # step 1 precedes any update
    for key in ("loss", "kl", "attention/jsd"):
        gap = abs(doubled[1][key] - reference[1][key])
        assert gap > 10 * (TOL["atol"] + TOL["rtol"] * abs(reference[1][key])), key


def _torchrun(*args, timeout=600):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(WORKER)]
    proc = subprocess.run([*command, *args], env=env, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]


def test_distillation_example_shards_student_and_teacher_under_zero3(two_processes):
    """examples/attention_distill.py with the flags examples/launch.sh passes (--deepspeed zero3), on 2 processes."""
    result = two_processes["distill_example"]
    assert (result["engine"], result["stage"]) == ("DeepSpeedEngine", 3)
    assert (result["teacher_engine"], result["teacher_stage"]) == ("DeepSpeedEngine", 3)  # sharded, not replicated
    assert len(result["losses"]) == 1 and result["losses"][0] > 0
    assert (Path(result["output_dir"]) / "model.safetensors").exists()  # ZeRO-3 gathers the 16-bit weights to save


@pytest.mark.parametrize("launcher", ["accelerate", "deepspeed", "torchrun"])
@pytest.mark.parametrize("nodes", [1, 2])
def test_launcher_commands_point_at_shipped_configs(launcher, nodes):
    """`examples/launch.sh` (DRY_RUN) builds each launcher's command from `trl-attention configs` paths."""
    env = dict(os.environ, DRY_RUN="1", LAUNCHER=launcher, NNODES=str(nodes), NODE_RANK="1")
    if (launcher, nodes) == ("accelerate", 1):  # through the installed CLI once (slow to import), else its directory
        env["TRL_ATTENTION"] = str(Path(sys.executable).with_name("trl-attention"))
    else:
        env["TRL_ATTENTION_CONFIGS"] = str(CONFIG_DIR)
    root = ROOT
    recipe, script = (
        ("ral", "ral_grpo.py") if (launcher == "deepspeed") == (nodes == 1) else ("distill", "attention_distill.py")
    )
    out = subprocess.run(
        ["bash", str(root / "examples" / "launch.sh"), recipe, "--max_steps", "3"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    words = shlex.split(out)
    assert words[0] == launcher and f"examples/{script}" in words
    assert words[words.index("--deepspeed") + 1] == config_path("zero3") and words[-2:] == ["--max_steps", "3"]
    processes = {"accelerate": "--num_processes", "deepspeed": "--num_gpus", "torchrun": "--nproc_per_node"}
    assert int(words[words.index(processes[launcher]) + 1]) == (8 * nodes if launcher == "accelerate" else 8)
    if launcher == "accelerate":
        yaml = words[words.index("--config_file") + 1]
        assert yaml == config_path("accelerate/zero3_multinode.yaml" if nodes == 2 else "accelerate/zero3.yaml")
    if nodes == 2:
        rank_flag = {"accelerate": "--machine_rank", "deepspeed": "--node_rank", "torchrun": "--node_rank"}[launcher]
        assert words[words.index(rank_flag) + 1] == "1"
