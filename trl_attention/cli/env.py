"""`trl-attention env`: the versions and hardware a bug report needs, and which capture backend will run."""

from __future__ import annotations

import importlib.metadata
import json
import platform
import sys

__all__ = ["environment", "register"]

PACKAGES = ("trl_attention", "torch", "transformers", "trl", "accelerate", "peft", "datasets", "deepspeed", "triton")


def _version(package: str) -> str:
    try:
        return importlib.metadata.version(package.replace("_", "-"))
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def environment() -> dict:
    """{name: value} for `trl-attention env` (strings, so it prints and serialises as is)."""
    import torch

    from ..ops.attention_rows import resolve_backend

    info = {"python": sys.version.split()[0], "platform": platform.platform()}
    info.update({name: _version(name) for name in PACKAGES})
    cuda = torch.cuda.is_available()
    info["cuda available"] = str(cuda)
    info["cuda (torch build)"] = str(torch.version.cuda)
    if cuda:
        info["gpus"] = ", ".join(torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count()))
    device = "cuda" if cuda else "cpu"
    backend = resolve_backend("auto", device)
    why = "fused Triton kernel" if backend == "triton" else "torch reference (Triton runs on CUDA only)"
    if cuda and backend == "torch":
        why = "torch reference: triton is unavailable (pip install 'trl-attention[triton]')"
    info["capture backend (auto)"] = f"{backend} on {device}: {why}"
    return info


def register(commands, command):
    """The `env` subcommand."""
    parser = commands.add_parser(command.name, help=command.help)
    parser.add_argument("--json", action="store_true", help="Print a JSON object instead of a list.")

    def handler(args) -> int:
        info = environment()
        if args.json:
            print(json.dumps(info, indent=1))
        else:
            print("Copy-and-paste the text below in your GitHub issue.\n")
            print("\n".join(f"- {key}: {value}" for key, value in info.items()))
        return 0

    return handler
