"""Lazy re-exports (as TRL's `_LazyModule`): `import trl_attention` or a method package stays cheap, and TRL /
transformers are imported only when a name that needs them is first used."""

from __future__ import annotations

import importlib


def lazy_exports(package: str, exports: dict[str, str]):
    """(`__getattr__`, `__dir__`) for a package whose names `exports` maps to the submodule defining them. Names that
    moved out of the package in a release (`_compat.MOVED_NAMES`) resolve with a DeprecationWarning."""

    def __getattr__(name: str):
        if name not in exports:
            from ._compat import MOVED_NAMES, moved_names

            if name in MOVED_NAMES.get(package, {}):
                return moved_names(package)(name)
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(exports[name], package)
        value = getattr(module, name)
        globals_ = importlib.import_module(package).__dict__
        globals_[name] = value  # cache: later lookups do not come back here
        return value

    def __dir__():
        return sorted(set(importlib.import_module(package).__dict__) | set(exports))

    return __getattr__, __dir__
