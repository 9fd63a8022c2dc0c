"""Reporting of `benchmarks/testbed.py`: per-arm summaries over SFT checkpoints x RL seeds, the tables and plots.

Intervals: RL runs from one SFT checkpoint are not independent of each other (they share it), so the interval of a
difference is taken over the per-checkpoint means (df = checkpoints - 1), the conservative choice; the interval over
all runs (df = runs - 1) is kept in the JSON as `*_runs`."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from evidence_data import mean_ci  # noqa: E402

METRICS = ("accuracy", "answer_format", "region_share", "lift", "attn_shift", "attn_divergence_max")


def clustered(pairs) -> dict:
    """mean_ci over the per-cluster means of (cluster, value) pairs; with a single cluster (one SFT checkpoint, the
    dose-response) over its values, the only spread there is (marked `"over": "runs"`)."""
    groups: dict = {}
    for cluster, value in pairs:
        if value is not None and math.isfinite(value):
            groups.setdefault(cluster, []).append(value)
    if len(groups) == 1:
        return {**mean_ci(next(iter(groups.values()))), "over": "runs"}
    return mean_ci([sum(v) / len(v) for v in groups.values()])


def summarise(runs: list, baselines: dict, arms) -> dict:
    """{row: {metric: mean_ci}}: the SFT checkpoints (over SFT seeds), then each arm with `d_sft` (accuracy minus its
    own checkpoint's), `d_grpo_*` (paired with the grpo run of the same checkpoint and RL seed; dose tables: with the
    attn_coef=0 run of the same reuse setting) and `collapse_rate`."""
    sft = {int(k.split("_")[1]): v for k, v in baselines.items() if k.startswith("sft_")}
    rows = {"sft": {k: mean_ci([b[k] for b in sft.values()]) for k in ("accuracy", "answer_format", "region_share", "lift")}}
    if "teacher" in baselines:
        rows["teacher"] = {k: mean_ci([baselines["teacher"][k]]) for k in ("accuracy", "answer_format", "region_share", "lift")}
    by_key = {(r["arm"], r["sft_seed"], r["seed"]): r for r in runs}
    for arm in arms:
        mine = [r for r in runs if r["arm"] == arm]
        if not mine:
            continue
        row = {k: mean_ci([r.get(k) for r in mine]) for k in METRICS}
        row["d_sft"] = clustered((r["sft_seed"], r["accuracy"] - sft[r["sft_seed"]]["accuracy"]) for r in mine)
        row["d_sft_runs"] = mean_ci([r["accuracy"] - sft[r["sft_seed"]]["accuracy"] for r in mine])
        base = _baseline_arm(arm)
        if base != arm and any(k[0] == base for k in by_key):
            for k in ("accuracy", "lift", "attn_shift"):
                pairs = [
                    (r["sft_seed"], r[k] - by_key[(base, r["sft_seed"], r["seed"])][k])
                    for r in mine
                    if (base, r["sft_seed"], r["seed"]) in by_key
                ]
                row[f"d_base_{k}"] = clustered(pairs)
                row[f"d_base_{k}_runs"] = mean_ci([v for _, v in pairs])
            row["baseline"] = base
        row["collapse_rate"] = {"mean": sum(bool(r["collapsed"]) for r in mine) / len(mine), "n": len(mine)}
        rows[arm] = row
    return rows


def _baseline_arm(arm: str) -> str:
    """grpo for the main arms; the same reuse setting at attn_coef 0 for a dose arm (`ni2_c5` -> `ni2_c0`)."""
    return arm.rsplit("_c", 1)[0] + "_c0" if "_c" in arm else "grpo"


def _cell(stat: dict | None, digits: int = 3, signed: bool = False) -> str:
    if stat is None or not math.isfinite(stat.get("mean", math.nan)):
        return "-"
    mean = f"{stat['mean']:+.{digits}f}" if signed else f"{stat['mean']:.{digits}f}"
    half = stat.get("half_width", math.nan)
    return mean if not math.isfinite(half) else f"{mean} ± {half:.{digits}f}"


def main_table(rows: dict) -> str:
    head = ["arm", "runs", "accuracy", "Δacc vs its SFT", "Δacc vs grpo", "format", "region share", "lift",
            "attn shift vs SFT (JSD)", "collapsed"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in rows.items():
        collapse = row.get("collapse_rate")
        cells = [
            name,
            str(row["accuracy"]["n"]),
            _cell(row["accuracy"]),
            _cell(row.get("d_sft"), signed=True),
            _cell(row.get("d_base_accuracy"), signed=True),
            _cell(row["answer_format"], 2),
            _cell(row["region_share"]),
            _cell(row["lift"], 2),
            _cell(row.get("attn_shift"), 4),
            f"{collapse['mean']:.0%}" if collapse else "-",
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def dose_table(rows: dict, reuse: dict, coefs) -> str:
    head = ["reuse", "attn_coef", "runs", "accuracy", "Δacc vs coef 0", "lift", "Δlift vs coef 0",
            "attn shift vs SFT", "Δshift vs coef 0", "max train JSD(p_θ‖p_old)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in reuse:
        for c in coefs:
            row = rows.get(f"{r}_c{c:g}")
            if row is None:
                continue
            cells = [
                r, f"{c:g}", str(row["accuracy"]["n"]), _cell(row["accuracy"]),
                _cell(row.get("d_base_accuracy"), signed=True), _cell(row["lift"], 2),
                _cell(row.get("d_base_lift"), 2, signed=True), _cell(row["attn_shift"], 4),
                _cell(row.get("d_base_attn_shift"), 4, signed=True), _cell(row["attn_divergence_max"], 5),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def dose_pivot(rows: dict, reuse: dict, coefs) -> str:
    """The dose-response in one small table: per reuse setting, Δ accuracy and Δ attention shift vs its attn_coef=0
    run for each attn_coef > 0 (means; the intervals are in the long table)."""
    shown = [c for c in coefs if c]
    lines = ["| reuse | " + " | ".join(f"attn_coef {c:g}: Δacc / Δshift" for c in shown) + " |", "|" + "---|" * (1 + len(shown))]
    for r in reuse:
        cells = []
        for c in shown:
            row = rows.get(f"{r}_c{c:g}")
            acc, shift = (row or {}).get("d_base_accuracy"), (row or {}).get("d_base_attn_shift")
            cells.append("-" if not row else f"{_cell(acc and {'mean': acc['mean']}, signed=True)} / "
                         f"{_cell(shift and {'mean': shift['mean']}, 4, signed=True)}")
        lines.append(f"| {r} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _bars(ax, names, stats, title):
    means = [s["mean"] for s in stats]
    errs = [s["half_width"] if math.isfinite(s.get("half_width", math.nan)) else 0.0 for s in stats]
    ax.bar(range(len(names)), means, yerr=errs, capsize=3, color=["lightgray"] + ["tab:blue"] * (len(names) - 1))
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.grid(axis="y", alpha=0.3)


def plot_main(rows: dict, baselines: dict, path: Path) -> None:
    """Accuracy, Δ vs SFT, lift and attention shift per arm (SFT first, gray), 95% interval bars."""
    arms = [n for n in rows if n not in ("sft", "teacher")]
    fig, axes = plt.subplots(1, 4, figsize=(16, 4.2))
    _bars(axes[0], ["sft", *arms], [rows["sft"]["accuracy"], *(rows[a]["accuracy"] for a in arms)], "accuracy")
    _bars(axes[1], ["sft", *arms], [mean_ci([0.0, 0.0]), *(rows[a]["d_sft"] for a in arms)], "Δ accuracy vs its SFT")
    _bars(axes[2], ["sft", *arms], [rows["sft"]["lift"], *(rows[a]["lift"] for a in arms)], "lift")
    _bars(axes[3], ["sft", *arms], [mean_ci([0.0, 0.0]), *(rows[a]["attn_shift"] for a in arms)], "attn shift vs SFT")
    fig.suptitle("held-out, mean and 95% interval (Δ: over SFT checkpoints' means)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def plot_dose(rows: dict, reuse: dict, coefs, path: Path) -> None:
    """Against attn_coef, one line per reuse setting: the paired Δ accuracy, Δ lift and Δ attention shift vs the same
    reuse setting at attn_coef 0 (means over the seeds; the intervals are in the table), and the largest train-time
    JSD(p_theta || p_old), how far the policy drifted from the rollouts' (the term's lever)."""
    fig, axes = plt.subplots(1, 4, figsize=(18, 4.2))
    panels = (("d_base_accuracy", "Δ accuracy vs attn_coef 0"), ("d_base_lift", "Δ lift vs attn_coef 0"),
              ("d_base_attn_shift", "Δ attn shift vs attn_coef 0"), ("attn_divergence_max", "max train JSD(p_θ‖p_old)"))
    for ax, (key, title) in zip(axes, panels):
        for r in reuse:
            points = [(i, rows[f"{r}_c{c:g}"][key]["mean"]) for i, c in enumerate(coefs)
                      if key in rows.get(f"{r}_c{c:g}", {}) and math.isfinite(rows[f"{r}_c{c:g}"][key]["mean"])]
            if key.startswith("d_base") and f"{r}_c0" in rows:
                points = [(0, 0.0), *points]
            if points:
                ax.plot(*zip(*points), marker="o", label=r)
        ax.axhline(0.0, color="k", lw=0.8)
        ax.set_xticks(range(len(coefs)), [f"{c:g}" for c in coefs])
        ax.set_xlabel("attn_coef")
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
