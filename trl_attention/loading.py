"""The one model loader: students, teachers, the CLI, the examples and VRGA all load through here."""

from __future__ import annotations

from torch import nn

__all__ = ["load_model_and_processor", "load_pretrained"]


def load_pretrained(name: str, **kwargs) -> nn.Module:
    """`from_pretrained` with the right auto class: image-text-to-text when the config has a `vision_config`, else
    causal LM (the students, teachers and CLI models all load through here)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(
        name, trust_remote_code=kwargs.get("trust_remote_code", False), revision=kwargs.get("revision")
    )
    auto = AutoModelForImageTextToText if getattr(config, "vision_config", None) is not None else AutoModelForCausalLM
    return auto.from_pretrained(name, **kwargs)


def load_model_and_processor(
    name: str, dtype: str | None = None, attn_implementation: str | None = None, revision: str | None = None
):
    """A VLM (or a causal LM) and its processor (or tokenizer), left-padded for generation; `sdpa` by default
    (the capture wraps any kernel; VRGA steers sdpa and eager only)."""
    from transformers import AutoProcessor, AutoTokenizer

    kwargs = {"dtype": dtype or "auto", "attn_implementation": attn_implementation or "sdpa", "revision": revision}
    model = load_pretrained(name, **kwargs)
    loader = AutoProcessor if getattr(model.config, "vision_config", None) is not None else AutoTokenizer
    return model, loader.from_pretrained(name, padding_side="left", revision=revision)
