"""`trl-attention grpo|gkd` and output_dir: refuse to mix runs, resume the latest or a given checkpoint, overwrite."""

import json
import logging

import pytest
import torch

from tests.testing_utils import ROOT
from trl_attention import cli
from trl_attention.cli.checkpoints import checkpoints, prepare_output_dir
from trl_attention.cli.training import ConfigError

TINY_YAML = ROOT / "examples" / "configs" / "grpo_tiny.yaml"


class _Args:
    def __init__(self, output_dir, resume=None):
        self.output_dir, self.resume_from_checkpoint = str(output_dir), resume


def _fake_run(tmp_path, *steps):
    for step in steps:
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    return tmp_path


def test_checkpoints_are_ordered_by_step_not_by_name(tmp_path):
    _fake_run(tmp_path, 9, 10, 2)
    (tmp_path / "checkpoint-x").mkdir()
    (tmp_path / "checkpoint-3").write_text("a file, not a checkpoint")
    assert [p.name for p in checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-9", "checkpoint-10"]
    assert checkpoints(tmp_path / "missing") == [] and checkpoints(None) == []


def test_output_dir_with_checkpoints_is_refused_naming_it_its_latest_and_both_options(tmp_path):
    _fake_run(tmp_path, 1, 2)
    with pytest.raises(ConfigError) as error:
        prepare_output_dir(_Args(tmp_path))
    assert str(error.value) == (
        f"output_dir {tmp_path} already holds 2 checkpoints of an earlier run (latest: {tmp_path}/checkpoint-2): "
        "pass --resume_from_checkpoint latest to continue that run, or --overwrite_output_dir true to delete its "
        "checkpoints and start from step 0 (or choose another --output_dir)"
    )
    for value in ("false", "", None):  # explicit "no resume" is the same request
        with pytest.raises(ConfigError, match="already holds 2 checkpoints"):
            prepare_output_dir(_Args(tmp_path, value))


def test_an_output_dir_without_checkpoints_is_fine(tmp_path):
    (tmp_path / "model.safetensors").write_text("a saved model but no checkpoint")
    args = _Args(tmp_path, "false")
    prepare_output_dir(args)
    assert args.resume_from_checkpoint is None


@pytest.mark.parametrize("value", ["latest", "true", "True", "LATEST"])
def test_latest_and_true_resume_the_highest_step(tmp_path, value):
    _fake_run(tmp_path, 9, 10)
    args = _Args(tmp_path, value)
    prepare_output_dir(args)
    assert args.resume_from_checkpoint == str(tmp_path / "checkpoint-10")


def test_latest_without_checkpoints_is_an_error(tmp_path):
    with pytest.raises(ConfigError) as error:
        prepare_output_dir(_Args(tmp_path / "new", "true"))
    assert str(error.value) == (
        f"--resume_from_checkpoint true: output_dir {tmp_path}/new holds no checkpoint-* directory to resume from "
        "(drop the option to start from step 0)"
    )


def test_a_checkpoint_path_is_checked(tmp_path, caplog):
    _fake_run(tmp_path, 1, 2, 3)
    with pytest.raises(ConfigError, match=f"^--resume_from_checkpoint {tmp_path}/checkpoint-7: no such checkpoint"):
        prepare_output_dir(_Args(tmp_path, f"{tmp_path}/checkpoint-7"))
    (tmp_path / "other").mkdir()
    with pytest.raises(ConfigError, match=r"other: not a Trainer checkpoint \(no trainer_state.json in it\)"):
        prepare_output_dir(_Args(tmp_path, str(tmp_path / "other")))
    args = _Args(tmp_path, str(tmp_path / "checkpoint-1"))
    with caplog.at_level(logging.WARNING, logger="trl_attention.cli.checkpoints"):
        prepare_output_dir(args)
    assert args.resume_from_checkpoint == str(tmp_path / "checkpoint-1")
    assert "(checkpoint-2, checkpoint-3) will be overwritten as the run reaches them" in caplog.text


def test_overwrite_deletes_the_checkpoints_and_says_so(tmp_path, caplog):
    _fake_run(tmp_path, 1, 2)
    (tmp_path / "notes.txt").write_text("kept")
    args = _Args(tmp_path)
    with caplog.at_level(logging.WARNING, logger="trl_attention.cli.checkpoints"):
        prepare_output_dir(args, overwrite=True)
    assert checkpoints(tmp_path) == [] and (tmp_path / "notes.txt").is_file()
    assert f"--overwrite_output_dir: deleted 2 checkpoint(s) in {tmp_path} (latest was {tmp_path}/checkpoint-2)" in (
        caplog.text
    )
    with pytest.raises(ConfigError, match="--resume_from_checkpoint latest and --overwrite_output_dir true exclude"):
        prepare_output_dir(_Args(tmp_path, "latest"), overwrite=True)


def test_overwrite_on_a_non_zero_rank_leaves_the_files_to_rank_0(tmp_path, monkeypatch):
    _fake_run(tmp_path, 1)
    monkeypatch.setenv("RANK", "1")
    prepare_output_dir(_Args(tmp_path), overwrite=True)
    assert len(checkpoints(tmp_path)) == 1


def _grpo(tmp_path, *extra):
    return [
        "grpo",
        "--config",
        str(TINY_YAML),
        "--num_samples",
        "16",
        "--save_strategy",
        "steps",
        "--save_steps",
        "1",
        "--output_dir",
        str(tmp_path),
        "--disable_tqdm",
        "true",
        *extra,
    ]


def _step(checkpoint):
    return json.loads((checkpoint / "trainer_state.json").read_text())["global_step"]


def test_cli_refuses_resumes_the_latest_and_overwrites(tmp_path, capsys):
    assert cli.main(_grpo(tmp_path, "--max_steps", "2")) == 0
    assert "Trained 2 steps on 1 process;" in capsys.readouterr().out

    assert cli.main(_grpo(tmp_path, "--max_steps", "3")) == 2  # silently restarting would overwrite the run
    err = capsys.readouterr().err
    assert f"trl-attention grpo: error: output_dir {tmp_path} already holds 2 checkpoints" in err
    assert f"(latest: {tmp_path}/checkpoint-2)" in err and "--resume_from_checkpoint latest" in err

    assert cli.main(_grpo(tmp_path, "--max_steps", "3", "--resume_from_checkpoint", "latest")) == 0
    assert "Trained 3 steps on 1 process;" in capsys.readouterr().out
    assert [_step(p) for p in checkpoints(tmp_path)] == [1, 2, 3]  # continued from step 2, not from 0

    assert cli.main(_grpo(tmp_path, "--max_steps", "1", "--overwrite_output_dir", "true")) == 0
    assert "Trained 1 steps on 1 process;" in capsys.readouterr().out
    assert [p.name for p in checkpoints(tmp_path)] == ["checkpoint-1"]  # no stale checkpoint-3 as the "latest"


def test_cli_resume_errors_come_before_any_model_is_loaded(tmp_path, capsys, monkeypatch):
    import trl_attention.cli.data as data

    monkeypatch.setattr(data, "load_model_and_data", lambda *a: pytest.fail("loaded a model"))
    assert cli.main(_grpo(tmp_path / "new", "--resume_from_checkpoint", "true")) == 2
    assert "--resume_from_checkpoint true: output_dir" in capsys.readouterr().err
    assert cli.main(_grpo(tmp_path, "--resume_from_checkpoint", str(tmp_path / "checkpoint-5"))) == 2
    assert f"error: --resume_from_checkpoint {tmp_path}/checkpoint-5: no such checkpoint directory" in (
        capsys.readouterr().err
    )


def test_cli_resume_restores_the_tiny_vlms_trained_weights(tmp_path, capsys):
    """`--resume_from_checkpoint latest` on the tiny Qwen2.5-VL: the run continues from checkpoint-2's weights (with
    nothing left to train, the saved model is checkpoint-2's), not from a fresh init (transformers' own reload)."""
    from safetensors.torch import load_file

    assert cli.main(_grpo(tmp_path, "--max_steps", "2")) == 0
    checkpoint = load_file(tmp_path / "checkpoint-2" / "model.safetensors")
    (tmp_path / "model.safetensors").unlink()
    assert cli.main(_grpo(tmp_path, "--max_steps", "2", "--resume_from_checkpoint", "latest")) == 0
    final = load_file(tmp_path / "model.safetensors")
    assert final.keys() == checkpoint.keys() and any(k.startswith("visual.") for k in final)
    assert [k for k in final if not torch.equal(final[k], checkpoint[k])] == []
