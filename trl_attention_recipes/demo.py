"""End-to-end demo on CPU: the papers' pipeline in miniature on the tiny Qwen2.5-VL and synthetic grounding data.

1. SFT warm start with TRL's SFTTrainer (answer-only format `<answer>red</answer>`), saved under `sft/`;
2. from that checkpoint, GRPO (`attn_coef=0`) and RAL (`attn_coef`, rollouts reused so the term acts) side by
   side, same steps, data, seed and rewards (0.9 accuracy + 0.1 format, as in RAL);
3. every model measured on the same held-out rows (`trl_attention_recipes.evaluation`): greedy accuracy next to the
   image-blind baseline (the commonest answer per question kind), and where the answer tokens look: region share
   of the target box, and lift = region share / the box's share of the image's tokens (1 = uniform);
4. the RAL model saved under `model/` (loadable with `AutoModelForImageTextToText` / `AutoProcessor`), per-arm
   metric plots and before/after heatmaps, `summary.json`.

What it shows is measured, not promised: docs/demo.md quotes the default run, and a test checks that those
quotes agree in kind with what this code prints.
"""

from __future__ import annotations

import csv
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from trl_attention.rewards import char_overlap, exact_answer  # noqa: F401  (0.1.0 public names of this module)

__all__ = ["ARMS", "REWARD_WEIGHTS", "DemoConfig", "default_threads", "run_demo"]

ARMS = ("grpo", "ral")
REWARD_WEIGHTS = (0.9, 0.1)  # accuracy_reward, answer_format_reward (RAL's 0.9 accuracy + 0.1 format)


def default_threads() -> int:
    """Torch threads for the demo: the idle cores, 1 to 2. More threads than free cores slowed these small
    kernels about 10x on a loaded machine (OpenMP threads spin waiting for each other)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return max(1, min(2, int(cores - load + 0.5)))


@dataclass
class DemoConfig:
    """Settings of `run_demo` (and the flags of `trl-attention demo`)."""

    output_dir: str = field(default="outputs/demo", metadata={"help": "Where models, metrics and plots are written."})
    image_size: int = field(
        default=168,
        metadata={"help": "Image side in px, a multiple of 56 (168: 36 visual tokens, a 3x3 grid of slots)."},
    )
    num_samples: int = field(default=4096, metadata={"help": "Synthetic training rows (SFT and RL prompts)."})
    eval_samples: int = field(default=128, metadata={"help": "Held-out rows every model is measured on."})
    sft_steps: int = field(
        default=150,
        metadata={"help": "SFT optimiser steps (TRL SFTTrainer); partial on purpose, so RL has headroom (docs/demo.md)."},
    )
    sft_batch_size: int = field(default=16, metadata={"help": "SFT rows per optimiser step."})
    sft_learning_rate: float = field(default=3e-3, metadata={"help": "SFT learning rate (constant after warm-up)."})
    sft_warmup_steps: int = field(default=100, metadata={"help": "SFT linear warm-up steps."})
    sft_adam_beta2: float = field(
        default=0.95,
        metadata={
            "help": "SFT Adam beta2. TRL's 0.999 remembers the large early gradients of the answer format for ~1000 "
            "steps and damps the later, small answer-word gradient (docs/demo.md)."
        },
    )
    max_steps: int = field(default=100, metadata={"help": "RL optimiser steps per arm (GRPO and RAL)."})
    per_device_train_batch_size: int = field(
        default=32, metadata={"help": "RL completions per step; a multiple of num_generations."}
    )
    num_generations: int = field(default=8, metadata={"help": "Completions sampled per prompt (GRPO group size)."})
    max_completion_length: int = field(default=12, metadata={"help": "Maximum completion length in tokens."})
    attn_coef: float = field(default=1.0, metadata={"help": "Weight of RAL's attention (JSD) term in the RAL arm."})
    num_iterations: int = field(
        default=2,
        metadata={"help": "Optimiser steps per rollout batch (both arms); RAL's term only acts on reused rollouts."},
    )
    learning_rate: float = field(default=3e-4, metadata={"help": "RL peak learning rate (linear decay)."})
    seed: int = field(default=0, metadata={"help": "Seed of the model weights, the data and training."})
    threads: int = field(
        default=0, metadata={"help": "Torch threads; 0: the idle cores, 1 to 2 (oversubscribing is ~10x slower)."}
    )

    def __post_init__(self):
        if self.num_generations < 2 or self.per_device_train_batch_size % self.num_generations:
            raise ValueError(
                f"per_device_train_batch_size={self.per_device_train_batch_size} must be a multiple of "
                f"num_generations={self.num_generations} (>= 2)"
            )
        sizes = (
            "max_steps",
            "num_samples",
            "eval_samples",
            "num_iterations",
            "max_completion_length",
            "sft_batch_size",
        )
        if (
            any(getattr(self, name) < 1 for name in sizes)
            or min(self.sft_steps, self.sft_warmup_steps, self.threads) < 0
        ):
            raise ValueError(f"{', '.join(sizes)} must be >= 1, sft_steps, sft_warmup_steps and threads >= 0")
        if not 0.0 <= self.sft_adam_beta2 < 1.0:
            raise ValueError(f"sft_adam_beta2 must be in [0, 1), got {self.sft_adam_beta2}")
        if self.image_size % 56 or self.image_size < 112:
            raise ValueError(
                f"image_size must be a multiple of 56 (2x2-token slots) and >= 112, got {self.image_size}"
            )


def _task(config: DemoConfig) -> dict:
    """The demo's task (`make_grounding_dataset`), the testbed of benchmarks/testbed.py: 1-2 objects, each on its own
    2x2-token slot of the grid, colour questions only, an empty system turn. The tiny, randomly initialised model
    learns to name the colour it sees within the demo's budget; on free placement, mixed questions or 1-token
    objects it did not in thousands of steps (docs/demo.md)."""
    return dict(
        image_size=config.image_size,
        layout="grid",
        object_cells=2,
        questions="colour",
        min_shapes=1,
        max_shapes=2,
        system_prompt="",
    )


def _write_csv(rows: list[dict], path: Path) -> None:
    columns = ["arm", "step"] + [k for k in dict.fromkeys(k for row in rows for k in row) if k not in ("arm", "step")]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)


def _rl(config: DemoConfig, arm: str, checkpoint: str, train, out: Path):
    """One RL arm from the SFT checkpoint; returns (trained model, TRL log history without the summary row)."""
    import warnings

    from transformers import AutoModelForImageTextToText, AutoProcessor, PrinterCallback

    from trl_attention.ral import AttentionGRPOConfig, AttentionGRPOTrainer
    from trl_attention.rewards import accuracy_reward, answer_format_reward

    model = AutoModelForImageTextToText.from_pretrained(checkpoint)
    args = AttentionGRPOConfig(
        output_dir=str(out / arm),
        per_device_train_batch_size=config.per_device_train_batch_size,
        num_generations=config.num_generations,
        max_completion_length=config.max_completion_length,
        max_steps=config.max_steps,
        learning_rate=config.learning_rate,
        num_iterations=config.num_iterations,
        attn_coef=config.attn_coef if arm == "ral" else 0.0,
        reward_weights=list(REWARD_WEIGHTS),
        freeze_vision_tower=True,  # the paper's setup: RL trains the language model
        seed=config.seed,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        gradient_checkpointing=False,
        bf16=False,  # TRL's default bf16=True autocasts on CPU too: slower here, and not what the SFT stage ran
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # grpo: the inert-attention-term warning is expected
        trainer = AttentionGRPOTrainer(
            model=model,
            reward_funcs=[accuracy_reward, answer_format_reward],
            args=args,
            train_dataset=train,
            processing_class=AutoProcessor.from_pretrained(checkpoint),
        )
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    history = [dict(row) for row in trainer.state.log_history if "train_runtime" not in row]
    return trainer.model.eval(), history


def _measure(model, processor, held, config) -> dict:
    from .evaluation import evaluate

    result = evaluate(model, processor, held, config.max_completion_length)
    return {k: v for k, v in result.items() if k != "example"} | {"example": result["example"]}


def run_demo(config: DemoConfig | None = None, log=print) -> dict:
    """SFT, then GRPO and RAL from it, each measured on held-out rows; writes everything under `output_dir` and
    returns the summary (also `summary.json`)."""
    import torch

    from .evaluation import box_token_share, majority_accuracy
    from trl_attention.plotting import attention_heatmap, plot_metrics
    from trl_attention.tiny import build_tiny_vlm, make_grounding_dataset
    from trl_attention.tiny.sft import sft_tiny_vlm

    config = config if config is not None else DemoConfig()
    torch.set_num_threads(config.threads or default_threads())
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    def note(msg):
        log(f"[{time.perf_counter() - start:6.1f}s] {msg}")

    data = make_grounding_dataset(config.num_samples + config.eval_samples, seed=config.seed, **_task(config))
    train = data.select(range(config.num_samples))
    held = data.select(range(config.num_samples, len(data)))
    model, processor = build_tiny_vlm(seed=config.seed)
    sft_dir = str(out / "sft")
    sft_history = sft_tiny_vlm(
        model,
        processor,
        train,
        sft_dir,
        config.sft_steps,
        config.sft_learning_rate,
        config.sft_batch_size,
        seed=config.seed,
        warmup_steps=config.sft_warmup_steps,
        adam_beta2=config.sft_adam_beta2,
        bf16=False,  # TRL's default bf16=True autocasts on CPU too: 600 steps took 98 s instead of 56 s
    )
    results = {"sft": _measure(model.eval(), processor, held, config)}
    note(f"SFT ({config.sft_steps} steps): {_brief(results['sft'])}")
    example = held[0]
    heatmaps = {"sft": str(out / "heatmap_sft.png")}
    attention_heatmap(model, processor, example, heatmaps["sft"])

    histories = {}
    for arm in ARMS:
        trained, histories[arm] = _rl(config, arm, sft_dir, train, out)
        results[arm] = _measure(trained, processor, held, config)
        heatmaps[arm] = str(out / f"heatmap_{arm}.png")
        attention_heatmap(trained, processor, example, heatmaps[arm])
        plot_metrics(histories[arm], out / f"metrics_{arm}.png")
        note(f"{arm} ({config.max_steps} steps): {_brief(results[arm])}")
        if arm == "ral":
            trained.save_pretrained(out / "model")
            processor.save_pretrained(out / "model")

    rows = [{"arm": "sft", **row} for row in sft_history]
    rows += [{"arm": arm, **row} for arm in ARMS for row in histories[arm]]
    with open(out / "metrics.json", "w") as f:
        json.dump(rows, f, indent=1)
    _write_csv(rows, out / "metrics.csv")
    summary = {
        "config": asdict(config),
        "seconds": time.perf_counter() - start,
        "majority_accuracy": majority_accuracy(train, held),
        "box_token_share": box_token_share(held, held[0]["image"].size[0]),
        "results": results,
        "reward_first_last": {arm: _first_last([row.get("reward") for row in histories[arm]]) for arm in ARMS},
        "max_attention_jsd": max((row.get("attention/jsd", 0.0) for row in histories["ral"]), default=0.0),
        "paths": {
            "model": str(out / "model"),
            "sft": sft_dir,
            "heatmaps": heatmaps,
            "metrics": str(out / "metrics.csv"),
        },
    }
    with open(out / "summary.json", "w") as f:
        json.dump(summary, f, indent=1)
    return summary


def _first_last(values: list) -> list:
    logged = [v for v in values if v is not None]
    return [logged[0], logged[-1]] if logged else []


def _brief(r: dict) -> str:
    return f"accuracy {r['accuracy']:.3f}, region share {r['region_share']:.3f}, lift {r['lift']:.2f}"
