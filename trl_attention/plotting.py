"""Plots for training runs: metric curves from a Trainer log history, and attention heatmaps over the image.

Heatmaps: `capture_image_attention` (one captured forward) -> per-token grids over the visual tokens ->
`select_tokens` (one token, a span or the mean) -> `overlay_heatmap` (upsampled, blended, image-sized PIL image)
or `plot_heatmap` (a PNG with colour bar). `callbacks.AttentionHeatmapCallback` logs them during training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: never open a window, also on machines with a display

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.cm import ScalarMappable
from matplotlib.colors import Normalize
from matplotlib.patches import Rectangle
from PIL import Image

from .capture import capture_attention, spatial_merge_size, unwrap_model
from .sayo.regions import visual_token_positions

__all__ = [
    "METRICS",
    "ImageAttention",
    "attention_heatmap",
    "capture_image_attention",
    "overlay_heatmap",
    "plot_heatmap",
    "plot_metrics",
    "select_tokens",
    "token_grid",
]

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


# ------------------------------------------------------------------------------------------------ heatmaps


@dataclass
class ImageAttention:
    """Attention of query tokens over one image's visual-token grid (from `capture_image_attention`)."""

    grids: np.ndarray  # (n, rows, cols): per query token, attention mass on each visual token (frames summed)
    tokens: list  # the n query tokens' text
    image: Image.Image
    prompt_length: int  # sequence length of the templated prompt (the first completion token's position)

    def select(self, tokens=None) -> np.ndarray:
        """One (rows, cols) grid: see `select_tokens`."""
        return select_tokens(self.grids, tokens)


def token_grid(rows: torch.Tensor, positions, grid_thw, merge_size: int = 2) -> np.ndarray:
    """(n, T) attention rows -> (n, rows, cols) over one image's merged token grid (row-major, frames summed).

    `positions`: that image's visual-token positions in the sequence (`regions.visual_token_positions`);
    `grid_thw`: (t, h, w) in patches, as the processor reports it.
    """
    t, h, w = (int(v) for v in grid_thw)
    if h % merge_size or w % merge_size:
        raise ValueError(f"grid_thw {(t, h, w)} is not divisible by merge_size={merge_size}")
    shape = (t, h // merge_size, w // merge_size)
    positions = torch.as_tensor(positions, dtype=torch.long, device=rows.device)
    if positions.numel() != math.prod(shape):
        raise ValueError(
            f"got {positions.numel()} visual-token positions, grid_thw {(t, h, w)} needs {math.prod(shape)}"
        )
    values = rows[:, positions].detach().float().cpu().numpy()
    return values.reshape(rows.shape[0], *shape).sum(1)


def select_tokens(grids: np.ndarray, tokens=None) -> np.ndarray:
    """Reduce (n, rows, cols) per-token grids to one grid: `tokens` None or "mean" (mean over all), an int (one
    token, negative counts from the end), or a (start, stop) pair / slice (mean over that span)."""
    n = grids.shape[0]
    if tokens is None or (isinstance(tokens, str) and tokens == "mean"):
        return grids.mean(0)
    if isinstance(tokens, (int, np.integer)) and not isinstance(tokens, bool):
        if not -n <= tokens < n:
            raise IndexError(f"token {tokens} out of range for {n} tokens")
        return grids[tokens]
    if isinstance(tokens, (tuple, list)) and len(tokens) == 2:
        tokens = slice(*tokens)
    if isinstance(tokens, slice):
        span = grids[tokens]
        if span.shape[0] == 0:
            raise ValueError(f"token span {tokens} selects none of the {n} tokens")
        return span.mean(0)
    raise ValueError(f"tokens must be None, 'mean', an int or a (start, stop) span, got {tokens!r}")


def overlay_heatmap(
    image: Image.Image,
    grid: np.ndarray,
    alpha: float = 0.55,
    cmap: str = "inferno",
    resample: str = "nearest",
    vmax: float | None = None,
) -> Image.Image:
    """The image with `grid` (rows, cols) upsampled to its size and alpha-blended on top, as an RGB PIL image of
    the image's size. Colours scale 0..vmax (default the grid's max); "nearest" keeps one flat cell per token
    rather than suggesting finer resolution than exists, "bilinear" smooths."""
    if resample not in ("nearest", "bilinear"):
        raise ValueError(f"resample must be 'nearest' or 'bilinear', got {resample!r}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    grid = np.asarray(grid, dtype=np.float32)
    if grid.ndim != 2:
        raise ValueError(f"grid must be 2D (rows, cols), got shape {grid.shape}")
    top = float(grid.max()) if vmax is None else float(vmax)
    scaled = np.clip(grid / top, 0.0, 1.0) if top > 0 else np.zeros_like(grid)
    method = Image.NEAREST if resample == "nearest" else Image.BILINEAR
    up = np.asarray(Image.fromarray(scaled).resize(image.size, method), dtype=np.float32)
    colours = matplotlib.colormaps[cmap](np.clip(up, 0.0, 1.0))[..., :3]
    base = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0
    blended = (1.0 - alpha) * base + alpha * colours
    return Image.fromarray(np.round(blended * 255).astype(np.uint8), mode="RGB")


@torch.no_grad()
def capture_image_attention(
    model, processor, prompt, image, completion: str | None = None, layer: int = -1, image_index: int = 0
) -> ImageAttention:
    """Run the model once on the chat-templated `prompt` (+ `completion` text) and return decoder `layer`'s
    head-averaged attention over the visual tokens of image `image_index`.

    Query tokens: each completion token (its own position, as RAL's attention policy reads it); without a
    completion, the last prompt token (the position that predicts the first answer token). `image`: a PIL image
    or the list of the prompt's images.
    """
    images = list(image) if isinstance(image, (list, tuple)) else [image]
    images = [im.convert("RGB") for im in images]
    text = processor.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    inputs = dict(processor(text=[text], images=images, return_tensors="pt"))
    if "image_grid_thw" not in inputs:
        raise ValueError("capture_image_attention needs a Qwen2/2.5/3-VL-style processor (it reads image_grid_thw)")
    prompt_length = inputs["input_ids"].shape[1]
    tokenizer = getattr(processor, "tokenizer", processor)
    ids = tokenizer(completion, add_special_tokens=False)["input_ids"] if completion else []
    if ids:  # append the completion's ids (the way TRL concatenates prompt and completion), not re-tokenised text
        extra = torch.tensor([ids], dtype=inputs["input_ids"].dtype)
        for key, value in list(inputs.items()):
            if isinstance(value, torch.Tensor) and value.dim() == 2 and value.shape[1] == prompt_length:
                fill = extra if key == "input_ids" else torch.ones_like(extra) if key == "attention_mask" else None
                inputs[key] = torch.cat([value, fill if fill is not None else torch.zeros_like(extra)], dim=1)
    device = next(model.parameters()).device
    inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    num_rows = max(len(ids), 1)
    was_training = model.training
    model.eval()
    try:
        with capture_attention(model, num_rows=num_rows, layer=layer) as cap:
            model(**inputs)
    finally:
        model.train(was_training)
    rows = cap.probs[0]
    if not ids:
        rows = rows[-1:]  # the last prompt token
    config = unwrap_model(model).config
    merge = spatial_merge_size(model, processor)
    grids_thw = inputs["image_grid_thw"].tolist()
    blocks = visual_token_positions(inputs["input_ids"][0], config.image_token_id, grids_thw, merge)
    if blocks is None or not 0 <= image_index < len(blocks):
        raise ValueError(f"no visual tokens for image {image_index} (found {len(blocks or [])} image blocks)")
    grids = token_grid(rows, blocks[image_index], grids_thw[image_index], merge)
    labels = [tokenizer.decode([i]) for i in ids] if ids else ["<last prompt token>"]
    return ImageAttention(grids=grids, tokens=labels, image=images[image_index], prompt_length=prompt_length)


def _box_mass(grid: np.ndarray, box, size) -> float:
    """Attention mass inside `box` (x0, y0, x1, y1 pixels), each cell weighted by the share of it the box covers."""
    (x0, y0, x1, y1), (width, height), (rows, cols) = box, size, grid.shape
    cell_w, cell_h = width / cols, height / rows
    cx = np.clip(np.minimum((np.arange(cols) + 1) * cell_w, x1) - np.maximum(np.arange(cols) * cell_w, x0), 0, None)
    cy = np.clip(np.minimum((np.arange(rows) + 1) * cell_h, y1) - np.maximum(np.arange(rows) * cell_h, y0), 0, None)
    return float((grid * np.outer(cy / cell_h, cx / cell_w)).sum())


def plot_heatmap(
    image: Image.Image, grid: np.ndarray, path, title: str = "", box=None, label: str = "attention"
) -> str:
    """Write a PNG of `overlay_heatmap(image, grid)` with a colour bar and, when given, the box (dashed)."""
    width, height = image.size
    fig, ax = plt.subplots(figsize=(5.5, 5))
    ax.imshow(overlay_heatmap(image, grid), extent=(-0.5, width - 0.5, height - 0.5, -0.5))
    mappable = ScalarMappable(norm=Normalize(0.0, float(grid.max()) or 1.0), cmap="inferno")
    fig.colorbar(mappable, ax=ax, fraction=0.046, pad=0.04, label=label)
    if box is not None:
        x0, y0, x1, y1 = (float(v) for v in box)
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, ec="cyan", lw=2, ls="--"))
    ax.set_title(title, fontsize=9)
    ax.set_axis_off()
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return str(path)


def attention_heatmap(model, processor, example: dict, path, layer: int = -1) -> np.ndarray:
    """Plot decoder `layer`'s attention of the last prompt token over the image of `example`; returns the grid.

    The returned (rows, cols) array is the attention mass of each merged visual token (row-major); its sum is the
    mass on the image (the rest is on the text). `example` needs `prompt` (conversational, with an image part) and
    `image`; `box` ([x0, y0, x1, y1], end-exclusive pixels) is drawn when present.
    """
    attention = capture_image_attention(model, processor, example["prompt"], example["image"], layer=layer)
    grid = attention.grids[0]
    title = _prompt_text(example["prompt"])
    box = example.get("box")
    if box is not None:
        title += f"\nimage mass {grid.sum():.3f}, in target box ~{_box_mass(grid, box, attention.image.size):.3f}"
    if example.get("answer") is not None:
        title += f"  (answer: {example['answer']})"
    plot_heatmap(attention.image, grid, path, title, box, label="attention of the last prompt token")
    return grid
