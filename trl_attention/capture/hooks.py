"""The project's one interception point: a registered wrapper of the model's own attention kernel.

`attention_hooks(model, fn, layers)` switches the language model's attention implementation to a registered wrapper
of the one it already uses. The wrapper runs the original kernel unchanged for every layer and, for the hooked
decoder layers, calls `fn(layer, module, query, key, value, attention_mask, output, kwargs)` after it; a non-None
return replaces the layer's attention output. The capture records through it, VRGA steers through it. The vision
tower is untouched.

Which kernels can be wrapped: any registered one (sdpa, eager, flash_attention_2/3/4, flex_attention, hub kernels,
paged, user-registered) with `implementations="any"`; `AttentionHooks(...)` built directly, and
`attention_hooks(...)` by default, accept only `WRAPPABLE` (sdpa, eager), whose calling convention (a 4D mask or
None, (B, Q, H, D) output, eager's weights) every hook of this project understands; a hook that can read what the
other kernels are given (a 2D padding mask, packed position_ids / cu_seq_lens, a flex BlockMask) asks for more.
The mask function registered under the wrapper's name is the base implementation's, so transformers hands the
wrapper exactly what it would hand the base kernel.
"""

from __future__ import annotations

import contextlib
import contextvars
import inspect
import sys
import weakref

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface, flash_attention_mask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from typing_extensions import Self

from .models import CaptureError, attention_layers, resolve_attention_layer, unwrap_model

__all__ = ["ANY", "WRAPPABLE", "AttentionHooks", "attention_hooks", "flash_convention", "wrappable_implementations"]

WRAPPABLE = ("sdpa", "eager")
ANY = "any"  # every registered attention implementation
_PREFIX = "trl_attention_capture_"
_HOOKS_ATTR = "_trl_attention_hooks"  # on each hooked attention module: [(layer index, fn), ...]
_switched: dict[int, list] = {}  # id(config) -> [config, original implementation, depth]
# What `AttentionHooks` accepts while being built: WRAPPABLE unless `attention_hooks(implementations=...)` says more.
_accepted: contextvars.ContextVar = contextvars.ContextVar("trl_attention_accepted", default=WRAPPABLE)


def _in_backward() -> bool:
    """True while autograd runs a backward pass (e.g. a gradient-checkpointing recomputation)."""
    return torch._C._current_graph_task_id() != -1


def wrappable_implementations() -> tuple:
    """Every attention implementation a wrapper can be registered for: eager and all of AttentionInterface's."""
    names = dict.fromkeys(["eager", *ALL_ATTENTION_FUNCTIONS._global_mapping, *ALL_ATTENTION_FUNCTIONS._local_mapping])
    return tuple(n for n in names if not n.startswith(_PREFIX))


def flash_convention(base: str) -> bool:
    """True when kernel `base` follows flash-attention's calling convention: a 2D padding mask or None (its mask
    function is transformers' flash_attention_mask), padding-free batches through cu_seq_lens / position_ids."""
    mask_fn = ALL_MASK_ATTENTION_FUNCTIONS._global_mapping.get(base)
    return "flash" in base or (mask_fn is not None and mask_fn is flash_attention_mask)


def _base_function(module: nn.Module, base: str):
    if base == "eager":  # eager lives in each modeling file, not in the interface
        fn = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
        if fn is None:
            raise CaptureError(f"{type(module).__name__} has no eager_attention_forward in {type(module).__module__}")
        return fn
    return ALL_ATTENTION_FUNCTIONS[base]


def _make_wrapper(base: str):
    # Kernels other than sdpa/eager may read config._attn_implementation (flash-attention picks its library by it):
    # they see their own name while they run.
    renamed = base not in WRAPPABLE

    def attention(module, query, key, value, attention_mask, *args, **kwargs):
        kernel = _base_function(module, base)
        config = getattr(module, "config", None) if renamed else None
        if config is not None and config._attn_implementation_internal == f"{_PREFIX}{base}":
            config._attn_implementation_internal = base
            try:
                output = kernel(module, query, key, value, attention_mask, *args, **kwargs)
            finally:
                config._attn_implementation_internal = f"{_PREFIX}{base}"
        else:
            output = kernel(module, query, key, value, attention_mask, *args, **kwargs)
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
    if name not in ALL_ATTENTION_FUNCTIONS._global_mapping:
        AttentionInterface.register(name, _make_wrapper(base))
        # Without a mask function under the same name transformers passes no mask at all (padding ignored): the
        # base's own, so the wrapper gets what the base would (a kernel without one gets no mask either way).
        mask_fn = ALL_MASK_ATTENTION_FUNCTIONS._global_mapping.get(base)
        if mask_fn is not None:
            AttentionMaskInterface.register(name, mask_fn)
    return name


def _wrappable_base(module: nn.Module, model: nn.Module) -> tuple:
    """(config, base implementation) of an attention module, or a CaptureError naming the model class."""
    config = getattr(module, "config", None)
    impl = getattr(config, "_attn_implementation", None)
    if impl is not None and impl.startswith(_PREFIX):
        impl = impl[len(_PREFIX) :]
    accepted = _accepted.get()
    supported = wrappable_implementations() if accepted == ANY else tuple(accepted)
    if impl not in supported:
        hint = "" if accepted == ANY else " (load the model with attn_implementation='sdpa')"
        raise CaptureError(
            f"trl_attention cannot wrap attention implementation {impl!r} of "
            f"{type(unwrap_model(model)).__name__}; supported: {', '.join(supported)}{hint}."
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
        # `layers` index the attention layers (hybrids mix in Mamba / linear-attention layers); `fn` receives that
        # index, `model_layers` holds the model's own decoder layer index of each.
        found = attention_layers(model)
        indices = range(len(found)) if layers is None else list(layers)
        resolved = [resolve_attention_layer(model, i) for i in indices]
        self.layers = [index for index, _, _ in resolved]
        self.model_layers = [model_index for _, model_index, _ in resolved]
        self.modules = [module for _, _, module in resolved]
        self.model, self._depth, self._installed = model, 0, None
        # A bound method is held weakly: its owner (a capture, a VRGA runtime) holds this object, and a strong
        # reference back would be a cycle keeping the owner, and what it recorded, alive until the cyclic GC runs.
        self._fn = weakref.WeakMethod(fn) if inspect.ismethod(fn) else (lambda: fn)
        self._config, self._base = _wrappable_base(self.modules[0], model)

    @property
    def fn(self):
        fn = self._fn()
        if fn is None:
            raise CaptureError("the object whose method this hook calls was garbage-collected; keep a reference")
        return fn

    def __enter__(self) -> Self:
        if self._depth == 0:
            self._installed = self.fn  # held while entered
            entry = _switched.setdefault(id(self._config), [self._config, self._config._attn_implementation, 0])
            if entry[2] == 0:
                self._config._attn_implementation_internal = _register(self._base)
            entry[2] += 1
            for layer, module in zip(self.layers, self.modules):
                setattr(module, _HOOKS_ATTR, getattr(module, _HOOKS_ATTR, []) + [(layer, self._installed)])
        self._depth += 1
        return self

    def __exit__(self, *exc) -> None:
        self._depth -= 1
        if self._depth:
            return
        for module in self.modules:
            setattr(module, _HOOKS_ATTR, [h for h in getattr(module, _HOOKS_ATTR, []) if h[1] is not self._installed])
        self._installed = None
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


@contextlib.contextmanager
def _accepting(implementations):
    token = _accepted.set(implementations if implementations == ANY else tuple(implementations))
    try:
        yield
    finally:
        _accepted.reset(token)


def attention_hooks(model: nn.Module, fn, layers=None, implementations=WRAPPABLE) -> AttentionHooks:
    """Context manager running `fn` inside the attention wrapper of decoder `layers` (all when None).

    `implementations`: the base kernels `fn` can work with, a tuple of names or `ANY`; any other raises a
    CaptureError here, at construction. `fn` then sees what that kernel is given (for flash-attention: a 2D
    padding mask or None, packed `position_ids` / `cu_seq_lens_q/k` in kwargs, no attention weights).
    """
    with _accepting(implementations):
        return AttentionHooks(model, fn, layers)
