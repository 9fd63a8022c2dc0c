"""Where a VLM's image tokens are and what grid they form, per model family: the one place that the heatmaps
(`plotting.capture_image_attention`), VRGA and SAYO's box -> token mapping (`sayo.attention`) ask.

Every supported layout gives each image a block of consecutive placeholder tokens forming one row-major grid over
the WHOLE image, described Qwen-style as (t, h, w) patches merged `merge x merge` into one token, so
`visual.regions.region_token_indices` and `plotting.token_grid` read them all alike:

    dynamic (Qwen2/2.5/3-VL, Qwen3.5-VL): `image_grid_thw` from the processor / `vision_config.spatial_merge_size`
    fixed (LLaVA, Gemma3): the same square grid for every image, (1, n, n) with merge 1. LLaVA: n = image_size /
        patch_size patch tokens (`vision_feature_select_strategy="default"` drops CLS); Gemma3: n^2 =
        `mm_tokens_per_image` tokens average-pooled from the patch grid
    patches (Gemma4): each image's (x, y) patch grid from `image_position_ids` (aspect-ratio preserving), pooled
        `vision_config.pooling_kernel_size` x that into one token

Tiled layouts (InternVL, Idefics3 / SmolVLM image splitting, LLaVA-NeXT / LLaVA-OneVision anyres) raise a
`LayoutError` naming the model class and why; so do processor options that show the model only part of the image
(LLaVA's center crop of a non-square image, Gemma3's pan-and-scan crops): `VisualLayout.check_image`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["LayoutError", "VisualLayout", "visual_layout"]


class LayoutError(ValueError):
    """The model's image tokens do not form one known grid over the image (named with the model class)."""


_ANYRES = (
    "anyres tiling: a base image's tokens, then the tiles' unpadded feature map with one `image_newline` token per "
    "row (pooled further above `vision_aspect_ratio`), an arrangement set by `image_sizes` and `image_grid_pinpoints`"
)
_SPLITTING = (
    "image splitting (`do_image_splitting`): a rows x cols grid of tiles plus a global view, each `image_seq_length` "
    "pixel-shuffled tokens between row / column marker tokens, the tile grid chosen per image"
)
# model_type: why its image tokens are no single grid over the image
TILED = {
    "internvl": (
        "tiles: the processor cuts each image into up to `max_patches` tiles chosen by aspect ratio plus a thumbnail, "
        "each `image_seq_length` pixel-shuffled tokens, and the inputs do not say how the tiles are arranged"
    ),
    "idefics3": _SPLITTING,
    "smolvlm": _SPLITTING,
    "llava_next": _ANYRES,
    "llava_onevision": _ANYRES,
}
SUPPORTED = (
    "the Qwen2/2.5/3-VL and Qwen3.5 VLMs (`image_grid_thw`), LLaVA and Gemma3 (fixed square grids) and Gemma4 "
    "(`image_position_ids`)"
)


def _get(obj, key, default=None):
    """`obj[key]` of a dict or SizeDict, else `obj.key`."""
    if obj is None:
        return default
    if isinstance(obj, dict):
        return obj.get(key, default)
    return getattr(obj, key, default)


@dataclass(frozen=True)
class VisualLayout:
    """How one model's image placeholders map to grids (module docstring). `grid` is the fixed layouts' (n, n)."""

    model: str  # the model class, for errors
    kind: str  # "dynamic", "fixed" or "patches"
    token_id: int
    merge: int
    grid: tuple | None = None
    image_processor: object = None  # the processor's, when known: `check_image` reads its resize options

    @property
    def cells(self) -> int | None:
        """Tokens per image of a fixed layout."""
        return None if self.grid is None else self.grid[0] * self.grid[1]

    def grids(self, inputs: dict, required: bool = True) -> list | None:
        """(t, h, w) of each image of a batch, in order, from the processor's tensors (None for a fixed layout: its
        images are counted from the placeholders, `sample_grids`). When the tensor that holds them is missing: a
        LayoutError, or [] (no images) with `required=False`."""
        if self.kind == "fixed":
            return None
        key = "image_grid_thw" if self.kind == "dynamic" else "image_position_ids"
        value = inputs.get(key)
        if value is None and not required:
            return []
        if value is None:
            style = "a Qwen2/2.5/3-VL-style processor" if key == "image_grid_thw" else "Gemma4's processor"
            raise LayoutError(
                f"{self.model}'s image tokens form the grids given by `{key}`, which the inputs lack: this needs "
                f"{style} (it reads {key})"
            )
        if self.kind == "dynamic":
            return [tuple(int(v) for v in row) for row in value.tolist()]
        grids = []
        for positions in value:  # (patches, 2) of (x, y); padding patches are (-1, -1)
            valid = positions[(positions != -1).all(-1)]
            width, height = (int(v) + 1 for v in valid.max(0).values)
            if height % self.merge or width % self.merge:
                raise LayoutError(
                    f"{self.model}: an image of {height} x {width} patches is not divisible by pooling_kernel_size="
                    f"{self.merge}"
                )
            grids.append((1, height, width))
        return grids

    def sample_grids(self, input_ids: torch.Tensor, grids: list | None, num_images=None) -> list:
        """Per sample of `input_ids` (B, T), the (t, h, w) of its images, in order; None for a sample whose
        placeholders match no whole number of images. `num_images` (per sample, as TRL passes it) splits `grids`;
        without it each sample takes grids until its placeholders are covered."""
        counts = (input_ids == self.token_id).sum(-1).tolist()
        if self.kind == "fixed":
            cells = self.cells
            return [None if n % cells else [(1, *self.grid)] * (n // cells) for n in counts]
        grids = list(grids or [])
        out, used = [], 0
        for b, wanted in enumerate(counts):
            if num_images is not None:
                mine = grids[used : used + int(num_images[b])]
            else:
                mine = []
                while sum(math.prod(g) // self.merge**2 for g in mine) < wanted and used + len(mine) < len(grids):
                    mine.append(grids[used + len(mine)])
            used += len(mine)
            out.append(mine if sum(math.prod(g) // self.merge**2 for g in mine) == wanted else None)
        return out

    def blocks(self, ids: torch.Tensor, grids: list | None) -> list | None:
        """The sequence positions of each image's tokens in one 1D sequence (row-major, frame-major), or None when
        they do not match `grids` (e.g. truncated)."""
        if grids is None:
            return None
        from .regions import visual_token_positions

        return visual_token_positions(ids, self.token_id, grids, self.merge)

    def check_image(self, size, where: str = "the image") -> None:
        """Raise when the processor shows the model only part of an image of `size` = (width, height), or more
        than it, so that a grid over the whole image would misplace boxes and heatmaps (LLaVA's center crop of a
        non-square image, its `do_pad` squares). A no-op without an image processor and for the other layouts."""
        processor = self.image_processor
        if self.kind != "fixed" or processor is None:
            return
        width, height = (int(v) for v in size)
        grid = f"{self.model}'s {self.grid[0]}x{self.grid[1]} token grid"
        if _get(processor, "do_pad", False) and width != height:
            raise LayoutError(
                f"{where}: the image processor pads a {width}x{height} image to a square (do_pad=True), so {grid} "
                "covers the padding too: boxes and heatmaps need square images here (pad or crop them first)"
            )
        if not _get(processor, "do_center_crop", False):
            return
        target, crop = _get(processor, "size"), _get(processor, "crop_size")
        crop, edge = (_get(crop, "height"), _get(crop, "width")), _get(target, "shortest_edge")
        if _get(processor, "do_resize", True) is False:
            resized = (height, width)
        elif edge is not None:  # the shortest edge to `edge`, the aspect ratio kept (transformers' rounding)
            long = int(edge * max(width, height) / min(width, height))
            resized = (edge, long) if height <= width else (long, edge)
        else:
            resized = (_get(target, "height"), _get(target, "width"))
        if resized != crop:
            raise LayoutError(
                f"{where}: {self.model}'s image processor resizes a {width}x{height} image to {resized[1]}x"
                f"{resized[0]} and center-crops it to {crop[1]}x{crop[0]}, so {grid} covers only the crop: boxes "
                "and heatmaps need square images (pad or crop them first) or an image processor whose resize "
                "equals its crop_size"
            )


def _has_cls(base, vision_config) -> bool:
    """Whether a LLaVA's vision tower puts a CLS token before its patches (CLIP does, SigLIP does not)."""
    tower = getattr(base, "vision_tower", None)
    tower = getattr(getattr(base, "model", None), "vision_tower", None) if tower is None else tower
    if tower is None:
        return "clip" in str(getattr(vision_config, "model_type", ""))
    return any(name.endswith("class_embedding") for name, _ in tower.named_parameters())


def visual_layout(model, processor=None) -> VisualLayout:
    """The `VisualLayout` of `model`'s images (module docstring), or a LayoutError naming the class and why.
    `processor` (or its image processor), when given, is checked for options that break the layout."""
    from ..capture.models import spatial_merge_size, unwrap_model

    base = unwrap_model(model)
    name, config = type(base).__name__, getattr(base, "config", None)
    model_type = getattr(config, "model_type", None)
    token = getattr(config, "image_token_id", getattr(config, "image_token_index", None))
    image_processor = getattr(processor, "image_processor", processor)
    if token is None:
        raise LayoutError(f"{name} has no image tokens (no `image_token_id` in its config): it is not a VLM")
    if model_type in TILED:
        raise LayoutError(
            f"{name} lays its image tokens out as {TILED[model_type]}; heatmaps and SAYO boxes need one grid over "
            f"the whole image, which {SUPPORTED} have"
        )
    vision = getattr(config, "vision_config", None)
    if model_type == "llava":
        strategy = getattr(config, "vision_feature_select_strategy", "default")
        if (strategy == "default") != _has_cls(base, vision):  # "default" drops the first token, CLS or not
            what = "keeps the CLS token before the patch grid"
            if strategy == "default":
                what = "drops the first patch token of a vision tower without CLS"
            raise LayoutError(
                f"{name} with vision_feature_select_strategy={strategy!r} {what}; heatmaps and SAYO boxes need the "
                "image tokens to be the patch grid ('default' with a CLS vision tower such as CLIP, 'full' without)"
            )
        side = int(vision.image_size) // int(vision.patch_size)
        return VisualLayout(name, "fixed", int(token), 1, (side, side), image_processor)
    if model_type == "gemma3":
        side = math.isqrt(int(config.mm_tokens_per_image))
        if side * side != int(config.mm_tokens_per_image):
            raise LayoutError(f"{name}: mm_tokens_per_image={config.mm_tokens_per_image} is not a square grid")
        if _get(image_processor, "do_pan_and_scan", False):
            raise LayoutError(
                f"{name}'s image processor has do_pan_and_scan=True: its crops add image blocks that are not the "
                "image; heatmaps and SAYO boxes need do_pan_and_scan=False (one square grid per image)"
            )
        return VisualLayout(name, "fixed", int(token), 1, (side, side), image_processor)
    if model_type == "gemma4":
        return VisualLayout(name, "patches", int(token), int(vision.pooling_kernel_size), None, image_processor)
    merge = spatial_merge_size(base, default=None)
    if merge is not None:
        return VisualLayout(name, "dynamic", int(token), merge, None, image_processor)
    raise LayoutError(
        f"{name} (model_type={model_type!r}) has no known visual layout: heatmaps and SAYO boxes support {SUPPORTED}"
    )
