"""AttentionGRPOTrainer on 2 CPU processes (gloo) under DDP, ZeRO-2 and ZeRO-3 equals 1 process on the same data.

The worker (`distributed_worker.py`) explains how "the same data" is made exact under GRPO. Tolerance: fp32,
rtol 1e-4 (~1000 ulps: batch shapes, bucketed/partitioned reductions and one SGD step reorder fp32 sums; observed
differences are ~1e-6 relative) and atol 1e-7 (attention/jsd ~ 3e-5 is a difference of O(1) entropies, so its
error is absolute, a few ulps of 1). A control shows the tolerance is far tighter than the errors it must catch:
doubling the learning rate, which is what summing instead of averaging gradients over 2 ranks does, moves every
step-2 loss, kl and attention/jsd by more than 10 times the tolerance (loss and kl by orders of magnitude).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from distributed_worker import KEYS, run

from trl_attention.tiny import save_tiny_vlm

pytest.importorskip("deepspeed")

WORKER = Path(__file__).with_name("distributed_worker.py")
MODES = ("ddp", "zero2", "zero3")
TOL = dict(rtol=1e-4, atol=1e-7)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_vlm(tmp_path_factory.mktemp("tiny_vlm"))


@pytest.fixture(scope="module")
def reference(model_dir, tmp_path_factory):
    return run(tmp_path_factory.mktemp("one_process"), model_dir, "ddp", world_size=1)


@pytest.fixture(scope="module")
def two_processes(model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("two_processes") / "results.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(WORKER.parent))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(WORKER), str(out), model_dir, *MODES]  # fmt: skip
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    return json.loads(out.read_text())


def _assert_same(ours, reference):
    assert len(ours) == len(reference)
    for step, (a, b) in enumerate(zip(ours, reference)):
        keys = [k for k in KEYS if k in b]
        assert keys == [k for k in KEYS if k in a], step
        torch.testing.assert_close([a[k] for k in keys], [b[k] for k in keys], **TOL, msg=lambda m: f"{step}: {m}")


def test_reference_exercises_what_is_compared(reference):
    first, second = reference
    assert first["attention/jsd"] == 0 and second["attention/jsd"] > 1e-6  # step 2 reuses step 1's rollouts
    assert second["kl"] > 1e-3 and abs(second["loss"]) > 1e-3 and first["reward_std"] > 0
    assert 0 < first["attention/image_mass"] < 1 and first["engine"] == "Qwen2_5_VLForConditionalGeneration"


@pytest.mark.parametrize("mode", MODES)
def test_two_processes_equal_one_process(two_processes, reference, mode):
    steps = two_processes[mode]
    assert len(steps) == 2
    expected = ("DistributedDataParallel", None) if mode == "ddp" else ("DeepSpeedEngine", int(mode[-1]))
    assert all((s["engine"], s["stage"]) == expected for s in steps)
    if mode == "zero3":  # loaded under zero.Init, before the trainer: partitioned, and no engine gathers it yet
        assert (
            "ZeRO-3: the capture layer" in steps[0]["unprepared_check"] and "0-element" in steps[0]["unprepared_check"]
        )
    else:
        assert steps[0]["unprepared_check"] is None
    _assert_same(steps, reference)


def test_tolerance_catches_a_gradient_scale_error(reference, model_dir, tmp_path):
    doubled = run(tmp_path, model_dir, "ddp", world_size=1, learning_rate=1.0)
    _assert_same(doubled[:1], reference[:1])  # step 1 precedes any update
    for key in ("loss", "kl", "attention/jsd"):
        gap = abs(doubled[1][key] - reference[1][key])
        assert gap > 10 * (TOL["atol"] + TOL["rtol"] * abs(reference[1][key])), key
