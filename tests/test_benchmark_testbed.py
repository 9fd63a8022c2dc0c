"""benchmarks/testbed.py: its statistics by hand (intervals over SFT checkpoints' means, paired differences,
collapse rate), `attention_shift`, and a micro run end to end."""

import json
import math
import os
import subprocess
import sys

import pytest

from tests.testing_utils import ROOT

BENCHMARKS = ROOT / "benchmarks"


@pytest.fixture(scope="module")
def report():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import evidence_data
        import testbed_report
    finally:
        sys.path.remove(str(BENCHMARKS))
    return testbed_report, evidence_data


def test_clustered_interval_is_over_the_checkpoints_means(report):
    tb, data = report
    pairs = [(0, 0.1), (0, 0.3), (1, 0.5), (2, 0.2), (2, 0.4), (2, None)]
    got = tb.clustered(pairs)
    expected = data.mean_ci([0.2, 0.5, 0.3])
    assert got["n"] == 3 and got["mean"] == pytest.approx(expected["mean"])
    assert got["half_width"] == pytest.approx(expected["half_width"])  # df = 2, not 4


def _run(arm, sft_seed, seed, accuracy, fmt=1.0, shift=0.01):
    return dict(arm=arm, sft_seed=sft_seed, seed=seed, accuracy=accuracy, answer_format=fmt, region_share=0.3,
                lift=2.0, attn_shift=shift, attn_divergence_max=None, collapsed=fmt < 0.5)  # fmt: skip


def test_summary_differences_and_collapse_rate_by_hand(report):
    tb, _ = report
    baselines = {"sft_0": dict(accuracy=0.4, answer_format=1.0, region_share=0.2, lift=1.5),
                 "sft_1": dict(accuracy=0.2, answer_format=1.0, region_share=0.2, lift=1.5)}  # fmt: skip
    runs = [_run("grpo", 0, 0, 0.6), _run("grpo", 0, 1, 0.5), _run("grpo", 1, 0, 0.5), _run("grpo", 1, 1, 0.4),
            _run("ral", 0, 0, 0.7), _run("ral", 0, 1, 0.5), _run("ral", 1, 0, 0.1, fmt=0.2), _run("ral", 1, 1, 0.4)]  # fmt: skip
    rows = tb.summarise(runs, baselines, ["grpo", "ral"])
    # grpo - its SFT: checkpoint 0: (0.2 + 0.1) / 2 = 0.15, checkpoint 1: (0.3 + 0.2) / 2 = 0.25 -> mean 0.2
    assert rows["grpo"]["d_sft"]["mean"] == pytest.approx(0.2) and rows["grpo"]["d_sft"]["n"] == 2
    assert rows["grpo"]["d_sft_runs"]["n"] == 4
    # ral - grpo, same checkpoint and seed: checkpoint 0: (0.1 + 0) / 2, checkpoint 1: (-0.4 + 0) / 2
    assert rows["ral"]["d_base_accuracy"]["mean"] == pytest.approx((0.05 - 0.2) / 2)
    assert rows["ral"]["baseline"] == "grpo" and "d_base_accuracy" not in rows["grpo"]
    assert rows["ral"]["collapse_rate"]["mean"] == 0.25 and rows["grpo"]["collapse_rate"]["mean"] == 0.0
    assert rows["sft"]["accuracy"]["mean"] == pytest.approx(0.3)
    assert tb._baseline_arm("ni2_c5") == "ni2_c0" and tb._baseline_arm("sayo") == "grpo"
    table = tb.main_table(rows)
    assert "| ral | 4 |" in table and "25%" in table


def test_attention_shift_is_zero_for_the_same_model_and_bounded():
    from trl_attention.tiny import build_tiny_vlm, make_grounding_dataset
    from trl_attention_recipes.evaluation import attention_shift

    model, processor = build_tiny_vlm(seed=0)
    other, _ = build_tiny_vlm(seed=1)
    rows = make_grounding_dataset(3, seed=0, image_size=112)
    completions = ["<answer>red</answer>", "<answer>blue</answer>", ""]
    assert attention_shift(model, model, processor, rows, completions) == 0.0
    shift = attention_shift(model, other, processor, rows, completions)
    assert 0.0 < shift <= math.log(2)
    # by hand: the library's JSD of the two answer-token image grids per row, averaged over rows with a completion
    import torch

    from trl_attention.losses import jsd
    from trl_attention.plotting import capture_image_attention
    from trl_attention_recipes.evaluation import answer_rows

    def grid(m, i):
        att = capture_image_attention(m, processor, rows[i]["prompt"], rows[i]["image"], completion=completions[i])
        g = torch.tensor(att.select(answer_rows(processor.tokenizer, completions[i], att.grids.shape[0])))
        return (g / g.sum()).flatten().double()

    hand = sum(float(jsd(grid(model, i), grid(other, i))) for i in range(2)) / 2
    assert shift == pytest.approx(hand, rel=1e-6, abs=1e-9)


def test_micro_run_end_to_end(tmp_path):
    out = tmp_path / "tb"
    argv = ["--sft-seeds", "1", "--rl-seeds", "1", "--arms", "grpo", "ral_group", "--sft-steps", "2",
            "--rl-steps", "1", "--rl-batch", "4", "--generations", "2", "--n-eval", "4", "--n-train", "8",
            "--output-dir", str(out)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, str(BENCHMARKS / "testbed.py"), *argv], capture_output=True, text=True,
                          timeout=600, cwd=ROOT, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    payload = json.loads((out / "results.json").read_text())
    assert {r["arm"] for r in payload["runs"]} == {"grpo", "ral_group"}
    for run in payload["runs"]:
        assert 0.0 <= run["accuracy"] <= 1.0 and 0.0 <= run["attn_shift"] <= math.log(2)
    group = next(r for r in payload["runs"] if r["arm"] == "ral_group")
    assert group["attn_divergence_max"] is not None  # attention/group_jsd was logged
    assert set(payload["summary"]) == {"sft", "grpo", "ral_group"}
    assert (out / "results.md").read_text().startswith("`python benchmarks/testbed.py")
    assert (out / "results.png").stat().st_size > 10_000
    again = tmp_path / "again"  # --from-json re-renders the same tables without training
    argv = [str(BENCHMARKS / "testbed.py"), "--from-json", str(out / "results.json"), "--output-dir", str(again)]
    done = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert (again / "results.md").read_text() == (out / "results.md").read_text()


def test_dose_pivot_reads_the_paired_differences(report):
    tb, _ = report
    rows = {
        "ni2_c5": {"d_base_accuracy": {"mean": 0.01, "half_width": 0.02}, "d_base_attn_shift": {"mean": 0.002}},
        "ni2_c0": {"accuracy": {"mean": 0.3}},
    }
    pivot = tb.dose_pivot(rows, {"ni1": {}, "ni2": {}}, (0.0, 1.0, 5.0))
    assert pivot.splitlines()[0] == "| reuse | attn_coef 1: Δacc / Δshift | attn_coef 5: Δacc / Δshift |"
    assert pivot.splitlines()[2:] == ["| ni1 | - | - |", "| ni2 | - | +0.010 / +0.0020 |"]
