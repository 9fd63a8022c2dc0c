"""Teacher side of on-policy attention distillation, shared by `AttentionGKDTrainer` (gkd.py) and the teacher term
of `AttentionGRPOTrainer` (ral.py). PAPERS.md section 1, "On-policy attention distillation".

Student and teacher may differ in depth, width and head count: both captures are head-averaged (B, C, T) rows over
the same tokens, so they compare position by position. They must tokenise identically (same ids for the same text,
same image placeholders, same image preprocessing): `check_same_tokenization` refuses anything else at construction.
"""

from __future__ import annotations

import contextlib
import json
import os

import torch
from torch import nn
from trl.models import prepare_deepspeed, prepare_fsdp
from trl.trainer.utils import disable_dropout_in_model

from .capture import unwrap_model
from .losses import attention_policy, jsd

__all__ = [
    "TokenizationMismatchError",
    "attention_distill_per_token",
    "backbone_hidden_states",
    "check_same_tokenization",
    "extra_forward_kwargs",
    "load_pretrained",
    "load_teacher",
    "prepare_teacher",
    "token_generalized_jsd",
]

# Config fields that must agree for the two models to read the same token ids the same way.
_TOKEN_FIELDS = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id")
_OPTIONAL_TOKEN_FIELDS = ("bos_token_id", "eos_token_id")
_VISION_FIELDS = ("patch_size", "temporal_patch_size", "spatial_merge_size", "in_channels", "in_chans")
# Image processor settings that change the pixels or the visual token count.
_IMAGE_PROCESSOR_FIELDS = (
    "patch_size", "temporal_patch_size", "merge_size", "min_pixels", "max_pixels", "size", "image_mean", "image_std",
    "do_normalize", "rescale_factor", "do_resize",
)  # fmt: skip


class TokenizationMismatchError(ValueError):
    """Student and teacher do not tokenise (or preprocess images) identically."""


def load_pretrained(name: str, **kwargs) -> nn.Module:
    """`from_pretrained` with the right auto class: image-text-to-text when the config has a `vision_config`, else
    causal LM (the students, teachers and CLI models all load through here)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(
        name, trust_remote_code=kwargs.get("trust_remote_code", False), revision=kwargs.get("revision")
    )
    auto = AutoModelForImageTextToText if getattr(config, "vision_config", None) is not None else AutoModelForCausalLM
    return auto.from_pretrained(name, **kwargs)


def load_teacher(teacher: str, init_kwargs: dict | None = None, trust_remote_code: bool = False) -> nn.Module:
    """Load a teacher from a path or hub id with `teacher_model_init_kwargs` (a string dtype becomes torch's)."""
    kwargs = dict(init_kwargs or {})
    dtype = kwargs.get("dtype")
    if isinstance(dtype, str) and dtype != "auto":
        kwargs["dtype"] = getattr(torch, dtype)
    kwargs.setdefault("trust_remote_code", trust_remote_code)
    return load_pretrained(teacher, **kwargs)


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
    _compare("the text vocabulary size (vocab_size)", s_cfg.get_text_config().vocab_size,
             t_cfg.get_text_config().vocab_size)  # fmt: skip
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
        for ours, theirs in (("patch_size", "patch_size"), ("merge_size", "spatial_merge_size"),
                             ("temporal_patch_size", "temporal_patch_size")):  # fmt: skip
            if getattr(image_processor, ours, None) is not None and getattr(s_vision, theirs, None) is not None:
                _compare(f"the image processor's {ours} vs vision_config.{theirs}",
                         getattr(image_processor, ours), getattr(s_vision, theirs))  # fmt: skip
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


def prepare_teacher(teacher: nn.Module, trainer) -> nn.Module:
    """Prepare a frozen teacher the way TRL prepares reference models: ZeRO-3 sharded under DeepSpeed stage 3, FSDP
    wrapped under FSDP, else placed by accelerate for evaluation. Dropout off, no gradients."""
    if getattr(trainer.args, "disable_dropout", False):
        disable_dropout_in_model(teacher)
    teacher.eval().requires_grad_(False)
    if trainer.is_deepspeed_enabled:
        return prepare_deepspeed(teacher, trainer.accelerator)
    if trainer.is_fsdp_enabled:
        return prepare_fsdp(teacher, trainer.accelerator)
    return trainer.accelerator.prepare_model(teacher, evaluation_mode=True)


def attention_distill_per_token(student_probs: torch.Tensor, teacher_probs: torch.Tensor) -> torch.Tensor:
    """(B, C) JSD(p_student^t || p_teacher^t) of the RAL attention policies of two (B, C, T) captures."""
    if student_probs.shape != teacher_probs.shape:
        raise RuntimeError(
            f"student and teacher attention captures differ in shape: {tuple(student_probs.shape)} vs "
            f"{tuple(teacher_probs.shape)}; both models must see the same tokens"
        )
    return jsd(attention_policy(student_probs), attention_policy(teacher_probs.to(student_probs.device)).detach())


@contextlib.contextmanager
def extra_forward_kwargs(module: nn.Module, extras: dict):
    """Add keyword arguments (pixel_values, image_grid_thw, ...) to every forward call of `module` in the block, for
    TRL code paths that call `model(input_ids=..., attention_mask=...)` only."""
    if not extras:
        yield
        return

    def hook(_module, args, kwargs):
        return args, {**extras, **kwargs}

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def token_generalized_jsd(student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float) -> torch.Tensor:
    """(B, C) per-token generalized JSD of GKD (TRL's own `GKDTrainer.generalized_jsd_loss`, summed over the
    vocabulary), so the GRPO teacher term is exactly GKD's token loss on the rollouts."""
    import warnings

    with warnings.catch_warnings():  # the experimental-API notice; the pins in pyproject.toml cover it
        warnings.simplefilter("ignore")
        from trl.experimental.gkd import GKDTrainer

    return GKDTrainer.generalized_jsd_loss(student_logits, teacher_logits, beta=beta, reduction="none").sum(-1)


@contextlib.contextmanager
def backbone_hidden_states(model: nn.Module):
    """Collect the final hidden states (B, T, H) of the model's backbone in the block, with their graph.

    TRL's fused LM head never materialises the policy's logits; the teacher term needs them over the completion,
    so it projects these hidden states with the model's own output embedding instead of running a second forward.
    """
    records: list[torch.Tensor] = []
    base = unwrap_model(model)
    backbone = base.base_model if base.base_model is not base else base

    def hook(_module, _args, output):
        hidden = getattr(output, "last_hidden_state", None)
        records.append(output[0] if hidden is None else hidden)

    handle = backbone.register_forward_hook(hook)
    try:
        yield records
    finally:
        handle.remove()
