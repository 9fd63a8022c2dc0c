"""Reporting of `benchmarks/evidence.py`: per-arm summaries (mean and t-interval over seeds, paired differences to
GRPO), the markdown table, the JSON and the plot."""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from evidence_data import mean_ci  # noqa: E402

SHOWN = ("accuracy", "region_share", "lift", "entropy")  # table and plot; image_mass is in the JSON
PAIRED = ("accuracy", "region_share")  # differences to the grpo arm of the same seed


def summarise(runs: dict, baselines: dict, unpaired=()) -> dict:
    """`runs`: {arm: [per-seed result dict]}; `baselines`: {name: result dict} (one checkpoint each).
    Returns {row name: {metric: mean_ci dict, ...}} with `d_<metric>` paired differences to grpo, except for the
    `unpaired` arms (another format and SFT checkpoint: ral_zero)."""
    rows = {name: {k: mean_ci([r[k]]) for k in (*SHOWN, "image_mass")} for name, r in baselines.items()}
    grpo = {r["seed"]: r for r in runs.get("grpo", [])}
    for arm, results in runs.items():
        row = {k: mean_ci([r[k] for r in results]) for k in (*SHOWN, "image_mass")}
        if arm != "grpo" and arm not in unpaired and grpo:
            for k in PAIRED:
                row[f"d_{k}"] = mean_ci([r[k] - grpo[r["seed"]][k] for r in results if r["seed"] in grpo])
        rows[arm] = row
    return rows


def _cell(stat: dict | None, digits: int = 3, signed: bool = False) -> str:
    if stat is None or not math.isfinite(stat["mean"]):
        return "-"
    mean = f"{stat['mean']:+.{digits}f}" if signed else f"{stat['mean']:.{digits}f}"
    return mean if not math.isfinite(stat["half_width"]) else f"{mean} ± {stat['half_width']:.{digits}f}"


def markdown_table(rows: dict) -> str:
    """One row per arm: mean ± 95% t-interval half-width over seeds (no interval for a single checkpoint)."""
    head = ["arm", "n", "accuracy", "region share", "lift", "entropy (nats)", "Δacc vs grpo", "Δshare vs grpo"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, row in rows.items():
        cells = [name, str(row["accuracy"]["n"]), *(_cell(row[k], 2 if k == "lift" else 3) for k in SHOWN)]
        cells += [_cell(row.get(f"d_{k}"), 3, signed=True) for k in PAIRED]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def write_json(path: Path, payload: dict) -> None:
    def clean(value):
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, dict):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    path.write_text(json.dumps(clean(payload), indent=1))


def write_results(out: Path, command: str, header: str, table: str, payload: dict, draw) -> None:
    """results.md (command, header, table), results.json (`payload`) and results.png (`draw(path)`) under `out`;
    prints the header, table and command."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.md").write_text(f"`{command}`\n\n{header}\n\n{table}\n")
    write_json(out / "results.json", payload)
    draw(out / "results.png")
    print(f"\n{header}\n\n{table}\n\ncommand: {command}\nwritten: {out}/results.md, results.json, results.png")


def plot(rows: dict, path: Path, chance_share: float) -> None:
    """One panel per metric: a bar per arm (mean) with its 95% interval; baselines hatched."""
    names = list(rows)
    fig, axes = plt.subplots(1, len(SHOWN), figsize=(4 * len(SHOWN), 4.2))
    for ax, key in zip(axes, SHOWN):
        means = [rows[n][key]["mean"] for n in names]
        errs = [rows[n][key]["half_width"] if math.isfinite(rows[n][key]["half_width"]) else 0.0 for n in names]
        bars = ax.bar(range(len(names)), means, yerr=errs, capsize=3, color="tab:blue")
        for bar, name in zip(bars, names):
            if rows[name][key]["n"] == 1:
                bar.set_color("lightgray")
                bar.set_hatch("//")
        if key == "region_share":
            ax.axhline(chance_share, ls="--", color="k", lw=1, label="box's token share")
            ax.legend(fontsize=7)
        if key == "lift":
            ax.axhline(1.0, ls="--", color="k", lw=1)
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
        ax.set_title(key.replace("_", " "), fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("held-out, mean and 95% t-interval over seeds (gray: single checkpoint)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
