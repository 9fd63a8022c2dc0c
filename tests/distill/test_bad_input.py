"""Bad input to AttentionGKDTrainer's config and to `trl-attention gkd`: each is an error naming the option,
raised before anything heavy runs (docs/long-runs.md has the table)."""

import math

import pytest

from trl_attention import cli
from trl_attention.distill import AttentionGKDConfig
from trl_attention.distill.arguments import AttentionDistillArguments


def _config(tmp_path, **overrides):
    values = dict(output_dir=str(tmp_path), use_cpu=True, bf16=False, report_to=[])
    return AttentionGKDConfig(**{**values, **overrides})


@pytest.mark.parametrize("name", ["attn_distill_coef", "gkd_coef"])
@pytest.mark.parametrize("value", [math.nan, -math.inf, -0.5])
def test_weights_must_be_finite_and_non_negative(name, value, tmp_path):
    expected = f"{name} must be a finite number >= 0, got {value!r}"
    with pytest.raises(ValueError) as alone:
        AttentionDistillArguments(**{name: value})  # alone (the CLI's --help builds it): no parent __post_init__
    with pytest.raises(ValueError) as mixed:
        _config(tmp_path, **{name: value})
    assert str(alone.value) == str(mixed.value) == expected


def test_gkd_configs_own_checks_still_run(tmp_path):
    assert _config(tmp_path, gkd_coef=0.0).lmbda == 0.5
    with pytest.raises(ValueError, match=r"^lmbda must be in the range \[0.0, 1.0\]"):
        _config(tmp_path, lmbda=2.0)  # GKDConfig.__post_init__, reached through ours


def test_reentrant_checkpointing_is_refused_when_the_capture_will_run(tmp_path):
    reentrant = dict(gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": True})
    with pytest.raises(ValueError, match=r"^gradient_checkpointing_kwargs \(activation_checkpointing_kwargs\)"):
        _config(tmp_path, **reentrant)
    assert _config(tmp_path, attn_distill_coef=0.0, **reentrant).attn_distill_coef == 0.0  # no capture: fine


@pytest.fixture
def no_loading(monkeypatch):
    import trl_attention.loading

    monkeypatch.setattr(trl_attention.loading, "load_model_and_processor", lambda *a, **k: pytest.fail("loaded"))


def _gkd(capsys, *argv):
    status = cli.main(["gkd", "--use_cpu", "true", "--report_to", "none", *argv])
    return status, capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--tiny", "--gkd_coef", "inf"], "gkd_coef must be a finite number >= 0, got inf"),
        (["--tiny", "--lmbda", "2"], "lmbda must be in the range [0.0, 1.0]"),
        (["--tiny", "--model_name_or_path", "org/m"], "--model_name_or_path org/m given with --tiny"),
        (["--tiny", "--teacher_model_name_or_path", "org/t"], "--teacher_model_name_or_path org/t given with --tiny"),
        (
            ["--model_name_or_path", "org/m", "--dataset_name", "d", "--teacher_model_name_or_path", "/no/teacher"],
            "--teacher_model_name_or_path /no/teacher: no such file or directory",
        ),
        (
            ["--model_name_or_path", "/no/model", "--dataset_name", "d", "--teacher_model_name_or_path", "org/t"],
            "--model_name_or_path /no/model: no such file or directory",
        ),
        (["--model_name_or_path", "org/m", "--dataset_name", "d"], "teacher_model_name_or_path is required"),
    ],
)
def test_cli_errors(argv, expected, capsys, tmp_path, no_loading):
    status, err = _gkd(capsys, "--output_dir", str(tmp_path), *argv)
    assert status == 2 and f"trl-attention gkd: error: {expected}" in err, err


def test_cli_unreachable_teacher_is_one_line(capsys, tmp_path, no_loading):
    missing = "trl-attention-tests/no-such-teacher-7f3e"
    argv = ["--model_name_or_path", "org/m", "--dataset_name", "d", "--teacher_model_name_or_path", missing]
    status, err = _gkd(capsys, "--output_dir", str(tmp_path), *argv)
    assert status == 2 and f"error: --teacher_model_name_or_path {missing}: cannot load it (" in err, err
    assert "Traceback" not in err


def test_cli_output_dir_with_checkpoints_is_refused(capsys, tmp_path, no_loading):
    (tmp_path / "checkpoint-4").mkdir()
    status, err = _gkd(capsys, "--tiny", "--output_dir", str(tmp_path))
    assert status == 2, err
    assert f"error: output_dir {tmp_path} already holds 1 checkpoint of an earlier run (latest: {tmp_path}/" in err
    assert "--resume_from_checkpoint latest" in err and "--overwrite_output_dir true" in err
    status, err = _gkd(capsys, "--tiny", "--output_dir", str(tmp_path), "--resume_from_checkpoint", "latest")
    assert status == 2  # the latest checkpoint is checked like a given one
    assert f"error: --resume_from_checkpoint {tmp_path}/checkpoint-4: not a Trainer checkpoint" in err, err
