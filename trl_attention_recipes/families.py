"""Tiny, offline, seeded models of other families than Qwen2: hybrid decoders (NemotronH, Qwen3.5, Qwen3.5-MoE,
Qwen3-Next), attention with softcap / sinks (Gemma2, GPT-OSS) and VLMs (Gemma3, Gemma4, LLaVA, LLaVA-OneVision,
InternVL, Idefics3, SmolVLM, Qwen3.5-VL), built from their transformers config classes for the support-matrix tests.

`build_tiny_family(name)` returns `(model, tokenizer)` for a text family and `(model, inputs)` for a VLM (hand-made
inputs: 2 rows holding one image's placeholder tokens each, row 0 left-padded by 2). Families this transformers
version lacks are absent from `available_families()`.
"""

from __future__ import annotations

import importlib

import torch

from trl_attention.tiny.models import seeded_init, text_config
from trl_attention.tiny.tokenizer import build_tokenizer

__all__ = ["EAGER_ONLY", "HYBRID_FAMILIES", "TEXT_FAMILIES", "VLM_FAMILIES", "available_families", "build_tiny_family"]

IMAGE_TOKEN_ID = 5  # <|image_pad|> of the tiny tokenizer
LINEAR_ATTENTION_LAYERS = {
    "linear_conv_kernel_dim": 2,
    "linear_key_head_dim": 16,
    "linear_value_head_dim": 16,
    "linear_num_key_heads": 2,
    "linear_num_value_heads": 4,
}
# Hybrids end on a non-attention layer, so "the last attention layer" differs from the last layer.
_QWEN_HYBRID = ["linear_attention", "full_attention", "linear_attention", "full_attention", "linear_attention"]
_MOE = {"num_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32, "shared_expert_intermediate_size": 32}

# name: (transformers module, config class, model class, text config overrides)
TEXT_FAMILIES = {
    "nemotron_h": (
        "nemotron_h",
        "NemotronHConfig",
        "NemotronHForCausalLM",
        {
            "layers_block_type": ["linear_attention", "full_attention", "mlp", "full_attention", "moe"],
            "head_dim": 16,
            "mamba_num_heads": 8,
            "mamba_head_dim": 16,
            "n_groups": 1,
            "ssm_state_size": 16,
            "chunk_size": 16,
            "n_routed_experts": 4,
            "num_experts_per_tok": 2,
            "moe_intermediate_size": 32,
            "moe_shared_expert_intermediate_size": 32,
        },
    ),
    "qwen3_5": ("qwen3_5", "Qwen3_5TextConfig", "Qwen3_5ForCausalLM", {"layer_types": _QWEN_HYBRID, **LINEAR_ATTENTION_LAYERS}),
    "qwen3_5_moe": (
        "qwen3_5_moe",
        "Qwen3_5MoeTextConfig",
        "Qwen3_5MoeForCausalLM",
        {"layer_types": _QWEN_HYBRID, **LINEAR_ATTENTION_LAYERS, **_MOE},
    ),
    "qwen3_next": (
        "qwen3_next",
        "Qwen3NextConfig",
        "Qwen3NextForCausalLM",
        {"layer_types": _QWEN_HYBRID, **LINEAR_ATTENTION_LAYERS, **_MOE},
    ),
    "gpt_oss": (
        "gpt_oss",
        "GptOssConfig",
        "GptOssForCausalLM",
        {"num_local_experts": 4, "num_experts_per_tok": 2, "sliding_window": 8, "head_dim": 16},
    ),
    "gemma2": ("gemma2", "Gemma2Config", "Gemma2ForCausalLM", {"head_dim": 16, "sliding_window": 8}),
}
HYBRID_FAMILIES = ("nemotron_h", "qwen3_5", "qwen3_5_moe", "qwen3_next")
EAGER_ONLY = ("gpt_oss", "gemma2")  # transformers refuses sdpa for these (softcap / sinks)
VLM_FAMILIES: dict = {}  # filled by families_vlm.py


def _has(module: str) -> bool:
    try:
        importlib.import_module(f"transformers.models.{module}")
    except ImportError:
        return False
    return True


def available_families() -> list[str]:
    """The families of TEXT_FAMILIES and VLM_FAMILIES this transformers version has."""
    from . import families_vlm  # noqa: F401  (registers the VLM builders)

    return [n for n, spec in {**TEXT_FAMILIES, **VLM_FAMILIES}.items() if _has(spec[0])]


def _text_config(name: str, tokenizer, overrides: dict):
    module, config_name, model_name, family = TEXT_FAMILIES[name]
    mod = importlib.import_module(f"transformers.models.{module}")
    text = text_config(tokenizer, {"num_hidden_layers": 5, "tie_word_embeddings": False, **family})
    text.setdefault("rope_parameters", {"rope_type": "default", "rope_theta": 10000.0})
    text.update(overrides)
    if "layers_block_type" in text:  # NemotronH: the pattern sets the depth
        text.pop("num_hidden_layers")
    return getattr(mod, config_name), getattr(mod, model_name), text


def build_tiny_family(name: str, seed: int = 0, attn_implementation: str | None = None, **overrides):
    """`(model, tokenizer)` of text family `name`, or `(model, inputs)` of VLM family `name` (see module doc).
    `attn_implementation` defaults to sdpa, or eager where transformers has no sdpa path for the family."""
    if attn_implementation is None:
        attn_implementation = "eager" if name in EAGER_ONLY else "sdpa"
    if name in TEXT_FAMILIES:
        tokenizer = build_tokenizer()
        config_cls, model_cls, text = _text_config(name, tokenizer, overrides)
        config = config_cls(**text, dtype="float32", attn_implementation=attn_implementation)
        return seeded_init(model_cls, config, seed), tokenizer
    from .families_vlm import build_tiny_vlm_family

    if name not in VLM_FAMILIES:
        raise ValueError(f"unknown family {name!r}; known: {', '.join([*TEXT_FAMILIES, *VLM_FAMILIES])}")
    return build_tiny_vlm_family(name, seed, attn_implementation, **overrides)


def dummy_inputs(seed: int = 0, batch: int = 2, length: int = 12, pad: int = 2) -> dict:
    """Random token ids (avoiding the special ids 0..6), row 0 left-padded by `pad`."""
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(7, 400, (batch, length), generator=gen)
    mask = torch.ones_like(ids)
    mask[0, :pad] = 0
    return {"input_ids": ids, "attention_mask": mask}
