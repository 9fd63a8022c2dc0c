"""Bad input to AttentionGRPOTrainer's config and to `trl-attention grpo`: each is an error naming the option,
raised before anything heavy runs (docs/long-runs.md has the table)."""

import math

import pytest
import yaml

from tests.testing_utils import trainer_args
from trl_attention import AttentionGRPOConfig, cli
from trl_attention.distill.arguments import GRPOTeacherArguments
from trl_attention.ral.arguments import RALArguments

BAD_WEIGHTS = [math.nan, math.inf, -1.0, "1"]


@pytest.mark.parametrize("value", BAD_WEIGHTS)
def test_attn_coef_must_be_finite_and_non_negative(value, tmp_path):
    expected = f"attn_coef must be a finite number >= 0, got {value!r}"
    with pytest.raises(ValueError) as alone:
        RALArguments(attn_coef=value)  # the light class alone (the CLI's --help builds it): no parent __post_init__
    with pytest.raises(ValueError) as mixed:
        trainer_args(AttentionGRPOConfig, tmp_path, attn_coef=value)
    assert str(alone.value) == str(mixed.value) == expected


@pytest.mark.parametrize("name", ["gkd_coef", "attn_distill_coef"])
@pytest.mark.parametrize("value", BAD_WEIGHTS)
def test_teacher_weights_must_be_finite_and_non_negative(name, value, tmp_path):
    with pytest.raises(ValueError, match=f"^{name} must be a finite number >= 0, got {value!r}$"):
        GRPOTeacherArguments(**{name: value})
    with pytest.raises(ValueError, match=f"^{name} must be a finite number >= 0"):
        trainer_args(AttentionGRPOConfig, tmp_path, **{name: value})


@pytest.mark.parametrize("value", [-0.1, 1.5, math.nan])
def test_gkd_beta_must_be_in_0_1(value, tmp_path):
    with pytest.raises(ValueError, match=rf"^gkd_beta must be in \[0, 1\], got {value!r}$"):
        GRPOTeacherArguments(gkd_beta=value)
    with pytest.raises(ValueError, match=r"^gkd_beta must be in \[0, 1\]"):
        trainer_args(AttentionGRPOConfig, tmp_path, gkd_beta=value)


def test_good_values_and_grpo_configs_own_checks_still_run(tmp_path):
    RALArguments(attn_coef=0.0), GRPOTeacherArguments(gkd_coef=2.0, gkd_beta=1.0)
    config = trainer_args(AttentionGRPOConfig, tmp_path, attn_coef=0.0, gkd_beta=0.0)
    assert config.attn_coef == 0.0 and config.generation_batch_size == 4  # GRPOConfig.__post_init__ ran
    with pytest.raises(ValueError, match=r"generation_batch_size \(4\) must be divisible by num_generations \(3\)"):
        trainer_args(AttentionGRPOConfig, tmp_path, num_generations=3)


REENTRANT = "gradient_checkpointing_kwargs (activation_checkpointing_kwargs) {'use_reentrant': True} cannot be used"


@pytest.mark.parametrize(
    "overrides",
    [
        dict(gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": True}),
        dict(activation_checkpointing=True, activation_checkpointing_kwargs={"use_reentrant": True}),
        dict(attn_coef=0.0, attn_distill_coef=0.5, gradient_checkpointing_kwargs={"use_reentrant": True}),
        dict(gradient_checkpointing_kwargs={"use_reentrant": True}),  # GRPOConfig turns checkpointing on
    ],
)
def test_reentrant_checkpointing_is_refused_when_a_capture_will_run(overrides, tmp_path):
    with pytest.raises(ValueError) as error:
        trainer_args(AttentionGRPOConfig, tmp_path, **overrides)
    assert str(error.value).startswith(REENTRANT)
    assert "Set gradient_checkpointing_kwargs={'use_reentrant': False} (the default)" in str(error.value)


def test_reentrant_checkpointing_is_fine_without_a_capture(tmp_path):
    reentrant = {"use_reentrant": True}
    trainer_args(AttentionGRPOConfig, tmp_path, attn_coef=0.0, gradient_checkpointing_kwargs=reentrant)
    trainer_args(AttentionGRPOConfig, tmp_path, gradient_checkpointing=False, gradient_checkpointing_kwargs=reentrant)


@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if a model or dataset starts loading: the errors must come first."""
    import trl_attention.loading

    def fail(*args, **kwargs):
        pytest.fail("a model was loaded before the error")

    monkeypatch.setattr(trl_attention.loading, "load_model_and_processor", fail)


def _grpo(capsys, *argv):
    status = cli.main(["grpo", "--use_cpu", "true", "--report_to", "none", *argv])
    return status, capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--attn_coef", "nan"], "attn_coef must be a finite number >= 0, got nan"),
        (["--gkd_beta", "2"], "gkd_beta must be in [0, 1], got 2.0"),
        (["--attn_coef", "-1"], "attn_coef must be a finite number >= 0, got -1.0"),
        (["--heatmap_every", "-1"], "heatmap_every must be >= 0 and num_samples >= 1"),
        (["--num_samples", "0"], "heatmap_every must be >= 0 and num_samples >= 1"),
    ],
)
def test_cli_config_errors(argv, expected, capsys, tmp_path, no_loading):
    status, err = _grpo(capsys, "--tiny", "--output_dir", str(tmp_path), *argv)
    assert status == 2 and f"trl-attention grpo: error: {expected}" in err, err


def test_cli_missing_local_paths_are_named(capsys, tmp_path, no_loading, monkeypatch):
    (tmp_path / "models").mkdir()
    monkeypatch.chdir(tmp_path)
    cases = {
        ("--model_name_or_path", str(tmp_path / "nope"), "--dataset_name", "d"): f"{tmp_path}/nope",
        ("--model_name_or_path", "./nope", "--dataset_name", "d"): "./nope",
        ("--model_name_or_path", "../nope", "--dataset_name", "d"): "../nope",
        ("--model_name_or_path", "models/qwen", "--dataset_name", "d"): "models/qwen",  # its parent exists
    }
    for argv, path in cases.items():
        status, err = _grpo(capsys, "--output_dir", "out", *argv)
        assert status == 2 and f"error: --model_name_or_path {path}: no such file or directory" in err, err
    status, err = _grpo(capsys, "--output_dir", "out", "--model_name_or_path", "org/m", "--dataset_name", "./data")
    assert status == 2 and "error: --dataset_name ./data: no such file or directory" in err, err
    status, err = _grpo(capsys, "--output_dir", "out", "--tiny", "--teacher_model_name_or_path", "/no/teacher")
    assert status == 2 and "error: --teacher_model_name_or_path /no/teacher: no such file or directory" in err, err


def test_cli_unreachable_hub_ids_are_one_line(capsys, tmp_path):
    missing = "trl-attention-tests/no-such-repo-7f3e"  # offline: cannot connect; online: repository not found
    for argv, option in [
        (["--model_name_or_path", "org/m", "--dataset_name", missing], "dataset_name"),
        (["--tiny", "--teacher_model_name_or_path", missing], "teacher_model_name_or_path"),
    ]:
        status, err = _grpo(capsys, "--output_dir", str(tmp_path), *argv)
        assert status == 2 and f"trl-attention grpo: error: --{option} {missing}: cannot load it (" in err, err
        assert "Traceback" not in err


def test_cli_unreachable_model_is_one_line(capsys, tmp_path, monkeypatch):
    import datasets

    from trl_attention.cli.recipes import synthetic_vqa

    monkeypatch.setattr(datasets, "load_dataset", lambda *a, **k: synthetic_vqa(2))  # only the model is missing
    missing = "trl-attention-tests/no-such-model-7f3e"
    status, err = _grpo(capsys, "--output_dir", str(tmp_path), "--model_name_or_path", missing, "--dataset_name", "d")
    assert status == 2 and f"error: --model_name_or_path {missing}: cannot load it (" in err and "Traceback" not in err


def test_cli_model_with_tiny_is_an_error(capsys, tmp_path, no_loading):
    status, err = _grpo(capsys, "--output_dir", str(tmp_path), "--tiny", "--model_name_or_path", "org/m")
    assert status == 2 and "error: --model_name_or_path org/m given with --tiny (or `tiny: true` in the config" in err
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"tiny": True, "dataset_name": "org/d", "output_dir": str(tmp_path)}))
    status, err = _grpo(capsys, "--config", str(config), "--model_name_or_path", "org/m")
    assert status == 2 and "error: --model_name_or_path org/m, --dataset_name org/d given with --tiny" in err, err


def test_python_api_names_a_missing_local_model_or_teacher_path(tmp_path):
    """Was transformers' "Repo id must be in the form 'repo_name' or 'namespace/repo_name'" (a path read as a hub id)."""
    from trl_attention import AttentionGKDConfig, AttentionGKDTrainer, AttentionGRPOTrainer
    from trl_attention.tiny import build_tiny_lm

    missing = str(tmp_path / "no-such-model")
    args = trainer_args(AttentionGRPOConfig, tmp_path, attn_coef=0.0)
    with pytest.raises(ValueError, match=rf"^model='{missing}': no such local path"):
        AttentionGRPOTrainer(model=missing, reward_funcs=lambda completions, **kw: [0.0] * len(completions), args=args)
    model, tokenizer = build_tiny_lm()
    with pytest.raises(ValueError, match=r"^teacher_model='\./missing/teacher': no such local path"):
        AttentionGRPOTrainer(
            model=model, reward_funcs=lambda completions, **kw: [0.0] * len(completions), args=args,
            processing_class=tokenizer, teacher_model="./missing/teacher",
        )
    gkd_args = AttentionGKDConfig(output_dir=str(tmp_path / "gkd"), use_cpu=True, report_to=[])
    for kwargs in ({"model": missing, "teacher_model": model}, {"model": model, "teacher_model": "~/no/teacher"}):
        with pytest.raises(ValueError, match=r"(model|teacher_model)='.*': no such local path"):
            AttentionGKDTrainer(args=gkd_args, processing_class=tokenizer, **kwargs)
