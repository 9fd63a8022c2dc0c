"""The one model loader: students, teachers, the CLI, the examples and VRGA all load through here."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # importing this module stays cheap: the CLI's --help checks paths without torch
    from torch import nn

__all__ = ["check_local_path", "load_model_and_processor", "load_pretrained", "looks_local"]


def looks_local(name: str) -> bool:
    """Whether `name` is meant as a local path rather than a hub id: absolute, `./`, `../`, `~`, or its parent
    directory exists (`outputs/run-1` next to an `outputs/` directory)."""
    path = Path(name).expanduser()
    if path.is_absolute() or name.startswith(("./", "../", "~", ".\\", "..\\")) or name in (".", ".."):
        return True
    return str(path.parent) not in ("", ".") and path.parent.is_dir()


def check_local_path(option: str, name) -> None:
    """A ValueError naming `option` when `name` is a local-looking path (`looks_local`) that does not exist, instead
    of transformers' "Repo id must be in the form ..." (it would be read as a hub id)."""
    if isinstance(name, (str, os.PathLike)) and looks_local(os.fspath(name)):
        if not os.path.exists(Path(os.fspath(name)).expanduser()):
            raise ValueError(f"{option}={os.fspath(name)!r}: no such local path (a hub id has the form org/name)")


def load_pretrained(name: str, **kwargs) -> nn.Module:
    """`from_pretrained` with the right auto class: image-text-to-text when the config has a `vision_config`, else
    causal LM (the students, teachers and CLI models all load through here)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForImageTextToText

    check_local_path("model", name)

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
