"""The tiny models: a real Qwen2.5-VL (M-RoPE, window-attention vision tower, 2x2 patch merger) and a Qwen2 LM,
very small and seeded, plus Qwen2-VL / Qwen3-VL from configs for the other families' tests."""

from __future__ import annotations

import torch
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2Config, Qwen2ForCausalLM

from .tokenizer import build_processor, build_tokenizer

__all__ = [
    "CONFIG_TEXT",
    "build_tiny_lm",
    "build_tiny_qwen_vl",
    "build_tiny_vlm",
    "save_tiny_lm",
    "save_tiny_vlm",
    "seeded_init",
    "text_config",
]

CONFIG_TEXT = {
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "pad_token_id": 0,
}
"""The text config of the tiny models built from configs alone, without a tokenizer (`build_tiny_qwen_vl`, the
other VLM families): add a `vocab_size`."""


def _mrope_section(head_dim: int) -> list[int]:
    """Split head_dim/2 rotary frequencies into (t, h, w) in Qwen's 1/4, 3/8, 3/8 proportions."""
    half = head_dim // 2
    hw = (3 * half) // 8
    return [half - 2 * hw, hw, hw]


def text_config(tokenizer, overrides: dict) -> dict:
    """The tiny decoders' text-config kwargs (64 wide, 4 layers, 4 heads / 2 KV heads) for `tokenizer`, with
    `overrides`: the one such dict, shared by the tiny VLM / LM and the other families' builders."""
    text = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        rms_norm_eps=1e-6,
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    text.update(overrides)
    return text


def seeded_init(model_cls, config, seed: int):
    """Initialise under a private RNG state: same seed -> same weights, caller's RNG untouched.

    Built whole even when a ZeRO-3 TrainingArguments is alive (transformers would partition every submodule at
    construction, and its weight init then indexes empty tensors); the DeepSpeed engine partitions it later."""
    from transformers.integrations import deepspeed as hf_deepspeed

    zero3, hf_deepspeed._hf_deepspeed_config_weak_ref = hf_deepspeed._hf_deepspeed_config_weak_ref, None
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = model_cls(config)
    finally:
        hf_deepspeed._hf_deepspeed_config_weak_ref = zero3
    model = model.to(torch.float32).eval()
    gen = model.generation_config
    gen.bos_token_id, gen.eos_token_id, gen.pad_token_id = None, config.eos_token_id, config.pad_token_id
    return model


def build_tiny_vlm(seed: int = 0, attn_implementation: str = "sdpa", vision: dict | None = None, **overrides):
    """Return ``(Qwen2_5_VLForConditionalGeneration, processor)``; ``overrides`` go to the text config, ``vision``
    to the vision tower's (for example a wider tower for a task that needs shape recognition)."""
    processor = build_processor()
    tok = processor.tokenizer
    text = text_config(tok, overrides)
    head_dim = text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]
    text.setdefault("rope_parameters", {"rope_type": "default", "rope_theta": 10000.0})
    text["rope_parameters"] = {**text["rope_parameters"], "mrope_section": _mrope_section(head_dim)}
    tower = dict(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        in_channels=3,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=112,  # 4x4 merged cells per window, i.e. a whole 112 px image
        fullatt_block_indexes=[1],
        tokens_per_second=2,
        out_hidden_size=text["hidden_size"],
    )
    tower.update(vision or {})
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=tower,
        image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
        video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
        vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
        vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"),
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=text["tie_word_embeddings"],
        dtype="float32",
        attn_implementation=attn_implementation,
    )
    return seeded_init(Qwen2_5_VLForConditionalGeneration, config, seed), processor


def build_tiny_lm(seed: int = 0, attn_implementation: str = "sdpa", **overrides):
    """Return ``(Qwen2ForCausalLM, tokenizer)`` with GQA (4 query heads share 2 KV heads by default)."""
    tok = build_tokenizer()
    text = text_config(tok, overrides)
    text.setdefault("rope_parameters", {"rope_type": "default", "rope_theta": 10000.0})
    config = Qwen2Config(**text, dtype="float32", attn_implementation=attn_implementation)
    return seeded_init(Qwen2ForCausalLM, config, seed), tok


def build_tiny_qwen_vl(kind: str = "qwen2_vl", seed: int = 0):
    """Return ``(model, inputs)``: a tiny Qwen2-VL (``kind="qwen2_vl"``) or Qwen3-VL (``"qwen3_vl"``) from configs,
    with hand-made inputs (2 rows, one 4-token image each, row 0 left-padded by 2) for the other families' tests."""
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
    )

    text = {**CONFIG_TEXT, "vocab_size": 64}
    ids = {"image_token_id": 5, "video_token_id": 6, "vision_start_token_id": 3, "vision_end_token_id": 4}
    rope = {"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 3, 3]}
    if kind == "qwen3_vl":
        text["rope_parameters"] = {**rope, "mrope_interleaved": True}
        vision = {
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "patch_size": 16,
            "out_hidden_size": 64,
            "num_position_embeddings": 64,
            "deepstack_visual_indexes": [0],
        }
        cls, config, patch = Qwen3VLForConditionalGeneration, Qwen3VLConfig, 16
    elif kind == "qwen2_vl":
        text["rope_parameters"] = rope
        vision = {"depth": 2, "embed_dim": 32, "hidden_size": 64, "num_heads": 2, "patch_size": 14}
        cls, config, patch = Qwen2VLForConditionalGeneration, Qwen2VLConfig, 14
    else:
        raise ValueError(f"kind must be 'qwen2_vl' or 'qwen3_vl', got {kind!r}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(config(text_config=text, vision_config=vision, **ids)).eval()
        pixel_values = torch.randn(32, 3 * 2 * patch * patch)
    input_ids = torch.tensor(
        [[0, 0, 10, 11, 3, 5, 5, 5, 5, 4, 12, 13, 14], [20, 21, 22, 23, 3, 5, 5, 5, 5, 4, 12, 13, 15]]
    )
    mask = torch.ones_like(input_ids)
    mask[0, :2] = 0
    inputs = {
        "input_ids": input_ids,
        "attention_mask": mask,
        "pixel_values": pixel_values,
        "image_grid_thw": torch.tensor([[1, 4, 4], [1, 4, 4]]),
        "mm_token_type_ids": (input_ids == 5).long(),
    }
    return model, inputs


def save_tiny_vlm(path, seed: int = 0) -> str:
    """Save a tiny VLM + processor loadable with AutoModelForImageTextToText / AutoProcessor."""
    model, processor = build_tiny_vlm(seed=seed)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return str(path)


def save_tiny_lm(path, seed: int = 0) -> str:
    """Save a tiny LM + tokenizer loadable with AutoModelForCausalLM / AutoTokenizer."""
    model, tok = build_tiny_lm(seed=seed)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)
