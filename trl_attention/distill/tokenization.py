"""Student and teacher must tokenise identically: `check_same_tokenization` refuses anything else at construction.

Distillation compares the two models position by position on the student's tokens, so the same text must give the
same ids, the same image placeholders and the same image preprocessing (hence the same visual token count).
"""

from __future__ import annotations

import json
import os

from torch import nn

from ..capture import unwrap_model

__all__ = ["TokenizationMismatchError", "check_same_tokenization"]

# Config fields that must agree for the two models to read the same token ids the same way.
_TOKEN_FIELDS = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
_OPTIONAL_TOKEN_FIELDS = ("bos_token_id", "eos_token_id")
_VISION_FIELDS = ("patch_size", "temporal_patch_size", "spatial_merge_size", "in_channels", "in_chans")
# Image processor settings that change the pixels or the visual token count.
_IMAGE_PROCESSOR_FIELDS = (
    "patch_size",
    "temporal_patch_size",
    "merge_size",
    "min_pixels",
    "max_pixels",
    "size",
    "image_mean",
    "image_std",
    "do_normalize",
    "rescale_factor",
    "do_resize",
)


class TokenizationMismatchError(ValueError):
    """Student and teacher do not tokenise (or preprocess images) identically."""


def _field(config, name):
    value = getattr(config, name, None)
    if value is None:
        value = getattr(config.get_text_config(), name, None)
    return value


def _tokenizer_of(processing_class):
    return getattr(processing_class, "tokenizer", processing_class)


def _saved_image_processor(path: str) -> dict | None:
    """Image processor settings saved next to a checkpoint (transformers 4 and 5 layouts), or None."""
    for name, key in (("preprocessor_config.json", None), ("processor_config.json", "image_processor")):
        file = os.path.join(path, name)
        if os.path.isfile(file):
            with open(file) as handle:
                data = json.load(handle)
            data = data.get(key) if key else data
            if isinstance(data, dict):
                return data
    return None


def _compare(what: str, student, teacher) -> None:
    if student != teacher:
        raise TokenizationMismatchError(
            f"student and teacher must tokenise identically, but {what} differs: student {student!r}, teacher "
            f"{teacher!r}. Distillation compares the two models position by position on the student's tokens."
        )


def check_same_tokenization(student: nn.Module, teacher: nn.Module, processing_class=None) -> None:
    """Raise `TokenizationMismatchError` naming the first field where student and teacher would read tokens differently.

    Checks the text vocabulary size, special and image placeholder token ids, the vision tower's patch / merge
    settings (both against each other and against `processing_class`'s image processor), and, when the teacher was
    loaded from a local directory, its saved tokenizer vocabulary and image processor settings.
    """
    student, teacher = unwrap_model(student), unwrap_model(teacher)
    s_cfg, t_cfg = student.config, teacher.config
    _compare(
        "the text vocabulary size (vocab_size)", s_cfg.get_text_config().vocab_size, t_cfg.get_text_config().vocab_size
    )
    for name in _TOKEN_FIELDS:
        _compare(f"config.{name}", _field(s_cfg, name), _field(t_cfg, name))
    for name in _OPTIONAL_TOKEN_FIELDS:
        s_value, t_value = _field(s_cfg, name), _field(t_cfg, name)
        if s_value is not None and t_value is not None:
            _compare(f"config.{name}", s_value, t_value)
    s_vision, t_vision = getattr(s_cfg, "vision_config", None), getattr(t_cfg, "vision_config", None)
    _compare("having a vision tower (config.vision_config)", s_vision is not None, t_vision is not None)
    if s_vision is not None:
        for name in _VISION_FIELDS:
            _compare(f"vision_config.{name}", getattr(s_vision, name, None), getattr(t_vision, name, None))
    image_processor = getattr(processing_class, "image_processor", None)
    if image_processor is not None and s_vision is not None:
        for ours, theirs in (
            ("patch_size", "patch_size"),
            ("merge_size", "spatial_merge_size"),
            ("temporal_patch_size", "temporal_patch_size"),
        ):
            if getattr(image_processor, ours, None) is not None and getattr(s_vision, theirs, None) is not None:
                _compare(
                    f"the image processor's {ours} vs vision_config.{theirs}",
                    getattr(image_processor, ours),
                    getattr(s_vision, theirs),
                )
    path = getattr(t_cfg, "_name_or_path", "") or ""
    if processing_class is not None and os.path.isdir(path):
        _check_saved_teacher_files(path, processing_class)


def _check_saved_teacher_files(path: str, processing_class) -> None:
    from transformers import AutoTokenizer

    if any(os.path.isfile(os.path.join(path, f)) for f in ("tokenizer.json", "tokenizer_config.json")):
        student_vocab = _tokenizer_of(processing_class).get_vocab()
        teacher_vocab = AutoTokenizer.from_pretrained(path).get_vocab()
        if student_vocab != teacher_vocab:
            differing = sorted(set(student_vocab.items()) ^ set(teacher_vocab.items()), key=str)
            raise TokenizationMismatchError(
                f"student and teacher must tokenise identically, but the tokenizer vocabulary saved with the "
                f"teacher ({path}) differs from the student's processing_class: {len(differing)} (token, id) pairs "
                f"differ, e.g. {differing[:3]}."
            )
    saved = _saved_image_processor(path)
    image_processor = getattr(processing_class, "image_processor", None)
    if saved is not None and image_processor is not None:
        ours = image_processor.to_dict()
        for name in _IMAGE_PROCESSOR_FIELDS:
            if name in saved and name in ours:
                s_value, t_value = ours[name], saved[name]
                if isinstance(s_value, tuple | list) or isinstance(t_value, tuple | list):
                    s_value, t_value = list(s_value), list(t_value)
                _compare(f"the image processor setting {name!r} (teacher's saved in {path})", s_value, t_value)
