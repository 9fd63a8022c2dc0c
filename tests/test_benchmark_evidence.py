"""benchmarks/evidence.py runs end to end in a micro configuration and writes its table, JSON and plot with numbers
in range; its t-interval equals a hand computation."""

import json
import math
import os
import subprocess
import sys

import pytest

from tests.testing_utils import ROOT

BENCHMARKS = ROOT / "benchmarks"


def _evidence_data():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import evidence_data
    finally:
        sys.path.remove(str(BENCHMARKS))
    return evidence_data


def test_t_interval_matches_a_hand_computation():
    data = _evidence_data()
    # t_{0.975} quantiles from tables: df=1 12.7062, df=4 2.7764, df=30 2.0423
    assert abs(data.t_quantile(0.975, 1) - 12.7062) < 1e-3
    assert abs(data.t_quantile(0.975, 4) - 2.7764) < 1e-3
    assert abs(data.t_quantile(0.975, 30) - 2.0423) < 1e-3
    values = [0.2, 0.3, 0.25, 0.4, 0.35]  # mean 0.3, sample std sqrt(0.025 / 4)
    ci = data.mean_ci(values)
    std = math.sqrt(sum((v - 0.3) ** 2 for v in values) / 4)
    assert abs(ci["mean"] - 0.3) < 1e-12 and abs(ci["std"] - std) < 1e-12
    assert abs(ci["half_width"] - 2.776445105 * std / math.sqrt(5)) < 1e-8
    assert math.isnan(data.mean_ci([0.5])["half_width"]) and data.mean_ci([])["n"] == 0


def test_distractor_rows_have_one_answer_and_sayo_boxes():
    data = _evidence_data()
    rows = data.make_distractor_dataset(16, seed=3, image_size=224, fmt="answer")
    for row in rows:
        assert row["boxes"] == [[row["box"]]] and row["image"].size == (224, 224)
        x0, y0, x1, y1 = row["box"]
        assert row["image"].getpixel(((x0 + x1) // 2, (y0 + 2 * y1) // 3)) != (245, 245, 245)  # the target is drawn
        assert row["prompt"][0]["content"][1]["text"].endswith(data.INSTRUCTIONS["answer"])


def test_free_layout_rows_are_unchanged_by_the_grid_option():
    data = _evidence_data()
    rows = data.make_distractor_dataset(12, seed=3, fmt="reasoning")  # pinned before `layout` existed
    assert rows["box"][:2] == [[155, 3, 199, 47], [34, 93, 102, 161]]
    assert rows["answer"][:3] == ["circle", "triangle", "circle"]
    row = rows[0]
    assert (
        data.completion_text(row, "reasoning") == f"<think>{row['target_color']} circle</think><answer>circle</answer>"
    )


def test_grid_rows_ask_colour_about_one_object_on_its_own_2x2_tokens():
    from trl_attention.tiny import COLORS, box_to_token_mask

    data = _evidence_data()
    rows = data.make_distractor_dataset(24, seed=2, image_size=224, shapes=(2, 3), fmt="reasoning", layout="grid")
    for row in rows:
        assert row["answer"] == row["target_color"] in COLORS and row["boxes"] == [[row["box"]]]
        mask = box_to_token_mask(row["box"], 224, (1, 16, 16)).reshape(8, 8)
        ys, xs = mask.nonzero(as_tuple=True)
        assert mask.sum() == 4 and ys.min() % 2 == 0 and xs.min() % 2 == 0 and ys.max() - ys.min() == 1
        system, user = row["prompt"]
        assert system["content"][0]["text"] == "" and user["content"][1]["text"].endswith(
            data.INSTRUCTIONS["reasoning"]
        )
        thought = f"<think>{row['target_shape']} {row['target_color']}</think><answer>{row['answer']}</answer>"
        assert data.completion_text(row, "reasoning", "grid") == thought
    with pytest.raises(ValueError, match="at most 3 shapes"):  # 4 shapes of distinct types cannot exist
        data.make_distractor_dataset(2, seed=0, shapes=(3, 4), layout="grid")


def test_micro_run_writes_table_json_and_plot(tmp_path):
    cmd = [
        sys.executable,
        str(BENCHMARKS / "evidence.py"),
        "--seeds", "1", "--sft-steps", "5", "--rl-steps", "2", "--arms", "grpo", "ral",
        "--n-train", "16", "--n-eval", "4", "--output-dir", str(tmp_path),
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True, cwd=ROOT, env=env).stdout
    assert "| grpo | 1 |" in out and "| ral | 1 |" in out and "command: python benchmarks/evidence.py" in out
    for name in ("results.md", "results.json", "results.png"):
        assert (tmp_path / name).stat().st_size > 0
    result = json.loads((tmp_path / "results.json").read_text())
    assert set(result["summary"]) == {"sft", "grpo", "ral"}
    for run in [*result["runs"]["grpo"], *result["runs"]["ral"], result["baselines"]["sft"]]:
        assert 0.0 <= run["accuracy"] <= 1.0
        assert 0.0 <= run["region_share"] <= 1.0 and 0.0 <= run["image_mass"] <= 1.0
        assert 0.0 <= run["entropy"] <= math.log(64) + 1e-6 and run["lift"] >= 0.0
    assert 0.0 < result["box_token_share"] < 1.0
