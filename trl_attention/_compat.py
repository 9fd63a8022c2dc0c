"""Module paths from before the one-package-per-method layout (0.1) keep importing, with a FutureWarning.

`trl_attention.gkd` is `trl_attention.distill`, `trl_attention.cli_grpo` is `trl_attention.cli.grpo`, and so on:
the old name is an alias of the new module object, so classes and functions are the same objects either way.
Names that moved out of a module that still exists (`trl_attention.rewards.RegionAttentionReward`) resolve
through `moved_names`.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

__all__ = ["MOVED_MODULES", "MOVED_NAMES", "moved_names"]

MOVED_MODULES = {
    "trl_attention.gkd": "trl_attention.distill",
    "trl_attention.vision_collator": "trl_attention.distill.collator",
    "trl_attention.scoring": "trl_attention.ral.scoring",
    "trl_attention.regions": "trl_attention.sayo.regions",
    "trl_attention.cli_grpo": "trl_attention.cli.grpo",
    "trl_attention.cli_gkd": "trl_attention.cli.gkd",
    "trl_attention.cli_data": "trl_attention.cli.data",
    "trl_attention.cli_config": "trl_attention.cli.training",
    "trl_attention.cli_env": "trl_attention.cli.env",
    "trl_attention.vrga.cli": "trl_attention.cli.vrga",
}
MOVED_NAMES = {
    "trl_attention.rewards": {
        name: "trl_attention.sayo"
        for name in (
            "AttentionReward",
            "CompletionAttention",
            "RegionAttentionReward",
            "attention_reward",
            "format_reward",
            "make_format_reward",
            "region_attention_score",
        )
    },
    "trl_attention.recipes": {"load_model_and_processor": "trl_attention.loading"},
}


def _warn(old: str, new: str) -> None:
    warnings.warn(f"{old} moved to {new}; the old path will be removed in a future release", FutureWarning, 3)


class _AliasFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Import an old module path as the new module object."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname in MOVED_MODULES:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        _warn(spec.name, MOVED_MODULES[spec.name])
        return importlib.import_module(MOVED_MODULES[spec.name])

    def exec_module(self, module) -> None:  # the new module is already executed
        pass


def moved_names(module: str):
    """A module `__getattr__` resolving the names that moved out of `module`."""
    moved = MOVED_NAMES[module]

    def __getattr__(name: str):
        if name not in moved:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        _warn(f"{module}.{name}", f"{moved[name]}.{name}")
        return getattr(importlib.import_module(moved[name]), name)

    return __getattr__


if not any(isinstance(finder, _AliasFinder) for finder in sys.meta_path):
    sys.meta_path.append(_AliasFinder())
