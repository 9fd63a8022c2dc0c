"""Plots for training runs: metric curves from a Trainer log history and attention heatmaps over the image."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: never open a window, also on machines with a display

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.patches import Rectangle
from PIL import Image

from .capture import capture_attention, unwrap_model

__all__ = ["METRICS", "attention_heatmap", "plot_metrics"]

# (log key, subplot title)
METRICS = (
    ("reward", "reward (weighted sum)"),
    ("attention/jsd", "attention/jsd  (p_theta vs p_old)"),
    ("attention/entropy", "attention/entropy (nats)"),
    ("attention/image_mass", "attention/image_mass"),
)


def _series(history: list[dict], key: str) -> tuple[np.ndarray, np.ndarray]:
    """(steps, values) of the rows that logged a finite `key` (TRL logs rewards only on rollout steps)."""
    points = [
        (row.get("step", i + 1), float(row[key]))
        for i, row in enumerate(history)
        if isinstance(row.get(key), (int, float)) and math.isfinite(row[key])
    ]
    if not points:
        return np.zeros(0), np.zeros(0)
    steps, values = zip(*points)
    return np.asarray(steps, dtype=float), np.asarray(values, dtype=float)


def _smooth(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing moving average (shorter windows at the start), same length as `values`."""
    cumsum = np.cumsum(np.insert(values, 0, 0.0))
    idx = np.arange(1, len(values) + 1)
    lo = np.maximum(idx - window, 0)
    return (cumsum[idx] - cumsum[lo]) / (idx - lo)


def plot_metrics(history: list[dict], path) -> str:
    """Write a PNG with one subplot per metric in `METRICS` against the training step; returns the path.

    `history` is `trainer.state.log_history` (or its rows as saved by the demo). Rows without a metric are
    skipped for that metric; a metric never logged gets an empty panel saying so. With many points a moving
    average is drawn over the raw values (with `num_iterations=2`, attention/jsd alternates between 0 on the
    step that generated the rollouts and > 0 on the step that reuses them).
    """
    fig, axes = plt.subplots(2, 2, figsize=(11, 7), sharex=True)
    for ax, (key, title) in zip(axes.flat, METRICS):
        steps, values = _series(history, key)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        if len(values) == 0:
            ax.text(0.5, 0.5, f"{key} not logged", ha="center", va="center", transform=ax.transAxes, color="gray")
            continue
        raw = ax.plot(steps, values, marker="o" if len(values) <= 50 else None, ms=3, lw=1, label="per step")[0]
        if len(values) > 20:
            raw.set_alpha(0.35)
            window = max(2, len(values) // 20)
            ax.plot(steps, _smooth(values, window), lw=2, color=raw.get_color(), label=f"mean of {window}")
            ax.legend(fontsize=8, loc="best")
        if key == "reward":
            for other in sorted(
                {k for row in history for k in row if k.startswith("rewards/") and k.endswith("/mean")}
            ):
                s, v = _series(history, other)
                label = f"{other.split('/')[1]} (unweighted)"
                ax.plot(s, _smooth(v, max(1, len(v) // 20)), lw=1, ls="--", label=label)
            ax.legend(fontsize=8, loc="best")
    for ax in axes[-1]:
        ax.set_xlabel("step")
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


def _prompt_text(prompt) -> str:
    """The text parts of a conversational prompt (for the figure title)."""
    if isinstance(prompt, str):
        return prompt
    parts = []
    for message in prompt:
        content = message["content"]
        if isinstance(content, str):
            parts.append(content)
        else:
            parts += [p["text"] for p in content if p.get("type") == "text" and p.get("text")]
    return " ".join(parts)


@torch.no_grad()
def attention_heatmap(model, processor, example: dict, path, layer: int = -1) -> np.ndarray:
    """Overlay decoder `layer`'s attention over the visual tokens on the image; returns the plotted grid.

    The row is the attention (head-averaged, as `capture_attention` computes it) of the last prompt token, i.e.
    the position that predicts the first answer token, over the image placeholder tokens of the chat-templated
    prompt. Tokens are row-major over the merged grid, so the returned (grid_h/m, grid_w/m) array (m = spatial
    merge size) is the attention mass of each merged patch; its sum is the mass on the image (the rest is on the
    text). `example` needs `prompt` (conversational, with an image part) and `image` (PIL); `box`
    ([x0, y0, x1, y1], end-exclusive pixels) is drawn when present.
    """
    image = example["image"]
    if isinstance(image, (list, tuple)):
        image = image[0]
    image = image.convert("RGB")
    text = processor.apply_chat_template(example["prompt"], add_generation_prompt=True, tokenize=False)
    inputs = processor(text=[text], images=[image], return_tensors="pt")
    device = next(model.parameters()).device
    inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}

    config = unwrap_model(model).config
    merge = getattr(getattr(config, "vision_config", None), "spatial_merge_size", None)
    merge = merge or getattr(processor.image_processor, "merge_size", 2)
    was_training = model.training
    model.eval()
    try:
        with capture_attention(model, num_rows=1, layer=layer) as cap:
            model(**inputs)
    finally:
        model.train(was_training)
    row = cap.probs[0, -1]  # (T,) attention of the last prompt token
    is_image = inputs["input_ids"][0] == config.image_token_id
    t, gh, gw = (int(v) for v in inputs["image_grid_thw"][0])
    rows, cols = gh // merge, gw // merge
    values = row[is_image].float().cpu().numpy()
    if values.size != t * rows * cols:
        raise ValueError(f"found {values.size} image tokens, expected {t}x{rows}x{cols} from image_grid_thw")
    grid = values.reshape(t, rows, cols).sum(0)

    width, height = image.size
    # NEAREST: one flat cell per visual token, no smoothing that would suggest finer resolution than exists
    upsampled = np.asarray(Image.fromarray(grid.astype(np.float32)).resize((width, height), Image.NEAREST))
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.imshow(image)
    overlay = ax.imshow(upsampled, cmap="inferno", alpha=0.55, extent=(-0.5, width - 0.5, height - 0.5, -0.5))
    fig.colorbar(overlay, ax=ax, fraction=0.046, pad=0.04, label="attention of the last prompt token")
    title = _prompt_text(example["prompt"])
    box = example.get("box")
    if box is not None:
        x0, y0, x1, y1 = (float(v) for v in box)
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec="cyan", lw=2, ls="--"))
        # Box mass: the fraction of each merged cell covered by the box, cell by cell.
        cell_w, cell_h = width / cols, height / rows
        cx = np.clip(
            np.minimum((np.arange(cols) + 1) * cell_w, x1) - np.maximum(np.arange(cols) * cell_w, x0), 0, None
        )
        cy = np.clip(
            np.minimum((np.arange(rows) + 1) * cell_h, y1) - np.maximum(np.arange(rows) * cell_h, y0), 0, None
        )
        in_box = float((grid * np.outer(cy / cell_h, cx / cell_w)).sum())
        title += f"\nimage mass {grid.sum():.3f}, in target box ~{in_box:.3f}"
    if example.get("answer") is not None:
        title += f"  (answer: {example['answer']})"
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return grid
