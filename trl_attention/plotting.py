"""Plots for training runs: metric curves from a Trainer log history, and attention heatmaps over images and videos.

Heatmaps: `capture_image_attention` (one captured forward) -> per-token grids over the visual tokens ->
`select_tokens` (one token, a span or the mean) -> `overlay_heatmap` (upsampled, blended, image-sized PIL image)
or `plot_heatmap` (a PNG with colour bar). Videos: `capture_video_attention` keeps one grid per temporal group
(2 frames), drawn as a strip of panels on one colour scale (`overlay_video_strip`, `plot_video_heatmap`).
`callbacks.AttentionHeatmapCallback` logs them during training.
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
from .visual.layouts import visual_layout
from .visual.regions import visual_token_positions
from .visual.rows import prompt_text

__all__ = [
    "METRICS",
    "ImageAttention",
    "VideoAttention",
    "attention_heatmap",
    "capture_image_attention",
    "capture_video_attention",
    "image_token_grids",
    "overlay_heatmap",
    "overlay_video_strip",
    "plot_heatmap",
    "plot_video_heatmap",
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


def token_grid(rows: torch.Tensor, positions, grid_thw, merge_size: int = 2, sum_frames: bool = True) -> np.ndarray:
    """(n, T) attention rows -> (n, rows, cols) over one image's merged token grid (row-major, frames summed), or
    with `sum_frames=False` (n, t, rows, cols): one grid per temporal group, as a video's tokens are t-major.

    `positions`: that image's (video's) token positions in the sequence (`regions.visual_token_positions`);
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
    values = rows[:, positions].detach().float().cpu().numpy().reshape(rows.shape[0], *shape)
    return values.sum(1) if sum_frames else values


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
    or the list of the prompt's images. The token grid is the model family's (`trl_attention.visual.layouts`): tiled
    layouts raise a `LayoutError` naming the class.
    """
    layout = visual_layout(model, processor)  # before the forward: an unsupported layout fails first
    images = list(image) if isinstance(image, (list, tuple)) else [image]
    images = [im.convert("RGB") for im in images]
    text = processor.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    inputs = dict(processor(text=[text], images=images, return_tensors="pt"))
    prompt_length = inputs["input_ids"].shape[1]
    tokenizer = getattr(processor, "tokenizer", processor)
    ids = tokenizer(completion, add_special_tokens=False)["input_ids"] if completion else []
    if ids:  # append the completion's ids (the way TRL concatenates prompt and completion), not re-tokenised text
        extra = torch.tensor([ids], dtype=inputs["input_ids"].dtype)
        for key, value in list(inputs.items()):
            if isinstance(value, torch.Tensor) and value.dim() == 2 and value.shape[1] == prompt_length:
                fill = extra if key == "input_ids" else torch.ones_like(extra) if key == "attention_mask" else None
                inputs[key] = torch.cat([value, fill if fill is not None else torch.zeros_like(extra)], dim=1)
    if 0 <= image_index < len(images):
        layout.check_image(images[image_index].size, f"image {image_index}")
    grids = image_token_grids(model, inputs, max(len(ids), 1), layer, image_index, prompt_length=prompt_length)
    labels = [tokenizer.decode([i]) for i in ids] if ids else ["<last prompt token>"]
    return ImageAttention(grids=grids, tokens=labels, image=images[image_index], prompt_length=prompt_length)


@torch.no_grad()
def image_token_grids(
    model, inputs: dict, num_rows: int = 1, layer: int = -1, image_index: int = 0, sample: int = 0, prompt_length=None
) -> np.ndarray:
    """(num_rows, rows, cols): the captured attention of the last `num_rows` positions of batch row `sample` over
    the token grid of its image `image_index`, for model inputs as the processor returns them (left padding is
    fine). The grid is the model family's (`trl_attention.visual.layouts`); placeholders are looked for in the first
    `prompt_length` positions (default all). Tiled layouts raise a `LayoutError` naming the class."""
    layout = visual_layout(model)
    grids = layout.sample_grids(inputs["input_ids"][:, :prompt_length], layout.grids(inputs))[sample]
    blocks = layout.blocks(inputs["input_ids"][sample, :prompt_length].cpu(), grids)
    if blocks is None or not 0 <= image_index < len(blocks):
        raise ValueError(f"no visual tokens for image {image_index} (found {len(blocks or [])} image blocks)")
    rows = _query_rows(model, inputs, num_rows, layer, sample)
    return token_grid(rows, blocks[image_index], grids[image_index], layout.merge)


def _query_rows(model, inputs: dict, n_completion: int, layer: int, sample: int = 0) -> torch.Tensor:
    """One eval-mode captured forward: the (n, T) rows of the completion tokens (the last prompt token without) of
    batch row `sample`."""
    device = next(model.parameters()).device
    inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in inputs.items()}
    was_training = model.training
    model.eval()
    try:
        with capture_attention(model, num_rows=max(n_completion, 1), layer=layer) as cap:
            model(**inputs)
    finally:
        model.train(was_training)
    return cap.probs[sample] if n_completion else cap.probs[sample][-1:]


@dataclass
class VideoAttention:
    """Attention of query tokens over one video's tokens, one grid per temporal group of `temporal` frames (from
    `capture_video_attention`): the mass of each group is what a strip of frames can show."""

    grids: np.ndarray  # (n, groups, rows, cols): per query token, attention mass on each video token
    tokens: list  # the n query tokens' text
    frames: np.ndarray  # (groups * temporal, H, W, 3) uint8: the resized frames the video tokens were cut from
    prompt_length: int
    temporal: int = 2

    def select(self, tokens=None) -> np.ndarray:
        """One (groups, rows, cols) stack: `select_tokens` over the query tokens."""
        return select_tokens(self.grids, tokens)

    def group_frames(self) -> list:
        """The first frame of each temporal group (the panels of the strip), as PIL images."""
        return [Image.fromarray(self.frames[g * self.temporal]) for g in range(self.grids.shape[1])]


@torch.no_grad()
def capture_video_attention(
    model, processor, prompt, visuals: dict, completion: str | None = None, layer: int = -1, video_index: int = 0
) -> VideoAttention:
    """`capture_image_attention` for a row with videos: one captured forward over the prompt, its placeholders
    expanded as the trainer expands them, + `completion`; the attention on video `video_index`, per temporal group.

    `visuals`: the row's encoded inputs (`trl_attention.video.rows.encode_row`: tensors and `video_frames`)."""
    from .video.encode import merge_visuals, tokenize_visual_prompts, vision_geometry
    from .video.grpo import mm_token_type_ids

    config = unwrap_model(model).config
    frames = visuals.get("video_frames") or []
    if getattr(config, "video_token_id", None) is None or not 0 <= video_index < len(frames):
        raise ValueError(f"no video {video_index} to show: the row has {len(frames)} video(s) (or the model none)")
    tokenizer = getattr(processor, "tokenizer", processor)
    tokens = tokenizer.convert_ids_to_tokens([config.image_token_id, config.video_token_id])
    (prompt_ids,), _ = tokenize_visual_prompts(processor, [prompt], [visuals], *tokens)
    ids = tokenizer(completion, add_special_tokens=False)["input_ids"] if completion else []
    input_ids = torch.tensor([prompt_ids + ids])
    inputs = {**merge_visuals([visuals]), "input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}
    inputs["mm_token_type_ids"] = mm_token_type_ids(model, input_ids)
    rows = _query_rows(model, inputs, len(ids), layer)
    merge = spatial_merge_size(model, processor)
    grids_thw = visuals["video_grid_thw"].tolist()
    blocks = visual_token_positions(input_ids[0, : len(prompt_ids)], config.video_token_id, grids_thw, merge)
    if blocks is None:
        raise ValueError(f"the prompt's video tokens do not match video_grid_thw {grids_thw}")
    grids = token_grid(rows, blocks[video_index], grids_thw[video_index], merge, sum_frames=False)
    labels = [tokenizer.decode([i]) for i in ids] if ids else ["<last prompt token>"]
    temporal = vision_geometry(processor)["temporal"]
    return VideoAttention(grids, labels, np.asarray(frames[video_index]), len(prompt_ids), temporal)


def overlay_video_strip(frames, grids: np.ndarray, alpha: float = 0.55, gap: int = 2) -> Image.Image:
    """The frames side by side, each with its temporal group's (rows, cols) grid overlaid, all on ONE colour scale
    (the strip's max), so a brighter panel is a group with more attention."""
    grids = np.asarray(grids, dtype=np.float32)
    if grids.ndim != 3 or len(frames) != len(grids):
        raise ValueError(f"need one frame per (rows, cols) grid, got {len(frames)} frames, grids {grids.shape}")
    panels = [overlay_heatmap(f, g, alpha=alpha, vmax=float(grids.max())) for f, g in zip(frames, grids)]
    width, height = panels[0].size
    strip = Image.new("RGB", (len(panels) * (width + gap) - gap, height), (255, 255, 255))
    for i, panel in enumerate(panels):
        strip.paste(panel, (i * (width + gap), 0))
    return strip


def plot_video_heatmap(frames, grids: np.ndarray, path, title: str = "", label: str = "attention") -> str:
    """Write a PNG of `overlay_video_strip(frames, grids)` as panels titled with each group's mass, one colour bar."""
    grids = np.asarray(grids, dtype=np.float32)
    fig, axes = plt.subplots(1, len(grids), figsize=(2.4 * len(grids) + 1.2, 3.0), squeeze=False)
    top = float(grids.max()) or 1.0
    for g, (ax, frame, grid) in enumerate(zip(axes[0], frames, grids)):
        ax.imshow(overlay_heatmap(frame, grid, vmax=top))
        ax.set_title(f"group {g}: {grid.sum():.3f}", fontsize=9)
        ax.set_axis_off()
    fig.colorbar(ScalarMappable(norm=Normalize(0.0, top), cmap="inferno"), ax=list(axes[0]), shrink=0.8, label=label)
    fig.suptitle(title, fontsize=9)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return str(path)


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
    title = prompt_text(example["prompt"])
    box = example.get("box")
    if box is not None:
        title += f"\nimage mass {grid.sum():.3f}, in target box ~{_box_mass(grid, box, attention.image.size):.3f}"
    if example.get("answer") is not None:
        title += f"  (answer: {example['answer']})"
    plot_heatmap(attention.image, grid, path, title, box, label="attention of the last prompt token")
    return grid
