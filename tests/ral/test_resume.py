"""Resuming inside a rollout-reuse cycle (num_iterations=2): what docs/long-runs.md measures.

TRL's GRPOTrainer keeps the generated batch (`_buffered_inputs`) and its micro-step counter (`_step`) in memory
only: a run resumed from a checkpoint at an odd step regenerates at once and reuses from then on, one step out of
phase with the straight run (plain GRPOTrainer, measured here as the control). AttentionGRPOTrainer saves both per
rank with each checkpoint (`trl_attention.checkpointing.RolloutBufferMixin`): a resume from any step is the
straight run, bit for bit, on 1 process and on 2 (tests/ral/resume_worker.py under torchrun). A checkpoint without
the saved rollouts (written before this) resumes as TRL does, with a warning.
"""

import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from trl import GRPOConfig, GRPOTrainer

from tests.testing_utils import PROMPTS, ROOT, length_reward, trainer_args
from trl_attention import AttentionGRPOConfig, AttentionGRPOTrainer
from trl_attention.tiny import build_tiny_lm

WORKER = Path(__file__).with_name("resume_worker.py")


def _run(trainer_cls, config_cls, output_dir, resume=None, record=None):
    """(per step: (loss, attention/jsd), global steps at which a generation ran, final parameters)."""
    torch.manual_seed(0)
    model, tokenizer = build_tiny_lm(seed=0)
    args = trainer_args(config_cls, output_dir, max_steps=4, num_iterations=2, save_strategy="steps", save_steps=1)
    with warnings.catch_warnings(record=record is not None) as caught:
        if record is None:
            warnings.simplefilter("ignore")
        trainer = trainer_cls(
            model=model,
            reward_funcs=length_reward,
            args=args,
            train_dataset=Dataset.from_dict({"prompt": PROMPTS * 4}),
            processing_class=tokenizer,
        )
        generations, generate = [], trainer._generate_and_score_completions

        def counted(batch):
            generations.append(trainer.state.global_step + 1)
            return generate(batch)

        trainer._generate_and_score_completions = counted
        trainer.train(resume_from_checkpoint=resume)
    if record is not None:
        record.extend(str(w.message) for w in caught)
    logs = {h["step"]: (h["loss"], h.get("attention/jsd")) for h in trainer.state.log_history if "loss" in h}
    return logs, generations, torch.cat([p.detach().flatten() for p in trainer.model.parameters()])


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """The straight 4-step runs (checkpoints at every step), RAL's and plain GRPO's."""
    root = tmp_path_factory.mktemp("straight")
    return {
        "ral": (root / "ral", _run(AttentionGRPOTrainer, AttentionGRPOConfig, root / "ral")),
        "grpo": (root / "grpo", _run(GRPOTrainer, GRPOConfig, root / "grpo")),
    }


def test_straight_run_generates_every_other_step_and_ral_acts_on_the_reused_ones(straight):
    path, (logs, generations, _) = straight["ral"]
    assert generations == [1, 3]
    assert logs[1][1] == 0.0 and logs[3][1] == 0.0  # fresh rollouts: the old attention is the current one
    assert 1e-6 < logs[2][1] < 1e-3 and 1e-6 < logs[4][1] < 1e-3  # reused rollouts: the term acts
    saved = torch.load(path / "checkpoint-1" / "rollouts_0.pt", weights_only=True)
    assert saved["step"] == 1 and len(saved["buffer"]) == 1 and "old_attention_probs" in saved["buffer"][0]
    assert not (straight["grpo"][0] / "checkpoint-1" / "rollouts_0.pt").exists()  # plain TRL saves none


@pytest.mark.parametrize("step, expected_generations", [(1, [3]), (2, [3]), (3, [])])
def test_resume_from_any_step_equals_the_straight_run(straight, tmp_path, step, expected_generations):
    path, (logs, _, params) = straight["ral"]
    record = []
    resumed, generations, resumed_params = _run(
        AttentionGRPOTrainer, AttentionGRPOConfig, tmp_path, resume=str(path / f"checkpoint-{step}"), record=record
    )
    assert generations == expected_generations  # inside a cycle: the saved rollouts are reused, not regenerated
    assert resumed == logs  # loss and attention/jsd of every step, exactly
    assert torch.equal(resumed_params, params)
    assert not [m for m in record if "rollout" in m]


def test_plain_trl_shifts_the_reuse_phase_inside_a_cycle(straight, tmp_path):
    """TRL's behaviour, measured (the control): it regenerates at step 2 (one extra generation), out of phase."""
    path, (logs, _, params) = straight["grpo"]
    resumed, generations, resumed_params = _run(GRPOTrainer, GRPOConfig, tmp_path, resume=str(path / "checkpoint-1"))
    assert generations == [2, 4]  # straight: [1, 3]
    assert abs(resumed[2][0]) < 1e-6 < abs(logs[2][0])  # a fresh-rollout step (loss ~0) where straight reuses
    assert (resumed_params - params).abs().max() > 1e-3


def test_checkpoint_without_saved_rollouts_resumes_as_trl_does_and_warns(straight, tmp_path):
    path, (logs, _, params) = straight["ral"]
    old = tmp_path / "checkpoint-1"
    shutil.copytree(path / "checkpoint-1", old)
    (old / "rollouts_0.pt").unlink()  # a checkpoint written before the rollouts were saved
    record = []
    resumed, generations, resumed_params = _run(
        AttentionGRPOTrainer, AttentionGRPOConfig, tmp_path / "run", resume=str(old), record=record
    )
    assert generations == [2, 4]
    assert resumed[2][1] == 0.0 and logs[2][1] > 1e-6  # the RAL term is off where the straight run has it
    assert (resumed_params - params).abs().max() > 1e-3
    assert any("inside a rollout-reuse cycle" in m and "rollouts_0.pt" in m for m in record), record


def test_two_processes_resume_inside_a_cycle_equals_the_straight_run(tmp_path):
    """2 CPU processes (gloo, DDP): each rank saves and restores its own rollouts; parameters torch.equal."""
    out = tmp_path / "result.json"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(WORKER)]
    proc = subprocess.run([*command, str(tmp_path), str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-6000:]
    result = json.loads(out.read_text())
    assert result["files"] == ["rollouts_0.pt", "rollouts_1.pt"]
    assert result["generations"] == {"straight": [1, 3], "resumed": [3]}
    assert result["equal"] == {"0": True, "1": True}  # every rank's parameters, resumed vs straight
    assert result["logs_equal"] is True and result["ranks_agree"] is True
