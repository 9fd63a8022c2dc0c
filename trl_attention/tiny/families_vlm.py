"""The tiny VLMs of `families.py`: Gemma3, LLaVA, InternVL, Idefics3, SmolVLM and Qwen3.5-VL from their config
classes, each with a 4-token image (its vision tower's output for one 56 px / 64 px image) and hand-made inputs."""

from __future__ import annotations

import importlib

import torch

from .families import _LINEAR, IMAGE_TOKEN_ID, VLM_FAMILIES

__all__ = ["build_tiny_vlm_family"]

_TEXT = {
    "vocab_size": 445,
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
_VISION = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
_SIGLIP = {**_VISION, "image_size": 56, "patch_size": 14}
_QWEN_VISION = {
    "depth": 1,
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_heads": 2,
    "patch_size": 16,
    "out_hidden_size": 64,
    "num_position_embeddings": 64,
}

# name: (transformers module, config class, model class, config kwargs, pixel layout)
VLM_FAMILIES.update(
    {
        "gemma3": (
            "gemma3",
            "Gemma3Config",
            "Gemma3ForConditionalGeneration",
            {
                "text_config": {**_TEXT, "sliding_window": 8, "query_pre_attn_scalar": 16},
                "vision_config": _SIGLIP,
                "mm_tokens_per_image": 4,
                "image_token_index": IMAGE_TOKEN_ID,
                "boi_token_index": 3,
                "eoi_token_index": 4,
            },
            "image",
        ),
        "llava": (
            "llava",
            "LlavaConfig",
            "LlavaForConditionalGeneration",
            {
                "text_config": {"model_type": "llama", **_TEXT},
                "vision_config": {"model_type": "clip_vision_model", **_VISION, "image_size": 28, "patch_size": 14},
                "image_token_index": IMAGE_TOKEN_ID,
                "image_seq_length": 4,
                "vision_feature_layer": -1,
                "projection_dim": 64,
            },
            "image",
        ),
        "internvl": (
            "internvl",
            "InternVLConfig",
            "InternVLForConditionalGeneration",
            {
                "text_config": {"model_type": "qwen2", **_TEXT},
                "vision_config": {**_SIGLIP, "patch_size": [14, 14], "image_size": [56, 56]},
                "image_token_id": IMAGE_TOKEN_ID,
                "image_seq_length": 4,
            },
            "image",
        ),
        "idefics3": (
            "idefics3",
            "Idefics3Config",
            "Idefics3ForConditionalGeneration",
            {"text_config": {"model_type": "llama", **_TEXT}, "vision_config": _SIGLIP, "scale_factor": 2},
            "tiles",
        ),
        "smolvlm": (
            "smolvlm",
            "SmolVLMConfig",
            "SmolVLMForConditionalGeneration",
            {"text_config": {"model_type": "llama", **_TEXT}, "vision_config": _SIGLIP, "scale_factor": 2},
            "tiles",
        ),
        "qwen3_5_vl": (
            "qwen3_5",
            "Qwen3_5Config",
            "Qwen3_5ForConditionalGeneration",
            {
                "text_config": {
                    **_TEXT,
                    **_LINEAR,
                    "num_hidden_layers": 3,
                    "layer_types": ["linear_attention", "full_attention", "linear_attention"],
                    "rope_parameters": {
                        "rope_type": "default",
                        "rope_theta": 1e4,
                        "mrope_section": [2, 3, 3],
                        "mrope_interleaved": True,
                        "partial_rotary_factor": 1.0,
                    },
                },
                "vision_config": _QWEN_VISION,
                "image_token_id": IMAGE_TOKEN_ID,
                "video_token_id": 6,
                "vision_start_token_id": 3,
                "vision_end_token_id": 4,
            },
            "grid",
        ),
    }
)


def build_tiny_vlm_family(name: str, seed: int = 0, attn_implementation: str = "sdpa", **overrides):
    """`(model, inputs)`: 2 rows `[pad pad | text | start image x4 end | text]` (row 0 left-padded by 2)."""
    module, config_name, model_name, kwargs, layout = VLM_FAMILIES[name]
    mod = importlib.import_module(f"transformers.models.{module}")
    kwargs = {**kwargs, **overrides}
    if "image_token_id" not in kwargs and "image_token_index" not in kwargs:
        kwargs["image_token_id"] = IMAGE_TOKEN_ID
    config = getattr(mod, config_name)(**kwargs, attn_implementation=attn_implementation)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = getattr(mod, model_name)(config).to(torch.float32).eval()
        if layout == "grid":  # Qwen-style: flattened patches of a 1 x 4 x 4 grid, merged 2 x 2 -> 4 tokens
            pixels = torch.randn(32, 3 * 2 * 16 * 16)
        elif layout == "tiles":  # Idefics3 / SmolVLM: (batch, images, C, H, W)
            pixels = torch.randn(2, 1, 3, 56, 56)
        else:
            size = kwargs["vision_config"]["image_size"]
            size = size[0] if isinstance(size, list) else size
            pixels = torch.randn(2, 3, size, size)
    image = [IMAGE_TOKEN_ID] * 4
    input_ids = torch.tensor([[0, 0, 10, 11, 3, *image, 4, 12, 13, 14], [20, 21, 22, 23, 3, *image, 4, 12, 13, 15]])
    mask = torch.ones_like(input_ids)
    mask[0, :2] = 0
    inputs = {"input_ids": input_ids, "attention_mask": mask, "pixel_values": pixels}
    if layout == "grid":
        inputs["image_grid_thw"] = torch.tensor([[1, 4, 4], [1, 4, 4]])
        inputs["mm_token_type_ids"] = (input_ids == IMAGE_TOKEN_ID).long()
    if name == "gemma3":
        inputs["token_type_ids"] = (input_ids == IMAGE_TOKEN_ID).long()
    return model, inputs
