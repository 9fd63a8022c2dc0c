"""What the capture layer knows about model structure: wrappers to strip, where the decoder layers are, the
visual token ids and merge size. Every module that needs one of these asks here, so a new model family is taught
in one place."""

from __future__ import annotations

from torch import nn

__all__ = ["CaptureError", "find_decoder_layers", "spatial_merge_size", "unwrap_model", "visual_token_ids"]


class CaptureError(RuntimeError):
    """The model or its attention implementation cannot be captured."""


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip DDP / DeepSpeed / FSDP (`.module`) and PEFT (`get_base_model()`) wrappers."""
    for _ in range(16):
        if hasattr(model, "get_base_model") and callable(model.get_base_model) and model.get_base_model() is not model:
            model = model.get_base_model()
        elif isinstance(getattr(model, "module", None), nn.Module):
            model = model.module
        else:
            return model
    return model


def find_decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The language model's decoder layers (each with `.self_attn`), or a CaptureError naming the class."""
    base = unwrap_model(model)
    candidates = []
    if hasattr(base, "get_decoder"):
        try:
            candidates.append(base.get_decoder())
        except (AttributeError, NotImplementedError, ValueError):  # no decoder: fall through to the attributes
            candidates.append(None)
    candidates += [getattr(base, "model", None), getattr(getattr(base, "model", None), "language_model", None), base]
    for obj in candidates:
        layers = getattr(obj, "layers", None)
        if isinstance(layers, nn.ModuleList) and len(layers) and hasattr(layers[0], "self_attn"):
            return layers
    raise CaptureError(
        f"capture_attention cannot find the decoder layers of {type(base).__name__}: it supports decoder-only "
        "language models and VLMs whose `get_decoder()` (or `.model`) has `.layers[i].self_attn` "
        "(Llama, Qwen2, Qwen3, Qwen2-VL, Qwen2.5-VL, Qwen3-VL, ...)."
    )


def spatial_merge_size(model: nn.Module, processor=None, default: int | None = 2) -> int | None:
    """Side of the block of vision patches merged into one LM token: `vision_config.spatial_merge_size` (Qwen-VL),
    else the image processor's `merge_size`, else `default`."""
    config = getattr(unwrap_model(model), "config", None)
    merge = getattr(getattr(config, "vision_config", None), "spatial_merge_size", None)
    if merge is None:
        merge = getattr(getattr(processor, "image_processor", None), "merge_size", None)
    return default if merge is None else int(merge)


def visual_token_ids(model: nn.Module) -> list[int]:
    """The image and video placeholder token ids of a VLM's config ([] for a text-only model)."""
    config = getattr(unwrap_model(model), "config", None)
    ids = [getattr(config, name, None) for name in ("image_token_id", "video_token_id")]
    return [int(i) for i in ids if i is not None]
