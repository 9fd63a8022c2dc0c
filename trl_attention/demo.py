"""End-to-end demo: RAL (AttentionGRPOTrainer) on the tiny Qwen2.5-VL and the synthetic grounding dataset, on CPU.

`run_demo(DemoConfig())` trains for a few minutes on 2 CPU cores and writes into `output_dir`:

- `metrics.json` / `metrics.csv`: one row per training step (TRL's log history; `reward` and `rewards/*` are
  logged by TRL only on the steps that generate rollouts, every other row leaves them empty);
- `metrics.png`: reward and attention metrics against the step (`plot_metrics`);
- `attention_heatmap.png`: the trained model's final-layer attention over the image of a held-out example
  (`attention_heatmap`).

A random tiny model essentially never says the answer word, so an exact-match reward alone is 0 for every
completion and GRPO's group-normalised advantages are all 0 (no learning signal, and no RAL term either, since
it is advantage-weighted). `char_overlap` is a dense shaped reward that varies within a group.
"""

from __future__ import annotations

import csv
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .rewards import char_overlap, exact_answer

__all__ = ["REWARD_WEIGHTS", "DemoConfig", "run_demo"]


@dataclass
class DemoConfig:
    """Settings of `run_demo` (and the flags of `trl-attention demo`)."""

    output_dir: str = field(default="outputs/demo", metadata={"help": "Where metrics and plots are written."})
    max_steps: int = field(
        default=600, metadata={"help": "Optimiser steps (600 take about 2-3 minutes on 2 CPU cores)."}
    )
    num_samples: int = field(
        default=256, metadata={"help": "Synthetic training prompts (one more is generated and held out)."}
    )
    per_device_train_batch_size: int = field(
        default=16, metadata={"help": "Completions per step; a multiple of num_generations."}
    )
    num_generations: int = field(default=8, metadata={"help": "Completions sampled per prompt (GRPO group size)."})
    max_completion_length: int = field(default=8, metadata={"help": "Maximum completion length in tokens."})
    attn_coef: float = field(
        default=1.0, metadata={"help": "Weight of the RAL attention-policy (JSD) loss; 0 is plain GRPO."}
    )
    num_iterations: int = field(
        default=2,
        metadata={"help": "Optimiser steps per rollout batch; RAL's term only acts on reused rollouts (>1)."},
    )
    learning_rate: float = field(default=3e-3, metadata={"help": "Peak learning rate (linear decay)."})
    seed: int = field(default=0, metadata={"help": "Seed of the model weights, the dataset and training."})

    def __post_init__(self):
        if self.num_generations < 2 or self.per_device_train_batch_size % self.num_generations:
            raise ValueError(
                f"per_device_train_batch_size={self.per_device_train_batch_size} must be a multiple of "
                f"num_generations={self.num_generations} (>= 2)"
            )
        if self.max_steps < 1 or self.num_samples < 1 or self.num_iterations < 1 or self.max_completion_length < 1:
            raise ValueError("max_steps, num_samples, num_iterations and max_completion_length must be >= 1")


# ------------------------------------------------------------------------------------------------ rewards

REWARD_WEIGHTS = (1.0, 0.5)  # exact_answer, char_overlap


# ------------------------------------------------------------------------------------------------ the run


def _quiet_progress():
    """The Trainer's tqdm bar, showing the latest reward / attention metrics as its postfix instead of printing
    every step's log dict (one line per step at logging_steps=1). Built on first use: transformers is imported
    only when the demo runs, so `trl-attention demo --help` stays fast."""
    from transformers import ProgressCallback

    class QuietProgress(ProgressCallback):
        shown = {"reward": "reward", "attention/jsd": "jsd", "attention/image_mass": "image_mass"}

        def on_log(self, args, state, control, logs=None, **kwargs):
            if self.training_bar is None or not logs:
                return
            self._postfix = getattr(self, "_postfix", {})
            self._postfix.update({short: f"{logs[key]:.3g}" for key, short in self.shown.items() if key in logs})
            self.training_bar.set_postfix(self._postfix, refresh=False)

    return ProgressCallback, QuietProgress()


def _write_csv(rows: list[dict], path: Path) -> None:
    columns = ["step"] + [k for k in dict.fromkeys(k for row in rows for k in row) if k != "step"]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)


def _last(rows: list[dict], key: str):
    return next((row[key] for row in reversed(rows) if key in row), None)


def run_demo(config: DemoConfig | None = None) -> dict:
    """Train the tiny VLM with AttentionGRPOTrainer and write metrics + plots; returns paths and final metrics."""
    from .plotting import attention_heatmap, plot_metrics
    from .ral import AttentionGRPOConfig, AttentionGRPOTrainer
    from .tiny import build_tiny_vlm, make_grounding_dataset

    config = config if config is not None else DemoConfig()
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)

    model, processor = build_tiny_vlm(seed=config.seed)
    data = make_grounding_dataset(config.num_samples + 1, seed=config.seed)
    train_dataset, held_out = data.select(range(config.num_samples)), data[config.num_samples]

    args = AttentionGRPOConfig(
        output_dir=str(out),
        per_device_train_batch_size=config.per_device_train_batch_size,
        num_generations=config.num_generations,
        max_completion_length=config.max_completion_length,
        max_steps=config.max_steps,
        learning_rate=config.learning_rate,
        num_iterations=config.num_iterations,
        attn_coef=config.attn_coef,
        reward_weights=list(REWARD_WEIGHTS),
        seed=config.seed,
        logging_steps=1,
        save_strategy="no",  # no checkpoints: the demo's outputs are the metrics and plots
        report_to=[],
        use_cpu=True,
        gradient_checkpointing=False,  # a tiny model: activations are small, recomputation only costs time
    )
    trainer = AttentionGRPOTrainer(
        model=model,
        reward_funcs=[exact_answer, char_overlap],
        args=args,
        train_dataset=train_dataset,
        processing_class=processor,
    )
    progress, quiet = _quiet_progress()
    if any(isinstance(cb, progress) for cb in trainer.callback_handler.callbacks):
        trainer.remove_callback(progress)
        trainer.add_callback(quiet)

    start = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - start

    # Per-step rows; the final summary row (train_runtime, train_loss, ...) is not a step's metrics.
    history = [dict(row) for row in trainer.state.log_history if "train_runtime" not in row]
    summary = next((row for row in trainer.state.log_history if "train_runtime" in row), {})
    paths = {
        "metrics_json": out / "metrics.json",
        "metrics_csv": out / "metrics.csv",
        "metrics_png": out / "metrics.png",
        "heatmap_png": out / "attention_heatmap.png",
    }
    with open(paths["metrics_json"], "w") as f:
        json.dump(history, f, indent=1)
    _write_csv(history, paths["metrics_csv"])
    plot_metrics(history, paths["metrics_png"])
    grid = attention_heatmap(trainer.model, processor, held_out, paths["heatmap_png"], layer=args.attn_layer)

    keys = ["reward"] + sorted({k for row in history for k in row if k.startswith(("rewards/", "attention/"))})
    final = {key: _last(history, key) for key in keys + ["loss"] if _last(history, key) is not None}
    jsd = [row["attention/jsd"] for row in history if "attention/jsd" in row]
    return {
        **{name: str(path) for name, path in paths.items()},
        "output_dir": str(out),
        "config": asdict(config),
        "steps": len(history),
        "train_seconds": train_seconds,
        "train_runtime": summary.get("train_runtime"),
        "final_metrics": final,
        "max_attention_jsd": max(jsd) if jsd else math.nan,
        "heatmap_grid": grid.tolist(),
        "heatmap_image_mass": float(grid.sum()),
    }
