"""The project's one interception point: a registered wrapper of the model's own attention kernel.

`attention_hooks(model, fn, layers)` switches the language model's attention implementation to a registered wrapper
of the one it already uses (sdpa or eager). The wrapper runs the original kernel unchanged for every layer and, for
the hooked decoder layers, calls `fn(layer, module, query, key, value, attention_mask, output, kwargs)` after it; a
non-None return replaces the layer's attention output. The capture records through it, VRGA steers through it.
The vision tower is untouched.
"""

from __future__ import annotations

import sys

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from typing_extensions import Self

from .models import CaptureError, find_decoder_layers, unwrap_model

__all__ = ["WRAPPABLE", "AttentionHooks", "attention_hooks"]

WRAPPABLE = ("sdpa", "eager")
_PREFIX = "trl_attention_capture_"
_HOOKS_ATTR = "_trl_attention_hooks"  # on each hooked attention module: [(layer index, fn), ...]
_switched: dict[int, list] = {}  # id(config) -> [config, original implementation, depth]


def _in_backward() -> bool:
    """True while autograd runs a backward pass (e.g. a gradient-checkpointing recomputation)."""
    return torch._C._current_graph_task_id() != -1


def _base_function(module: nn.Module, base: str):
    if base == "eager":  # eager lives in each modeling file, not in the interface
        fn = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
        if fn is None:
            raise CaptureError(f"{type(module).__name__} has no eager_attention_forward in {type(module).__module__}")
        return fn
    return ALL_ATTENTION_FUNCTIONS[base]


def _make_wrapper(base: str):
    def attention(module, query, key, value, attention_mask, *args, **kwargs):
        output = _base_function(module, base)(module, query, key, value, attention_mask, *args, **kwargs)
        hooks = getattr(module, _HOOKS_ATTR, None)
        if hooks and not _in_backward():
            for layer, fn in hooks:  # in installation order; each sees the output the previous ones left
                replaced = fn(layer, module, query, key, value, attention_mask, output, kwargs)
                output = output if replaced is None else replaced
        return output

    attention.__name__ = f"{_PREFIX}{base}"
    return attention


def _register(base: str) -> str:
    name = f"{_PREFIX}{base}"
    if name not in ALL_MASK_ATTENTION_FUNCTIONS._global_mapping:
        AttentionInterface.register(name, _make_wrapper(base))
        # Without a mask function under the same name transformers passes no mask at all (padding ignored).
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS._global_mapping[base])
    return name


def _wrappable_base(module: nn.Module, model: nn.Module) -> tuple:
    """(config, base implementation) of an attention module, or a CaptureError naming the model class."""
    config = getattr(module, "config", None)
    impl = getattr(config, "_attn_implementation", None)
    if impl is not None and impl.startswith(_PREFIX):
        impl = impl[len(_PREFIX) :]
    if impl not in WRAPPABLE:
        raise CaptureError(
            f"trl_attention cannot wrap attention implementation {impl!r} of "
            f"{type(unwrap_model(model)).__name__}; supported: {', '.join(WRAPPABLE)} "
            "(load the model with attn_implementation='sdpa')."
        )
    return config, impl


class AttentionHooks:
    """Install `fn(layer, module, query, key, value, attention_mask, output, kwargs)` on decoder `layers`.

    While entered (re-entrant; `with` or `enable()`/`disable()`), the language model runs the registered wrapper of
    its own kernel, which calls `fn` after the kernel of each hooked layer (not during a backward recomputation).
    `output` is the kernel's `(attn_output (B, Q, H, D), attn_weights or None)`; returning a tuple replaces it,
    None keeps it. Layers without hooks, and the vision tower, run their kernel unchanged.
    """

    def __init__(self, model: nn.Module, fn, layers=None):
        decoder = find_decoder_layers(model)
        indices = range(len(decoder)) if layers is None else list(layers)
        for i in indices:
            if not -len(decoder) <= i < len(decoder):
                raise CaptureError(f"layer={i} is out of range for {len(decoder)} decoder layers")
        self.layers = [i % len(decoder) for i in indices]
        self.modules = [decoder[i].self_attn for i in self.layers]
        self.model, self.fn, self._depth = model, fn, 0
        self._config, self._base = _wrappable_base(self.modules[0], model)

    def __enter__(self) -> Self:
        if self._depth == 0:
            entry = _switched.setdefault(id(self._config), [self._config, self._config._attn_implementation, 0])
            if entry[2] == 0:
                self._config._attn_implementation_internal = _register(self._base)
            entry[2] += 1
            for layer, module in zip(self.layers, self.modules):
                setattr(module, _HOOKS_ATTR, getattr(module, _HOOKS_ATTR, []) + [(layer, self.fn)])
        self._depth += 1
        return self

    def __exit__(self, *exc) -> None:
        self._depth -= 1
        if self._depth:
            return
        for module in self.modules:
            setattr(module, _HOOKS_ATTR, [h for h in getattr(module, _HOOKS_ATTR, []) if h[1] is not self.fn])
        entry = _switched[id(self._config)]
        entry[2] -= 1
        if entry[2] == 0:
            self._config._attn_implementation_internal = entry[1]
            del _switched[id(self._config)]

    enable = __enter__

    def disable(self) -> None:
        """Leave every level entered so far: the model runs its plain kernel again."""
        while self._depth:
            self.__exit__(None, None, None)


def attention_hooks(model: nn.Module, fn, layers=None) -> AttentionHooks:
    """Context manager running `fn` inside the attention wrapper of decoder `layers` (all when None)."""
    return AttentionHooks(model, fn, layers)
