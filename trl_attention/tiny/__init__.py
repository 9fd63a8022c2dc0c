"""Tiny, offline, seeded Qwen-style models, tokenizer, processor and a synthetic grounding dataset.

Everything here is built in-process (no hub downloads) so tests and smoke runs take seconds on CPU.
The VLM is a real ``Qwen2_5_VLForConditionalGeneration`` (M-RoPE, window-attention vision tower, 2x2 patch
merger), just very small, so code paths exercised here are the same as for the full-size checkpoints.

Processor note: ``Qwen2_5_VLProcessor`` needs a video processor, and every transformers video processor is
torchvision-backed (``AutoVideoProcessor`` is a dummy that raises ImportError without torchvision), so neither
building nor ``AutoProcessor.from_pretrained`` of a Qwen2.5-VL processor works here. We use
``PaddleOCRVLProcessor`` instead: a stock transformers processor with only ``image_processor`` + ``tokenizer``
whose placeholder expansion is identical to Qwen's (``<|image_pad|>`` repeated ``prod(grid_thw) // merge**2``
times) and which also returns ``mm_token_type_ids`` (needed by Qwen2.5-VL's M-RoPE). Its name is what
``save_pretrained`` writes as ``processor_class``, so ``AutoProcessor`` loads it back without a video processor.
"""

from .data import BACKGROUND, COLORS, SHAPES, box_to_token_mask, make_grounding_dataset
from .models import build_tiny_lm, build_tiny_qwen_vl, build_tiny_vlm, save_tiny_lm, save_tiny_vlm
from .tokenizer import CHAT_TEMPLATE, SPECIAL_TOKENS, build_processor, build_tokenizer

__all__ = [
    "BACKGROUND",
    "CHAT_TEMPLATE",
    "COLORS",
    "SHAPES",
    "SPECIAL_TOKENS",
    "box_to_token_mask",
    "build_processor",
    "build_tiny_lm",
    "build_tiny_qwen_vl",
    "build_tiny_vlm",
    "build_tokenizer",
    "make_grounding_dataset",
    "save_tiny_lm",
    "save_tiny_vlm",
]
