"""The demo's quoted results (README and docs/demo.md) agree in kind with what the default demo prints now.

Runs `trl-attention demo` with its defaults once (about 2-3 minutes on 2 cores), then, for each model row (sft,
grpo, ral), compares the quoted table with the fresh one in kind: accuracy above / at / below the image-blind
baseline, lift above / at / below 1, and RAL's accuracy vs GRPO's. A claimed rise that became a fall fails here.
"""

import re

import pytest

from tests.testing_utils import ROOT
from trl_attention_recipes.demo_command import format_summary
from trl_attention_recipes.demo import DemoConfig, run_demo

ROW = re.compile(r"^\|?\s*(sft|grpo|ral)\s*\|?\s+([0-9.]+)\s*\|?\s+([0-9.]+)\s*\|?\s+([0-9.]+)", re.M)
BASELINE = re.compile(r"[Ii]mage-blind baseline\s+accuracy\s+([0-9.]+)")
ACC_MARGIN, LIFT_MARGIN = 0.05, 0.10  # differences smaller than these are "at" (seed noise at 64 rows)


def _kind(value: float, reference: float, margin: float) -> str:
    return "above" if value > reference + margin else "below" if value < reference - margin else "at"


def kinds(table: dict, baseline: float) -> dict:
    """{model: (accuracy vs baseline, lift vs 1)} and RAL vs GRPO accuracy."""
    out = {
        name: (_kind(acc, baseline, ACC_MARGIN), _kind(lift, 1.0, LIFT_MARGIN))
        for name, (acc, _, lift) in table.items()
    }
    out["ral_vs_grpo"] = _kind(table["ral"][0], table["grpo"][0], ACC_MARGIN)
    return out


def parse(text: str) -> tuple[dict, float]:
    """The quoted block: model rows (accuracy, region share, lift) and the baseline."""
    table = {m.group(1): tuple(float(m.group(i)) for i in (2, 3, 4)) for m in ROW.finditer(text)}
    baseline = BASELINE.search(text)
    assert baseline and set(table) == {"sft", "grpo", "ral"}, "no demo results block found"
    return table, float(baseline.group(1))


def _quoted(path) -> str:
    text = path.read_text()
    match = re.search(r"<!-- demo-results -->(.*?)<!-- /demo-results -->", text, re.S)
    assert match, f"{path.name} has no <!-- demo-results --> block"
    return match.group(1)


def test_kinds_of_a_hand_made_table():
    table = {"sft": (0.40, 0.2, 1.5), "grpo": (0.30, 0.2, 1.0), "ral": (0.20, 0.2, 0.8)}
    assert kinds(table, 0.30) == {
        "sft": ("above", "above"),
        "grpo": ("at", "at"),
        "ral": ("below", "below"),
        "ral_vs_grpo": "below",
    }


@pytest.fixture(scope="module")
def fresh(tmp_path_factory):
    summary = run_demo(DemoConfig(output_dir=str(tmp_path_factory.mktemp("demo"))), log=lambda msg: None)
    return parse(format_summary(summary))


@pytest.mark.parametrize("page", ["README.md", "docs/demo.md"])
def test_quoted_demo_results_agree_in_kind_with_a_fresh_run(fresh, page):
    quoted_table, quoted_baseline = parse(_quoted(ROOT / page))
    table, baseline = fresh
    assert kinds(quoted_table, quoted_baseline) == kinds(table, baseline), (
        f"{page} quotes {quoted_table} (baseline {quoted_baseline}); `trl-attention demo` now gives {table} "
        f"(baseline {baseline}): rerun it and update the page"
    )
