"""The tiny VLMs of `families.py`: Gemma3, Gemma4, LLaVA, LLaVA-OneVision, InternVL, Idefics3, SmolVLM, Qwen2-VL,
Qwen3-VL and Qwen3.5-VL from their config classes, with hand-made inputs: one image per row, 4 image tokens (its vision tower's
output for one 28 / 56 / 64 px image) but for LLaVA-OneVision's anyres image (10 tokens: `IMAGE_TOKENS`)."""

from __future__ import annotations

import importlib

import torch

from trl_attention.tiny.models import CONFIG_TEXT

from .families import IMAGE_TOKEN_ID, LINEAR_ATTENTION_LAYERS, VLM_FAMILIES

__all__ = ["IMAGE_TOKENS", "build_tiny_llava_processor", "build_tiny_vlm_family"]

_TEXT = {**CONFIG_TEXT, "vocab_size": 445}
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

_MROPE = {"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 3, 3]}
_QWEN_IDS = {"image_token_id": IMAGE_TOKEN_ID, "video_token_id": 6, "vision_start_token_id": 3, "vision_end_token_id": 4}

_SIGLIP_28 = {**_VISION, "image_size": 28, "patch_size": 14}
# Gemma4's vision tower: 16 px patches, pooled 2 x 2 -> one 64 px image of 4 x 4 patches = 4 tokens.
_GEMMA4_VISION = {**_VISION, "num_key_value_heads": 2, "head_dim": 16, "patch_size": 16, "pooling_kernel_size": 2}
_GEMMA4_VISION["position_embedding_size"] = 64
# LLaVA-OneVision anyres: a 28 px image is a base crop + one tile of 2 x 2 patches; the tile's grid gets one newline
# token per row: 4 + 2 * (2 + 1) = 10 image tokens.
_ANYRES_PINPOINTS = [[28, 28], [28, 56], [56, 28], [56, 56]]
IMAGE_TOKENS = {"llava_onevision": 10}  # image tokens per row where not 4

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
        "gemma4": (
            "gemma4",
            "Gemma4Config",
            "Gemma4ForConditionalGeneration",
            {
                "text_config": {
                    **_TEXT,
                    "layer_types": ["sliding_attention", "full_attention"],
                    "sliding_window": 8,
                    "global_head_dim": 16,  # the full-attention layers' head_dim (512 by default)
                    "vocab_size_per_layer_input": _TEXT["vocab_size"],
                    "hidden_size_per_layer_input": 16,
                    "use_bidirectional_attention": "vision",  # image tokens attend to each other (the 26B / 31B)
                },
                "vision_config": _GEMMA4_VISION,
                "image_token_id": IMAGE_TOKEN_ID,
                "video_token_id": 6,
                "boi_token_id": 3,
                "eoi_token_id": 4,
            },
            "patches",
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
        "llava_onevision": (
            "llava_onevision",
            "LlavaOnevisionConfig",
            "LlavaOnevisionForConditionalGeneration",
            {
                "text_config": {"model_type": "qwen2", **_TEXT},
                "vision_config": {"model_type": "siglip_vision_model", **_SIGLIP_28, "vision_use_head": False},
                "image_token_index": IMAGE_TOKEN_ID,
                "video_token_index": 6,
                "image_grid_pinpoints": _ANYRES_PINPOINTS,
            },
            "anyres",
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
        "qwen2_vl": (
            "qwen2_vl",
            "Qwen2VLConfig",
            "Qwen2VLForConditionalGeneration",
            {
                "text_config": {**_TEXT, "rope_parameters": _MROPE},
                "vision_config": {"depth": 1, "embed_dim": 32, "hidden_size": 64, "num_heads": 2, "patch_size": 14},
                **_QWEN_IDS,
            },
            "grid14",
        ),
        "qwen3_vl": (
            "qwen3_vl",
            "Qwen3VLConfig",
            "Qwen3VLForConditionalGeneration",
            {
                "text_config": {**_TEXT, "rope_parameters": {**_MROPE, "mrope_interleaved": True}},
                "vision_config": {**_QWEN_VISION, "deepstack_visual_indexes": [0]},
                **_QWEN_IDS,
            },
            "grid",
        ),
        "qwen3_5_vl": (
            "qwen3_5",
            "Qwen3_5Config",
            "Qwen3_5ForConditionalGeneration",
            {
                "text_config": {
                    **_TEXT,
                    **LINEAR_ATTENTION_LAYERS,
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


def _pixels(layout: str, kwargs: dict) -> dict:
    """The image tensors of 2 rows with one image each, in the layout the family's processor returns."""
    if layout in ("grid", "grid14"):  # Qwen-style: flattened patches of a 1 x 4 x 4 grid, merged 2 x 2 -> 4 tokens
        patch = 14 if layout == "grid14" else 16  # Qwen2-VL's 14 px patches, Qwen3(.5)-VL's 16
        return {"pixel_values": torch.randn(32, 3 * 2 * patch * patch), "image_grid_thw": torch.tensor([[1, 4, 4]] * 2)}
    if layout == "tiles":  # Idefics3 / SmolVLM: (batch, images, C, H, W)
        return {"pixel_values": torch.randn(2, 1, 3, 56, 56)}
    if layout == "patches":  # Gemma4: (images, patches, 3 * 16 * 16) in [0, 1], (x, y) of each patch
        x, y = torch.meshgrid(torch.arange(4), torch.arange(4), indexing="xy")
        positions = torch.stack([x, y], -1).reshape(16, 2)
        return {"pixel_values": torch.rand(2, 16, 3 * 16 * 16), "image_position_ids": positions.repeat(2, 1, 1)}
    if layout == "anyres":  # LLaVA-OneVision: (batch, base + tiles, C, H, W), (H, W) of the original images
        return {"pixel_values": torch.randn(2, 2, 3, 28, 28), "image_sizes": torch.tensor([[28, 28]] * 2)}
    size = kwargs["vision_config"]["image_size"]
    size = size[0] if isinstance(size, list) else size
    return {"pixel_values": torch.randn(2, 3, size, size)}


def build_tiny_vlm_family(name: str, seed: int = 0, attn_implementation: str = "sdpa", **overrides):
    """`(model, inputs)`: 2 rows `[pad pad | text | start image end | text]` (row 0 left-padded by 2), the image
    `IMAGE_TOKENS.get(name, 4)` placeholders."""
    module, config_name, model_name, kwargs, layout = VLM_FAMILIES[name]
    mod = importlib.import_module(f"transformers.models.{module}")
    kwargs = {**kwargs, **overrides}
    if "image_token_id" not in kwargs and "image_token_index" not in kwargs:
        kwargs["image_token_id"] = IMAGE_TOKEN_ID
    config = getattr(mod, config_name)(**kwargs, attn_implementation=attn_implementation)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = getattr(mod, model_name)(config).to(torch.float32).eval()
        pixels = _pixels(layout, kwargs)
    image = [IMAGE_TOKEN_ID] * IMAGE_TOKENS.get(name, 4)
    input_ids = torch.tensor([[0, 0, 10, 11, 3, *image, 4, 12, 13, 14], [20, 21, 22, 23, 3, *image, 4, 12, 13, 15]])
    mask = torch.ones_like(input_ids)
    mask[0, :2] = 0
    inputs = {"input_ids": input_ids, "attention_mask": mask, **pixels}
    if layout in ("grid", "grid14", "patches"):  # Qwen's M-RoPE / Gemma4's bidirectional image blocks read the token types
        inputs["mm_token_type_ids"] = (input_ids == IMAGE_TOKEN_ID).long()
    if name == "gemma3":
        inputs["token_type_ids"] = (input_ids == IMAGE_TOKEN_ID).long()
    return model, inputs


def build_tiny_llava_processor(crop: bool = True):
    """A real `LlavaProcessor` for the tiny LLaVA (28 px images, 2 x 2 patch tokens) over the tiny tokenizer, its
    chat template and `<|image_pad|>`: resize the shortest edge to 28, then (`crop`) center-crop 28 x 28, as the
    llava-hf checkpoints' CLIP image processors do."""
    from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil
    from transformers.models.llava.processing_llava import LlavaProcessor

    from trl_attention.tiny.tokenizer import CHAT_TEMPLATE, build_tokenizer

    size = {"shortest_edge": 28} if crop else {"height": 28, "width": 28}
    images = LlavaImageProcessorPil(size=size, crop_size={"height": 28, "width": 28}, do_center_crop=crop)
    return LlavaProcessor(
        image_processor=images,
        tokenizer=build_tokenizer(),
        patch_size=14,
        vision_feature_select_strategy="default",
        chat_template=CHAT_TEMPLATE,
        image_token="<|image_pad|>",
        num_additional_image_tokens=1,  # CLIP's CLS, which the "default" strategy drops
    )
