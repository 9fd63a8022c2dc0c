"""Scale-out: the shipped DeepSpeed/accelerate configs, freezing the vision tower, and pre-flight checks.

The checks turn the failures that otherwise surface as DeepSpeed assertions or shape errors deep inside a
multi-GPU launch (minutes after start, on every rank) into one ValueError that says what to change:
- `check_batch_sizes`: the generation batch of a GRPO run (per-device batch x world size x steps_per_generation)
  must hold whole groups of `num_generations`, and hard-coded DeepSpeed batch values must match the launch.
- `check_zero3_capture_ready`: under ZeRO-3 a model whose parameters were partitioned (zero.Init at
  `from_pretrained`) but that no DeepSpeed engine manages runs its forward on 0-element weights.
- `check_teacher_fits`: a distillation teacher's weights per GPU (replicated below ZeRO-3, sharded at ZeRO-3).
- `check_capture_supported` (at trainer construction): the capture layer exists and the capture handles every
  option its attention kernel receives (softcap, sinks, ...), so an unsupported model fails before step 1.

Only the models a run captures are checked (`capture=`): with `attn_coef=0` and no attention term nothing of the
capture machinery runs, and no decoder layer is looked up, so plain GRPO trains on any model GRPOTrainer trains.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn
from transformers import TrainerCallback

from .capture.models import CaptureError, kernel_options, resolve_attention_layer, unwrap_model

__all__ = [
    "CONFIG_DIR",
    "DistributedChecksCallback",
    "check_batch_sizes",
    "check_capture_supported",
    "check_distributed_setup",
    "check_teacher_fits",
    "check_zero3_capture_ready",
    "config_path",
    "deepspeed_config",
    "freeze_vision_tower",
    "list_configs",
    "parameter_count",
]

CONFIG_DIR = Path(__file__).parent / "configs"
GIB = 1024**3

# Submodule names of the vision encoder and of the vision-to-text projector across transformers' VLMs:
# Qwen2/2.5/3-VL `visual` (projector `visual.merger`, Qwen3-VL also `visual.deepstack_merger_list`), LLaVA /
# Gemma3 / InternVL / Mistral3 `vision_tower` + `multi_modal_projector`, Idefics3 / SmolVLM `vision_model` +
# `connector`, Mllama `vision_model` + `multi_modal_projector`.
VISION_TOWER_NAMES = ("visual", "vision_tower", "vision_model", "vision_encoder", "image_encoder")
PROJECTOR_NAMES = ("multi_modal_projector", "mm_projector", "connector", "visual_projection", "vision_projection")


def list_configs() -> dict[str, str]:
    """{relative name: absolute path} of every shipped config, e.g. "deepspeed/zero3.json"."""
    files = sorted(p for p in CONFIG_DIR.rglob("*") if p.suffix in (".json", ".yaml"))
    return {p.relative_to(CONFIG_DIR).as_posix(): str(p) for p in files}


def config_path(name: str) -> str:
    """Absolute path of a shipped config: "deepspeed/zero3.json", "accelerate/zero3.yaml" (or "zero3" = the JSON)."""
    configs = list_configs()
    for key in (name, f"deepspeed/{name}.json", f"{name}.json", f"{name}.yaml"):
        if key in configs:
            return configs[key]
    raise ValueError(f"no shipped config {name!r}; available: {', '.join(configs)}")


def deepspeed_config(source) -> dict | None:
    """The DeepSpeed config dict of `source`: TrainingArguments (its `deepspeed`), a dict, a path or a name."""
    source = getattr(source, "deepspeed", source)
    if source is None or isinstance(source, dict):
        return source
    path = source if os.path.isfile(source) else config_path(source)
    with open(path) as f:
        return json.load(f)


# -- freezing -----------------------------------------------------------------------------------------------------
def parameter_count(params) -> int:
    """Elements of `params`, counting ZeRO-3 partitioned parameters at full size (`ds_numel`)."""
    return sum(int(getattr(p, "ds_numel", p.numel())) for p in params)


def freeze_vision_tower(model: nn.Module) -> int:
    """Freeze the vision encoder and the vision-to-text projector (`requires_grad=False`); returns the number
    of parameters (elements) frozen. Call it before the optimizer is built: optimizers and DeepSpeed's ZeRO
    partitions only take the parameters that require grad at that moment."""
    base = unwrap_model(model)
    found = []
    for name, module in base.named_modules():
        leaf = name.rsplit(".", 1)[-1]
        if (leaf in VISION_TOWER_NAMES or leaf in PROJECTOR_NAMES) and not any(
            name.startswith(f"{outer}.") for outer in found
        ):
            found.append(name)
    if not any(name.rsplit(".", 1)[-1] in VISION_TOWER_NAMES for name in found):
        raise ValueError(
            f"freeze_vision_tower: {type(base).__name__} has no vision tower (no submodule named one of "
            f"{', '.join(VISION_TOWER_NAMES)}); it is not a vision-language model, or its tower has another name"
        )
    modules = dict(base.named_modules())
    params = {id(p): p for name in found for p in modules[name].parameters()}.values()
    frozen = [p for p in params if p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    return parameter_count(frozen)


# -- checks ------------------------------------------------------------------------------------------------------
def _world_size(world_size: int | None) -> int:
    if world_size is not None:
        return int(world_size)
    import torch.distributed as dist

    return (
        dist.get_world_size()
        if dist.is_available() and dist.is_initialized()
        else int(os.environ.get("WORLD_SIZE", 1))
    )


def check_batch_sizes(args, world_size: int | None = None) -> None:
    """GRPO generation batches must hold whole groups and DeepSpeed's hard-coded batch values must match."""
    world = _world_size(world_size)
    micro, accumulation = args.per_device_train_batch_size, args.gradient_accumulation_steps
    generations = getattr(args, "num_generations", None)
    steps = getattr(args, "steps_per_generation", None) or accumulation
    if generations:
        generation_batch = micro * world * steps
        if generation_batch % generations:
            valid = [b for b in range(1, 4 * generations + 1) if (b * world * steps) % generations == 0][:4]
            raise ValueError(
                f"num_generations={generations} does not divide the generation batch per_device_train_batch_size "
                f"({micro}) x world size ({world}) x steps_per_generation ({steps}) = {generation_batch}: every "
                f"prompt's {generations} rollouts must land in the same generation batch. With {world} processes "
                f"use per_device_train_batch_size in {valid} (or change num_generations / steps_per_generation)."
            )
    config = deepspeed_config(args) or {}
    expected = {
        "train_micro_batch_size_per_gpu": micro,
        "gradient_accumulation_steps": accumulation,
        "train_batch_size": micro * accumulation * world,
    }
    wrong = [
        f"{k}={config[k]} (this launch: {v})" for k, v in expected.items() if config.get(k, "auto") not in ("auto", v)
    ]
    if wrong:
        raise ValueError(
            f"DeepSpeed config batch values do not match this launch ({world} processes, per-device batch {micro}, "
            f'gradient accumulation {accumulation}): {", ".join(wrong)}. Set them to "auto" (as the shipped '
            "configs do) so the trainer fills them from its arguments and the world size."
        )


def check_zero3_capture_ready(model: nn.Module, layer: int = -1) -> None:
    """The capture layer's parameters must be either whole or managed by a ZeRO-3 engine that gathers them.
    `layer` indexes the attention layers (hybrid decoders mix in others), as the capture's `layer` does."""
    _, model_layer, attention = resolve_attention_layer(model, layer, "attn_layer")
    partitioned = [n for n, p in attention.named_parameters() if getattr(p, "ds_status", None) is not None]
    if not partitioned:
        return
    from deepspeed.runtime.zero.partition_parameters import ZeroParamStatus

    params = dict(attention.named_parameters())
    missing = [n for n in partitioned if params[n].ds_status == ZeroParamStatus.NOT_AVAILABLE]
    if missing and not hasattr(attention, "ds_id"):  # ds_id: registered with a ZeRO-3 engine's fetch hooks
        raise ValueError(
            f"ZeRO-3: the capture layer ({type(attention).__name__}, attention layer {layer} = decoder layer "
            f"{model_layer}) has partitioned "
            f"parameters ({', '.join(missing[:3])}, ...) that no DeepSpeed engine gathers: its forward would run on "
            "0-element weights. The model was loaded under ZeRO-3 (zero.Init) but not prepared: pass it to the "
            "trainer (policy) or through trl.models.prepare_deepspeed / deepspeed.initialize (teacher, reference), "
            "or wrap the forward in deepspeed.zero.GatheredParameters(model.parameters())."
        )


def check_teacher_fits(
    teacher: nn.Module, world_size: int, zero_stage: int, device_memory: int, reserved: int = 0
) -> int:
    """Per-GPU bytes of the teacher's weights; ValueError when they do not fit next to `reserved` bytes."""
    params = list(teacher.parameters())
    element = max((p.element_size() for p in params), default=2)
    total = parameter_count(params) * element
    per_gpu = total // world_size if zero_stage == 3 else total
    if per_gpu + reserved > device_memory:
        sharded = total // world_size
        hint = (
            f"Under ZeRO-3 (e.g. --deepspeed {config_path('zero3')}) the teacher is sharded: {sharded / GIB:.1f} GiB "
            "per GPU."
            if zero_stage != 3
            else "Use more GPUs, a smaller teacher, zero3_offload, or precompute the teacher's outputs offline."
        )
        raise ValueError(
            f"The teacher does not fit: {parameter_count(params) / 1e9:.2f}B parameters x {element} bytes = "
            f"{total / GIB:.1f} GiB, {'sharded over' if zero_stage == 3 else 'replicated on each of'} {world_size} "
            f"GPUs under ZeRO stage {zero_stage}: {per_gpu / GIB:.1f} GiB per GPU, plus {reserved / GIB:.1f} GiB "
            f"for the student, exceeds {device_memory / GIB:.1f} GiB. {hint}"
        )
    return per_gpu


def check_capture_supported(model: nn.Module, layer: int = -1, option: str = "attn_layer") -> None:
    """At construction: `option`=`layer` names an attention layer of `model`, its implementation is wrappable, and
    the capture accepts every option its kernel receives (`kernel_options`), probed on zero tensors; else one
    CaptureError naming the module, the layer (attention and decoder index) and the option."""
    from .capture.capture import AttentionCapture  # lazy: the capture imports this package's siblings

    index, model_layer, module = resolve_attention_layer(model, layer, option)
    capture = AttentionCapture(model, layer=index)
    config = getattr(module, "config", None)
    heads = getattr(config, "num_attention_heads", None) or 1
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    dim = getattr(module, "head_dim", None) or getattr(config, "head_dim", None) or config.hidden_size // heads
    weight = next(module.parameters(), None)
    device = weight.device if weight is not None else "cpu"
    query, key = torch.zeros(1, heads, 2, dim, device=device), torch.zeros(1, kv_heads, 2, dim, device=device)
    base = {"scaling": getattr(module, "scaling", None), "dropout": 0.0}
    for name, source, value in kernel_options(module):
        value = value.to(device) if isinstance(value, torch.Tensor) else value
        try:
            capture._hooks.fn(index, module, query, key, key, None, (None, None), {**base, name: value})
        except CaptureError as err:
            raise CaptureError(
                f"{option}={layer}: {type(module).__name__} (attention layer {index} = decoder layer {model_layer} "
                f"of {type(unwrap_model(model)).__name__}) passes its kernel `{name}` (the model's `{source}`), "
                f"which the capture does not support: {err}. Set the attention terms to 0 (attn_coef=0, no "
                "attention reward or attention distillation) to train this model with plain GRPO / GKD."
            ) from None
        finally:
            capture.clear()


def check_distributed_setup(
    args,
    model: nn.Module | None = None,
    teacher: nn.Module | None = None,
    world_size: int | None = None,
    device_memory: int | None = None,
    reserved: int = 0,
    capture: dict | None = None,
) -> None:
    """All pre-flight checks that apply: batch sizes; the capture layer (ZeRO-3, once the model is prepared);
    the teacher's size (`device_memory` defaults to the current CUDA device's, skipped without one).
    `capture`: {"model": layer, "teacher": layer} of the models the run captures (missing = not captured, so
    their layers are not looked up); None checks both at `args.attn_layer` (callers predating it)."""
    world = _world_size(world_size)
    check_batch_sizes(args, world)
    if capture is None:
        layer = getattr(args, "attn_layer", -1)
        capture = {"model": layer, "teacher": layer}
    for role, m in (("model", model), ("teacher", teacher)):
        if m is not None and role in capture:
            check_zero3_capture_ready(m, capture[role])
    if teacher is not None:
        if device_memory is None:
            if not torch.cuda.is_available():
                return
            device_memory = torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
        stage = ((deepspeed_config(args) or {}).get("zero_optimization") or {}).get("stage", 0)
        check_teacher_fits(teacher, world, int(stage), device_memory, reserved)


class DistributedChecksCallback(TrainerCallback):
    """`check_distributed_setup` when training starts: the DeepSpeed engines exist by then (the policy's is built
    in `train()`), so a ZeRO-3 model that no engine gathers is told apart from one not yet prepared.
    `trainer.add_callback(DistributedChecksCallback(trainer))`; the teacher is `teacher_model` or `ref_model`.
    The trainer's `capture_layers()` ({"model": layer, "teacher": layer} of what it captures) limits the capture
    checks; a trainer without it gets all of them."""

    def __init__(self, trainer, device_memory: int | None = None):
        self.trainer, self.device_memory = trainer, device_memory

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        trainer = self.trainer
        teacher = getattr(trainer, "teacher_model", None) or getattr(trainer, "ref_model", None)
        world = trainer.accelerator.num_processes
        layers = getattr(trainer, "capture_layers", None)
        capture = layers() if callable(layers) else None
        check_distributed_setup(args, model or trainer.model, teacher, world, self.device_memory, capture=capture)
