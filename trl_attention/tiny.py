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

from __future__ import annotations

import json
import random
from collections.abc import Sequence

import torch
from datasets import Dataset
from PIL import Image, ImageDraw
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import (
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2Config,
    Qwen2ForCausalLM,
)
from transformers.models.paddleocr_vl.processing_paddleocr_vl import PaddleOCRVLProcessor
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX as QWEN_PRETOKENIZE_REGEX
from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from .regions import region_token_indices

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

# Ids 0..6 in this order (the BPE trainer assigns special tokens first).
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

# Saturated, mutually distant colours so that "the pixel has the target colour" is an exact check.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 160, 60),
    "blue": (30, 70, 220),
    "yellow": (235, 200, 20),
    "purple": (140, 50, 180),
    "orange": (245, 130, 15),
}
SHAPES = ("square", "circle", "triangle")
BACKGROUND = (245, 245, 245)

SYSTEM_PROMPT = "You are a helpful assistant."

# Qwen2-VL style template. Parts are dispatched on ``type`` only: HF datasets unify the keys of all parts
# (an image part comes back as {"type": "image", "text": None}), so "'text' in part" tests would be wrong.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\n" + SYSTEM_PROMPT + "<|im_end|>\n"
    "{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}"
    "{% endif %}{% endfor %}{% endif %}"
    "<|im_end|>\n"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

_QUESTION_COLOR = "What colour is the {shape}?"
_QUESTION_SHAPE = "What shape is the {color} object?"


def _corpus() -> list[str]:
    """Sentences covering the dataset/chat vocabulary so BPE learns whole-word merges for them."""
    lines = [SYSTEM_PROMPT, "user", "assistant", "system", "The answer is", "Answer with one word."]
    for shape in SHAPES:
        lines += [_QUESTION_COLOR.format(shape=shape), f"It is a {shape}.", shape, shape.capitalize()]
    for color in COLORS:
        lines += [_QUESTION_SHAPE.format(color=color), f"It is {color}.", color, color.capitalize()]
    lines += ["left right top bottom centre center middle corner image object shape colour color"]
    lines += [" ".join(str(i) for i in range(200)), "yes no , . ? ! : ; ( ) [ ] { } \" ' - _ + = / \\ < > @ # $ % & *"]
    # Repeat so that the word-level merges outrank incidental pairs.
    return lines * 4


def build_tokenizer(vocab_size: int = 512) -> PreTrainedTokenizerFast:
    """Byte-level BPE trained in-process (deterministic) with Qwen special tokens and chat template.

    The backend uses exactly Qwen2's normaliser / pre-tokeniser / decoder and is wrapped in
    ``Qwen2Tokenizer`` (a ``PreTrainedTokenizerFast`` subclass): ``AutoTokenizer`` forces that class for
    ``model_type="qwen2"`` checkpoints and would rebuild the pipeline Qwen's way, so matching it is what makes
    save/load round-trip token-for-token. Byte-level over all 256 bytes: any text round-trips.
    Left padding is the default because batched ``generate`` needs it.
    """
    backend = Tokenizer(models.BPE())
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_corpus(), trainer=trainer)
    merges = json.loads(backend.to_str())["model"]["merges"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in merges]
    tok = Qwen2Tokenizer(
        vocab=backend.get_vocab(),
        merges=merges,
        unk_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        extra_special_tokens={
            "image_token": "<|image_pad|>",
            "video_token": "<|video_pad|>",
            "vision_start_token": "<|vision_start|>",
            "vision_end_token": "<|vision_end|>",
        },
        chat_template=CHAT_TEMPLATE,
        padding_side="left",
        model_max_length=4096,
    )
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS], special_tokens=True)
    return tok


def build_processor(tokenizer: PreTrainedTokenizerFast | None = None, max_pixels: int = 224 * 224):
    """PIL Qwen2-VL image processor + tokenizer (see module docstring for why PaddleOCRVLProcessor).

    ``max_pixels`` caps the resized area; the default keeps a 112 px image at 112 px (8x8 patches, 16 tokens).
    """
    tokenizer = tokenizer if tokenizer is not None else build_tokenizer()
    image_processor = Qwen2VLImageProcessorPil(
        min_pixels=28 * 28, max_pixels=max_pixels, patch_size=14, temporal_patch_size=2, merge_size=2
    )
    return PaddleOCRVLProcessor(image_processor=image_processor, tokenizer=tokenizer, chat_template=CHAT_TEMPLATE)


def _mrope_section(head_dim: int) -> list[int]:
    """Split head_dim/2 rotary frequencies into (t, h, w) in Qwen's 1/4, 3/8, 3/8 proportions."""
    half = head_dim // 2
    hw = (3 * half) // 8
    return [half - 2 * hw, hw, hw]


def _text_kwargs(tokenizer, overrides: dict) -> dict:
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


def _seeded_init(model_cls, config, seed: int):
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


def build_tiny_vlm(seed: int = 0, attn_implementation: str = "sdpa", **overrides):
    """Return ``(Qwen2_5_VLForConditionalGeneration, processor)``; ``overrides`` go to the text config."""
    processor = build_processor()
    tok = processor.tokenizer
    text = _text_kwargs(tok, overrides)
    head_dim = text.get("head_dim") or text["hidden_size"] // text["num_attention_heads"]
    text.setdefault("rope_parameters", {"rope_type": "default", "rope_theta": 10000.0})
    text["rope_parameters"] = {**text["rope_parameters"], "mrope_section": _mrope_section(head_dim)}
    vision = dict(
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
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
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
    return _seeded_init(Qwen2_5_VLForConditionalGeneration, config, seed), processor


def build_tiny_lm(seed: int = 0, attn_implementation: str = "sdpa", **overrides):
    """Return ``(Qwen2ForCausalLM, tokenizer)`` with GQA (4 query heads share 2 KV heads by default)."""
    tok = build_tokenizer()
    text = _text_kwargs(tok, overrides)
    text.setdefault("rope_parameters", {"rope_type": "default", "rope_theta": 10000.0})
    config = Qwen2Config(**text, dtype="float32", attn_implementation=attn_implementation)
    return _seeded_init(Qwen2ForCausalLM, config, seed), tok


def build_tiny_qwen_vl(kind: str = "qwen2_vl", seed: int = 0):
    """Return ``(model, inputs)``: a tiny Qwen2-VL (``kind="qwen2_vl"``) or Qwen3-VL (``"qwen3_vl"``) from configs,
    with hand-made inputs (2 rows, one 4-token image each, row 0 left-padded by 2) for the other families' tests."""
    from transformers import (
        Qwen2VLConfig,
        Qwen2VLForConditionalGeneration,
        Qwen3VLConfig,
        Qwen3VLForConditionalGeneration,
    )

    text = {"vocab_size": 64, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 4, "num_key_value_heads": 2, "head_dim": 16, "bos_token_id": 1, "eos_token_id": 2,
            "pad_token_id": 0}  # fmt: skip
    ids = {"image_token_id": 5, "video_token_id": 6, "vision_start_token_id": 3, "vision_end_token_id": 4}
    rope = {"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 3, 3]}
    if kind == "qwen3_vl":
        text["rope_parameters"] = {**rope, "mrope_interleaved": True}
        vision = {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "patch_size": 16,
                  "out_hidden_size": 64, "num_position_embeddings": 64, "deepstack_visual_indexes": [0]}  # fmt: skip
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
    inputs = {"input_ids": input_ids, "attention_mask": mask, "pixel_values": pixel_values,
              "image_grid_thw": torch.tensor([[1, 4, 4], [1, 4, 4]]), "mm_token_type_ids": (input_ids == 5).long()}  # fmt: skip
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


# --------------------------------------------------------------------------- synthetic grounding data


def _draw_shape(draw: ImageDraw.ImageDraw, shape: str, box: Sequence[int], color) -> None:
    """Draw ``shape`` filling ``box`` = [x0, y0, x1, y1) (end-exclusive; PIL wants inclusive corners)."""
    x0, y0, x1, y1 = box
    if shape == "square":
        draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=color)
    elif shape == "circle":
        draw.ellipse([x0, y0, x1 - 1, y1 - 1], fill=color)
    else:  # upward isosceles triangle with its base on the box bottom
        draw.polygon([(x0, y1 - 1), (x1 - 1, y1 - 1), ((x0 + x1 - 1) / 2, y0)], fill=color)


def _place(rng: random.Random, n: int, image_size: int, gap: int = 2) -> list[list[int]]:
    """Rejection-sample ``n`` non-overlapping square boxes (at least ``gap`` px apart)."""
    lo, hi = max(6, round(0.18 * image_size)), max(8, round(0.32 * image_size))
    while True:
        boxes: list[list[int]] = []
        for _ in range(200):
            s = rng.randint(lo, hi)
            x0, y0 = rng.randint(0, image_size - s), rng.randint(0, image_size - s)
            cand = [x0, y0, x0 + s, y0 + s]
            if all(
                cand[0] >= b[2] + gap or b[0] >= cand[2] + gap or cand[1] >= b[3] + gap or b[1] >= cand[3] + gap
                for b in boxes
            ):
                boxes.append(cand)
                if len(boxes) == n:
                    return boxes
        hi = max(lo, hi - 2)  # crowded: retry with smaller shapes


def make_grounding_dataset(n: int, seed: int = 0, image_size: int = 112) -> Dataset:
    """``n`` synthetic grounding examples: 1-3 shapes on a plain background, one target asked about.

    Shapes in an image have distinct colours *and* distinct types, so both question kinds are unambiguous:
    "What colour is the circle?" (answer: colour word) and "What shape is the red object?" (answer: shape).
    ``box`` is [x0, y0, x1, y1] in original-image pixels, end-exclusive (``pixels[y0:y1, x0:x1]``); ``boxes``
    holds the same box in the SAYO convention (per image, a list of boxes) and ``solution`` repeats ``answer``.
    The ``image`` column holds one PIL image per row: TRL 1.16's GRPOTrainer reads ``images`` (a list) or
    ``image`` (wrapped as ``[image]``) and fills the ``{"type": "image"}`` placeholder of ``prompt`` with it.
    """
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        k = rng.randint(1, 3)
        shapes = rng.sample(SHAPES, k)
        colors = rng.sample(sorted(COLORS), k)
        boxes = _place(rng, k, image_size)
        image = Image.new("RGB", (image_size, image_size), BACKGROUND)
        draw = ImageDraw.Draw(image)
        for shape, color, box in zip(shapes, colors, boxes):
            _draw_shape(draw, shape, box, COLORS[color])
        t = rng.randrange(k)
        if rng.random() < 0.5:
            question, answer = _QUESTION_COLOR.format(shape=shapes[t]), colors[t]
        else:
            question, answer = _QUESTION_SHAPE.format(color=colors[t]), shapes[t]
        rows.append(
            {
                "prompt": [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}],
                "image": image,
                "answer": answer,
                "solution": answer,  # the SAYO / accuracy-reward column name
                "box": boxes[t],
                "boxes": [[boxes[t]]],  # per image, a list of boxes (the SAYO dataset convention)
                "target_shape": shapes[t],
                "target_color": colors[t],
            }
        )
    return Dataset.from_list(rows)


def box_to_token_mask(box, image_size, image_grid_thw_row, merge_size: int = 2, patch_size: int = 14) -> torch.Tensor:
    """Bool mask over one image's visual tokens (row-major, repeated per frame): True where the token's cell
    overlaps ``box`` = [x0, y0, x1, y1] (end-exclusive, original pixels of an ``image_size`` image, an int for
    square images). A thin wrapper of `trl_attention.regions.region_token_indices`; ``patch_size`` does not
    change the mapping and is kept for signature compatibility."""
    t, gh, gw = (int(v) for v in image_grid_thw_row)
    size = tuple(int(v) for v in image_size) if isinstance(image_size, (tuple, list)) else (int(image_size),) * 2
    mask = torch.zeros(t * (gh // merge_size) * (gw // merge_size), dtype=torch.bool)
    mask[region_token_indices(box, size, (t, gh, gw), merge_size)] = True
    return mask
