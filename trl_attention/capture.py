"""Differentiable per-token attention capture through transformers' AttentionInterface.

`capture_attention(model, num_rows=C, layer=-1)` switches the language model's attention implementation to a
registered wrapper of the one it already uses (sdpa or eager). The wrapper runs the original kernel unchanged for
every layer, and for the chosen decoder layer also computes the head-averaged attention rows of the last C queries
with `ops.attention_rows` (fp32 softmax, O(B*C*T) memory, recomputing backward). The vision tower is untouched.
`backend` picks that kernel: "auto" (fused Triton on CUDA when triton imports, else torch), "torch" or "triton".

Why the saved-tensor hooks: under non-reentrant gradient checkpointing the layer is re-run during backward, after
this context has exited, with the original kernel. Saving the capture's tensors outside the checkpoint's hooks keeps
the recomputation's saved-tensor sequence identical to a forward without capture, so both paths agree.

The wrapper is the project's one interception point: `attention_hooks(model, fn, layers)` runs
`fn(layer, module, query, key, value, attention_mask, output, kwargs)` after the kernel of the chosen decoder layers;
a non-None return replaces the layer's attention output. The capture records through it, VRGA steers through it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import torch
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from typing_extensions import Self

from .ops.attention_rows import attention_rows, resolve_backend

__all__ = [
    "AttentionCapture",
    "AttentionHooks",
    "CaptureError",
    "attention_hooks",
    "capture_attention",
    "find_decoder_layers",
    "unwrap_model",
]

WRAPPABLE = ("sdpa", "eager")
_PREFIX = "trl_attention_capture_"
_HOOKS_ATTR = "_trl_attention_hooks"  # on each hooked attention module: [(layer index, fn), ...]
_switched: dict[int, list] = {}  # id(config) -> [config, original implementation, depth]


class CaptureError(RuntimeError):
    """The model or its attention implementation cannot be captured."""


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


def unwrap_model(model: nn.Module) -> nn.Module:
    """Strip DDP / DeepSpeed / FSDP (`.module`) and PEFT (`get_base_model()`) wrappers."""
    for _ in range(16):
        if hasattr(model, "get_base_model") and callable(model.get_base_model) and model.get_base_model() is not model:
            model = model.get_base_model()
        elif isinstance(getattr(model, "module", None), nn.Module):
            model = model.module
        else:
            return model
    return model


def find_decoder_layers(model: nn.Module) -> nn.ModuleList:
    """The language model's decoder layers (each with `.self_attn`), or a CaptureError naming the class."""
    base = unwrap_model(model)
    candidates = []
    if hasattr(base, "get_decoder"):
        try:
            candidates.append(base.get_decoder())
        except (AttributeError, NotImplementedError, ValueError):  # no decoder: fall through to the attributes
            candidates.append(None)
    candidates += [getattr(base, "model", None), getattr(getattr(base, "model", None), "language_model", None), base]
    for obj in candidates:
        layers = getattr(obj, "layers", None)
        if isinstance(layers, nn.ModuleList) and len(layers) and hasattr(layers[0], "self_attn"):
            return layers
    raise CaptureError(
        f"capture_attention cannot find the decoder layers of {type(base).__name__}: it supports decoder-only "
        "language models and VLMs whose `get_decoder()` (or `.model`) has `.layers[i].self_attn` "
        "(Llama, Qwen2, Qwen3, Qwen2-VL, Qwen2.5-VL, Qwen3-VL, ...)."
    )


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


@dataclass
class AttentionCapture:
    """Captured attention rows. Use through `capture_attention(...)`; read `probs` (or `records`) afterwards."""

    model: nn.Module
    num_rows: int | None = None
    layer: int = -1
    max_heads: int | None = None
    backend: str = "auto"
    records: list = field(default_factory=list)
    _hooks: AttentionHooks | None = field(default=None, repr=False)

    def __post_init__(self):
        self._hooks = AttentionHooks(self.model, self._observe, layers=[self.layer])
        self.layer_index = self._hooks.layers[0]
        weight = next(self._hooks.modules[0].parameters(), None)
        try:  # fail here, not at the first forward, on a bad or unavailable backend
            resolve_backend(self.backend, weight.device if weight is not None else "cpu")
        except (ValueError, RuntimeError) as err:
            raise CaptureError(f"capture_attention(backend={self.backend!r}): {err}") from err

    # -- context management -------------------------------------------------------------------------------------
    def __enter__(self) -> Self:
        if self._hooks._depth == 0:
            self._check_checkpointing()
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)

    def _check_checkpointing(self):
        layer = find_decoder_layers(self.model)[self.layer_index]
        func = getattr(layer, "_gradient_checkpointing_func", None)
        reentrant = getattr(func, "keywords", {}).get("use_reentrant", False)
        if torch.is_grad_enabled() and layer.gradient_checkpointing and layer.training and reentrant:
            raise CaptureError(
                "capture_attention needs non-reentrant gradient checkpointing to get gradients (reentrant "
                "checkpointing runs the layer under no_grad); set gradient_checkpointing_kwargs="
                "{'use_reentrant': False}."
            )

    # -- recording ----------------------------------------------------------------------------------------------
    def _observe(self, layer, module, query, key, value, attention_mask, output, kwargs):
        self._record(module, query, key, attention_mask, kwargs)

    def _record(self, module, query, key, attention_mask, kwargs):
        for name in ("softcap", "s_aux", "position_bias"):
            if kwargs.get(name) is not None:
                raise CaptureError(
                    f"capture_attention does not support attention with `{name}` ({type(module).__name__})"
                )
        window = kwargs.get("sliding_window")
        if window is not None and attention_mask is None and key.shape[2] > window:
            raise CaptureError("capture_attention needs an explicit mask for sliding-window attention")
        is_causal = kwargs.get("is_causal")
        is_causal = getattr(module, "is_causal", True) if is_causal is None else is_causal
        # Identity hooks: keep the capture's saved tensors out of any enclosing checkpoint (see module docstring).
        with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
            probs = attention_rows(
                query, key, attention_mask, kwargs.get("scaling"), is_causal, self.num_rows, self.max_heads,
                backend=self.backend,
            )  # fmt: skip
        self.records.append(probs)

    @property
    def probs(self) -> torch.Tensor:
        """(B, C, T): all recorded forwards concatenated along the batch (TRL scores a batch in chunks)."""
        if not self.records:
            raise CaptureError("no attention was captured: no forward of the language model ran inside the capture")
        if len(self.records) == 1:
            return self.records[0]
        shapes = {tuple(r.shape[1:]) for r in self.records}
        if len(shapes) > 1:
            raise CaptureError(f"captured forwards have different row/key sizes {sorted(shapes)}; read `records`")
        return torch.cat(self.records, dim=0)

    def clear(self) -> None:
        self.records.clear()


def capture_attention(
    model: nn.Module, num_rows: int | None = None, layer: int = -1, max_heads: int | None = None, backend: str = "auto"
):
    """Context manager capturing the head-averaged attention of the last `num_rows` queries of decoder `layer`.

    Every forward of the language model inside the block appends one (B, C, T) fp32 tensor to `cap.records`;
    `cap.probs` concatenates them. Rows are differentiable w.r.t. the model when grad is enabled. Entering the same
    capture again keeps accumulating; call `cap.clear()` to start over. `backend`: "auto" (fused Triton kernels on
    CUDA when triton imports, else the torch reference), "torch", or "triton" (a CaptureError where it cannot run).
    """
    return AttentionCapture(model, num_rows=num_rows, layer=layer, max_heads=max_heads, backend=backend)
