"""The tiny models' tokenizer (byte-level BPE trained in-process, Qwen special tokens and chat template) and
processor (see the package docstring for why PaddleOCRVLProcessor)."""

from __future__ import annotations

import json

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast
from transformers.models.paddleocr_vl.processing_paddleocr_vl import PaddleOCRVLProcessor
from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX as QWEN_PRETOKENIZE_REGEX
from transformers.models.qwen2.tokenization_qwen2 import Qwen2Tokenizer
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

from .data import _QUESTION_COLOR, _QUESTION_SHAPE, COLORS, SHAPES

__all__ = ["CHAT_TEMPLATE", "SPECIAL_TOKENS", "SYSTEM_PROMPT", "build_processor", "build_tokenizer"]

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
