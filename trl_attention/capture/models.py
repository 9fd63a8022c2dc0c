"""What the capture layer knows about model structure: wrappers to strip, where the decoder layers are, the
visual token ids and merge size. Every module that needs one of these asks here, so a new model family is taught
in one place."""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "ATTENTION_NAMES",
    "CaptureError",
    "attention_layers",
    "attention_module",
    "find_decoder_layers",
    "kernel_options",
    "resolve_attention_layer",
    "spatial_merge_size",
    "unwrap_model",
    "visual_token_ids",
]


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


# Names under which a decoder layer holds its softmax attention: `self_attn` (Llama, Qwen, Gemma, GPT-OSS, the
# attention layers of Qwen3.5 / Qwen3-Next, whose linear layers hold `linear_attn`), `mixer` (NemotronH, whose other
# layers' mixer is Mamba2 / MLP / MoE), `attention` / `self_attention` / `attn` (other hybrids).
ATTENTION_NAMES = ("self_attn", "mixer", "self_attention", "attention", "attn")
_NOT_SOFTMAX = ("linear", "deltanet", "mamba", "ssm")


def attention_module(layer: nn.Module) -> nn.Module | None:
    """The softmax-attention submodule of one decoder layer, or None (a Mamba / linear-attention / MLP layer)."""
    for name in ATTENTION_NAMES:
        module = getattr(layer, name, None)
        kind = type(module).__name__.lower()
        if isinstance(module, nn.Module) and kind.endswith("attention") and not any(w in kind for w in _NOT_SOFTMAX):
            return module
    return None


def find_decoder_layers(model: nn.Module) -> nn.ModuleList:
    """All decoder layers of the language model (hybrids: attention and other layers mixed), or a CaptureError
    naming the class. `attention_layers` gives the ones with softmax attention."""
    base = unwrap_model(model)
    candidates = []
    if hasattr(base, "get_decoder"):
        try:
            candidates.append(base.get_decoder())
        except (AttributeError, NotImplementedError, ValueError):  # no decoder: fall through to the attributes
            candidates.append(None)
    inner = getattr(base, "model", None)
    candidates += [inner, getattr(inner, "language_model", None), getattr(base, "language_model", None), base]
    for obj in candidates:
        layers = getattr(obj, "layers", None)
        if isinstance(layers, nn.ModuleList) and any(attention_module(layer) is not None for layer in layers):
            return layers
    raise CaptureError(
        f"capture_attention cannot find the decoder layers of {type(base).__name__}: it supports decoder-only "
        "language models and VLMs whose `get_decoder()` (or `.model`) has `.layers[i]` holding a softmax attention "
        f"module (as one of `{'`, `'.join(ATTENTION_NAMES)}`): Llama, Qwen2/3, Qwen3.5, Qwen3-Next, NemotronH, "
        "Gemma, the Qwen-VL, LLaVA, Gemma3, InternVL and Idefics3 / SmolVLM VLMs, ..."
    )


def attention_layers(model: nn.Module) -> list[tuple[int, nn.Module]]:
    """[(the model's own decoder layer index, attention module)] of the layers with softmax attention, in order.
    `layer=i` options of the capture index this list (-1 = the last attention layer)."""
    return [(i, m) for i, layer in enumerate(find_decoder_layers(model)) if (m := attention_module(layer)) is not None]


def resolve_attention_layer(model: nn.Module, layer: int, option: str = "layer") -> tuple[int, int, nn.Module]:
    """(attention-layer index in [0, n), the model's decoder layer index, attention module) of `option`=`layer`;
    a CaptureError naming the number of attention layers when it is out of range."""
    found = attention_layers(model)
    if not -len(found) <= layer < len(found):
        total = len(find_decoder_layers(model))
        hybrid = f" (decoder layers {[i for i, _ in found]} of {total})" if total != len(found) else ""
        raise CaptureError(
            f"{option}={layer} is out of range for the {len(found)} attention layers{hybrid} of "
            f"{type(unwrap_model(model)).__name__}: use -{len(found)} .. {len(found) - 1} (it indexes attention "
            "layers, -1 = the last)"
        )
    index = layer % len(found)
    return index, found[index][0], found[index][1]


def kernel_options(module: nn.Module) -> list[tuple[str, str, object]]:
    """[(kernel kwarg, the model option behind it, a probe value)] of what an attention module passes its kernel
    beyond query/key/value/mask/scaling: `softcap` (Gemma2's `attn_logit_softcapping`), `s_aux` (GPT-OSS's `sinks`),
    `sliding_window`, `position_bias` (T5-style relative attention bias). The trainers probe the capture with
    each at construction, so an unsupported one fails there."""
    import torch

    config = getattr(module, "config", None)
    heads = getattr(config, "num_attention_heads", None) or 1
    options = []
    softcap = getattr(module, "attn_logit_softcapping", getattr(config, "attn_logit_softcapping", None))
    if softcap is not None:
        options.append(("softcap", "attn_logit_softcapping", float(softcap)))
    sinks = getattr(module, "sinks", None)
    if isinstance(sinks, torch.Tensor):
        options.append(("s_aux", "sinks (attention sink logits)", torch.zeros(int(sinks.shape[0]) or heads)))
    window = getattr(module, "sliding_window", None)
    if window is not None:
        options.append(("sliding_window", "sliding_window", int(window)))
    if hasattr(module, "relative_attention_bias") or getattr(config, "relative_attention_num_buckets", None):
        options.append(("position_bias", "relative_attention_bias", torch.zeros(1, heads, 2, 2)))
    return options


def spatial_merge_size(model: nn.Module, processor=None, default: int | None = 2) -> int | None:
    """Side of the block of vision patches merged into one LM token: `vision_config.spatial_merge_size` (Qwen-VL),
    else the image processor's `merge_size`, else `default`."""
    config = getattr(unwrap_model(model), "config", None)
    merge = getattr(getattr(config, "vision_config", None), "spatial_merge_size", None)
    if merge is None:
        merge = getattr(getattr(processor, "image_processor", None), "merge_size", None)
    return default if merge is None else int(merge)


def visual_token_ids(model: nn.Module) -> list[int]:
    """The image and video placeholder token ids of a VLM's config ([] for a text-only model): `image_token_id`
    (Qwen-VL, Qwen3.5, InternVL, Idefics3 / SmolVLM; Gemma3 and LLaVA map it to `image_token_index`),
    `video_token_id` (Qwen-VL, LLaVA-OneVision)."""
    config = getattr(unwrap_model(model), "config", None)
    names = ("image_token_id", "image_token_index", "video_token_id", "video_token_index")
    ids = [getattr(config, name, None) for name in names]
    return list(dict.fromkeys(int(i) for i in ids if i is not None))


def visual_masses(model: nn.Module, probs: torch.Tensor, input_ids: torch.Tensor) -> dict:
    """Attention mass (B, C) on image placeholders (`image_mass`) and, for models with video tokens, on video
    placeholders (`video_mass`) and on both (`visual_mass`); {} for text-only models. Decided by the config alone,
    so every rank logs the same metrics."""
    config = getattr(unwrap_model(model), "config", None)
    image = [getattr(config, n, None) for n in ("image_token_id", "image_token_index")]
    video = [getattr(config, n, None) for n in ("video_token_id", "video_token_index")]
    image = [int(i) for i in image if i is not None][:1]
    video = [int(i) for i in video if i is not None][:1]

    def mass(ids):
        hit = torch.isin(input_ids, torch.tensor(ids, device=input_ids.device))
        return (probs * hit[:, None, :].to(probs.dtype)).sum(-1)

    out = {"image_mass": mass(image)} if image else {}
    if video:
        out["video_mass"] = mass(video)
        out["visual_mass"] = out["video_mass"] + out["image_mass"] if image else out["video_mass"]
    return out
