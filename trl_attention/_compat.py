"""Module paths and names of release 0.1.0 that moved in 0.2.0, kept importing for one release with a
`DeprecationWarning` naming the new path (listed in CHANGELOG.md, "Deprecated").

Three kinds of move:
- `MOVED_MODULES`: the module moved whole; the old path is an alias of the new module object, so classes and
  functions are the same objects either way (`trl_attention.layouts` is `trl_attention.visual.layouts`).
- `SPLIT_MODULES`: the module is gone and its names live in several modules; the old path is a module whose
  attributes resolve to the new homes.
- `MOVED_NAMES`: names left a module that still exists (`trl_attention.sayo.clip_box`); the module's
  `__getattr__` resolves them (`lazy_exports(..., moved=...)` or `moved_names`).
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import types
import warnings

__all__ = ["MOVED_MODULES", "MOVED_NAMES", "SPLIT_MODULES", "moved_names"]

REMOVED_IN = "0.3.0"

MOVED_MODULES = {
    "trl_attention.layouts": "trl_attention.visual.layouts",
    "trl_attention.recipes": "trl_attention.cli.recipes",
    "trl_attention.ops.attention_rows_kernels": "trl_attention.ops.attention_rows_triton",
    "trl_attention.ops.attention_rows_tiles": "trl_attention.ops.attention_rows_triton",
    # recipes: the library never imports them; these aliases only resolve an old path a user imports
    "trl_attention.demo": "trl_attention_recipes.demo",
    "trl_attention.cli.demo": "trl_attention_recipes.demo_command",
    "trl_attention.evaluation": "trl_attention_recipes.evaluation",
    "trl_attention.memory": "trl_attention_recipes.memory",
    "trl_attention.tiny.families": "trl_attention_recipes.families",
    "trl_attention.tiny.families_vlm": "trl_attention_recipes.families_vlm",
    "trl_attention.sayo.regions": "trl_attention.visual.regions",
}
SPLIT_MODULES = {
    "trl_attention.sayo.checks": {
        **dict.fromkeys(
            ("FALLBACK_MAX_ASPECT_RATIO", "box_lists", "check_aspect_ratio", "image_processor_of", "open_image"),
            "trl_attention.visual.checks",
        ),
        **dict.fromkeys(
            ("VIDEO_COLUMNS", "first_rows", "first_video_row", "has_video", "row_images", "row_name"),
            "trl_attention.visual.rows",
        ),
    },
}
MOVED_NAMES = {
    "trl_attention.distill.arguments": dict.fromkeys(
        ("check_capture_checkpointing", "check_weight"), "trl_attention.arguments"
    ),
    "trl_attention.sayo": dict.fromkeys(
        ("clip_box", "fixed_grid_token_indices", "region_token_indices", "visual_token_positions"),
        "trl_attention.visual",
    ),
}


def _warn(old: str, new: str) -> None:
    warnings.warn(
        f"{old} moved to {new} in trl_attention 0.2.0; the old path will be removed in {REMOVED_IN}",
        DeprecationWarning,
        3,
    )


def moved_names(module: str, moved: dict[str, str] | None = None):
    """A module `__getattr__` resolving the names that moved out of `module` (`MOVED_NAMES[module]` by default)."""
    moved = MOVED_NAMES[module] if moved is None else moved

    def __getattr__(name: str):
        if name not in moved:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        _warn(f"{module}.{name}", f"{moved[name]}.{name}")
        return getattr(importlib.import_module(moved[name]), name)

    return __getattr__


class _AliasFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Import an old module path as the new module object (or, for a split module, as a forwarding module)."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname in MOVED_MODULES or fullname in SPLIT_MODULES:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        if spec.name in MOVED_MODULES:
            _warn(spec.name, MOVED_MODULES[spec.name])
            return importlib.import_module(MOVED_MODULES[spec.name])
        names = SPLIT_MODULES[spec.name]
        module = types.ModuleType(spec.name, f"Moved in 0.2.0: {', '.join(sorted(set(names.values())))}.")
        module.__all__ = sorted(names)
        module.__getattr__ = moved_names(spec.name, names)
        return module

    def exec_module(self, module) -> None:  # the new module is already executed
        pass


if not any(isinstance(finder, _AliasFinder) for finder in sys.meta_path):
    sys.meta_path.append(_AliasFinder())
