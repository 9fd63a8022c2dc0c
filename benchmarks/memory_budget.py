"""Per-GPU memory budget of the two scale-out recipes, computed from the models' published configs.

    python benchmarks/memory_budget.py            # markdown table (the one in docs/scale-out.md)
    python benchmarks/memory_budget.py --gpus 16 --completion 1024

Recipes (8 GPUs, bf16 weights, AdamW with fp32 master weights, vision tower + projector frozen as in the paper):
- RAL: Qwen2.5-VL-7B policy, 8 rollouts per prompt (per-device batch 8), KL reference model (beta 0.04, TRL
  shards it like the policy under ZeRO-3 and replicates it otherwise), RAL capture buffers.
- Distill: Qwen2.5-VL-32B teacher -> Qwen2.5-VL-7B student (AttentionGKDTrainer), teacher bf16 under no_grad,
  sharded under ZeRO-3 (TRL's prepare_deepspeed) and replicated otherwise; teacher logits and attention rows.

Accounting (bytes; P = all parameters, P_t = trainable ones, N = GPUs, tokens = B * T):
- weights 2P (ZeRO-3: 2P/N); grads 2P_t (ZeRO-2/3: 2P_t/N); optimizer 12P_t/N (fp32 master + Adam m, v), i.e.
  the ZeRO paper's (2 + 2 + K) Psi with K = 12 (Rajbhandari et al. 2020, section 5).
- activations of a Qwen2 decoder layer in bf16 with sdpa, per token: 20h + 8I + 4*kv*d + 4*heads + 8 (two fp32
  RMSNorm copies 8h, six bf16 h-sized tensors 12h, four SwiGLU I-sized tensors 8I, k and v, fp32 log-sum-exp per
  head, two fp32 rstd), plus rotary cos/sin shared by all layers (4d). tests/test_memory_budget.py checks this
  against the bytes autograd actually saves for a real layer. Gradient checkpointing keeps 2h per layer and
  recomputes one layer. Logits (bf16): GRPO computes completion positions only (logits_to_keep) and its loss
  saves 2 bytes per logit; GKD's forward returns every position and TRL's generalized JSD saves 14 bytes per
  completion logit (both measured by the tests). The teacher's logits (all positions) count under teacher/ref.
  The frozen vision tower saves nothing (no parameter or input needs its gradient).
- capture buffers (RAL): the captured rows (4 bytes) and what the RAL loss saves (12 bytes) per B*C*T element,
  plus p_old for every buffered rollout (4 bytes per element of steps_per_generation * B rows).
- ZeRO-3 working set: one gathered decoder layer (2 bytes per parameter) plus the prefetch bucket 0.9h^2 x 2.
Not counted: CUDA context and allocator fragmentation (typically 2-5 GiB), generation KV cache (freed before
the backward), communication buckets (ZeRO-2 allgather/reduce buckets, up to ~1 GiB each).
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, replace

GIB = 1024**3


@dataclass(frozen=True)
class TextDims:
    vocab: int
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    intermediate: int
    tie_embeddings: bool = False

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads


@dataclass(frozen=True)
class VisionDims:
    depth: int
    hidden: int
    intermediate: int
    out_hidden: int
    patch: int = 14
    temporal_patch: int = 2
    merge: int = 2
    in_channels: int = 3


@dataclass(frozen=True)
class Model:
    name: str
    text: TextDims
    vision: VisionDims


# Published config.json values of the Hugging Face checkpoints (text_config / vision_config). 7B: layer shapes
# confirmed by a printed Qwen2_5_VLForConditionalGeneration module tree (q 3584->3584, k/v 3584->512, MLP 18944,
# vocab 152064, ViT 32 x 1280 with MLP 3420, merger 5120->3584). 32B: language model as in the Qwen2.5-32B model
# card (64 layers, 40 query / 8 KV heads, 32.5B parameters), hidden 5120, MLP 27648; ViT MLP 3456 (the hub
# config's value; not re-checked offline here: 3420 instead would change the total by 4.4M parameters, 0.01%).
QWEN25_VL_7B = Model(
    "Qwen2.5-VL-7B",
    TextDims(vocab=152064, hidden=3584, layers=28, heads=28, kv_heads=4, intermediate=18944),
    VisionDims(depth=32, hidden=1280, intermediate=3420, out_hidden=3584),
)
QWEN25_VL_32B = Model(
    "Qwen2.5-VL-32B",
    TextDims(vocab=152064, hidden=5120, layers=64, heads=40, kv_heads=8, intermediate=27648),
    VisionDims(depth=32, hidden=1280, intermediate=3456, out_hidden=5120),
)


# -- parameters ---------------------------------------------------------------------------------------------------
def decoder_layer_parameters(t: TextDims) -> int:
    kv = t.kv_heads * t.head_dim
    attention = t.hidden * t.hidden + t.hidden + 2 * (t.hidden * kv + kv) + t.hidden * t.hidden  # q, k, v biased
    return attention + 3 * t.hidden * t.intermediate + 2 * t.hidden  # SwiGLU without bias, two RMSNorms


def text_parameters(t: TextDims) -> int:
    embeddings = t.vocab * t.hidden * (1 if t.tie_embeddings else 2)
    return t.layers * decoder_layer_parameters(t) + embeddings + t.hidden


def vision_parameters(v: VisionDims) -> int:
    """Qwen2.5-VL ViT: conv patch embedding (no bias), blocks (fused qkv, biased SwiGLU), 2x2 patch merger."""
    patch = v.in_channels * v.temporal_patch * v.patch**2 * v.hidden
    block = 2 * v.hidden + (3 * v.hidden * v.hidden + 3 * v.hidden) + (v.hidden * v.hidden + v.hidden)
    block += 2 * (v.hidden * v.intermediate + v.intermediate) + v.intermediate * v.hidden + v.hidden
    merged = v.hidden * v.merge**2
    merger = v.hidden + merged * merged + merged + merged * v.out_hidden + v.out_hidden
    return patch + v.depth * block + merger


def model_parameters(m: Model) -> tuple[int, int]:
    """(all parameters, trainable with the vision tower and projector frozen)."""
    text = text_parameters(m.text)
    return text + vision_parameters(m.vision), text


# -- bytes --------------------------------------------------------------------------------------------------------
def zero_states(total: int, trainable: int, gpus: int, stage: int) -> dict[str, float]:
    """Weights (bf16), gradients (bf16) and optimizer states (fp32 master + Adam m, v) per GPU."""
    return {
        "weights": 2 * total / (gpus if stage == 3 else 1),
        "grads": 2 * trainable / (gpus if stage >= 2 else 1),
        "optimizer": 12 * trainable / gpus,
    }


def layer_activation_bytes(t: TextDims) -> int:
    """Bytes autograd saves per token in one bf16 Qwen2 decoder layer with sdpa (cos/sin excluded: shared)."""
    return 20 * t.hidden + 8 * t.intermediate + 4 * t.kv_heads * t.head_dim + 4 * t.heads + 8


# Bytes autograd saves per logit of a completion position in each loss (bf16 logits; measured by the tests):
# GRPO's log-softmax of the selected token (TRL's selective_log_softmax): 2; TRL's generalized JSD (GKD): 14.
GRPO_LOSS_BYTES_PER_LOGIT = 2
GKD_LOSS_BYTES_PER_LOGIT = 14


def activation_bytes(t: TextDims, batch: int, length: int, checkpointing: bool) -> float:
    """Decoder activations (no logits): all layers, or with checkpointing each layer's input + one layer."""
    per_layer = layer_activation_bytes(t)
    layers = t.layers * 2 * t.hidden + per_layer if checkpointing else t.layers * per_layer
    return batch * length * (layers + 4 * t.head_dim)


def logits_bytes(t: TextDims, batch: int, length: int, completion: int, distill: bool) -> float:
    """bf16 logits (GRPO keeps completion positions only; GKD's forward returns all) and the loss's saved tensors."""
    if distill:
        return batch * t.vocab * (2 * length + GKD_LOSS_BYTES_PER_LOGIT * completion)
    return batch * t.vocab * completion * (2 + GRPO_LOSS_BYTES_PER_LOGIT)


def capture_bytes(batch: int, completion: int, length: int, buffered_rows: int) -> float:
    return (4 + 12) * batch * completion * length + 4 * buffered_rows * completion * length


def zero3_working_set(t: TextDims) -> float:
    return 2 * decoder_layer_parameters(t) + 2 * 0.9 * t.hidden**2


@dataclass(frozen=True)
class Recipe:
    name: str
    student: Model
    teacher: Model | None  # distillation teacher
    reference: bool  # GRPO KL reference model (a second copy of the policy, no grad)
    batch: int  # per-device micro-batch (sequences)
    prompt: int  # prompt tokens, image tokens included
    completion: int
    steps_per_generation: int = 1
    capture: bool = True


RECIPES = (
    Recipe("RAL 7B", QWEN25_VL_7B, None, reference=True, batch=8, prompt=1024, completion=768, steps_per_generation=2),
    Recipe("Distill 32B->7B", QWEN25_VL_7B, QWEN25_VL_32B, reference=False, batch=1, prompt=1024, completion=256),
)


def budget(recipe: Recipe, gpus: int, stage: int, checkpointing: bool) -> dict[str, float]:
    """Bytes per GPU, by component."""
    total, trainable = model_parameters(recipe.student)
    t, length = recipe.student.text, recipe.prompt + recipe.completion
    rows = {**zero_states(total, trainable, gpus, stage)}
    rows["activations"] = activation_bytes(t, recipe.batch, length, checkpointing)
    rows["logits"] = logits_bytes(t, recipe.batch, length, recipe.completion, recipe.teacher is not None)
    rows["capture"] = (
        capture_bytes(recipe.batch, recipe.completion, length, recipe.batch * recipe.steps_per_generation)
        if recipe.capture
        else 0.0
    )
    frozen_copy = recipe.teacher or (recipe.student if recipe.reference else None)
    rows["teacher/ref"] = 0.0
    if frozen_copy is not None:
        params = sum(model_parameters(frozen_copy)[:1])
        rows["teacher/ref"] = 2 * params / (gpus if stage == 3 else 1)
        if recipe.teacher is not None:  # its logits (bf16) and captured rows (fp32) for the batch, no grad
            rows["teacher/ref"] += recipe.batch * (
                2 * length * recipe.teacher.text.vocab + 4 * recipe.completion * length
            )
    rows["zero3 gather"] = max(zero3_working_set(m.text) for m in filter(None, (recipe.student, frozen_copy)))
    rows["zero3 gather"] *= stage == 3
    rows["total"] = sum(rows.values())
    return rows


def table(gpus: int = 8, recipes=RECIPES) -> str:
    columns = [
        "weights",
        "grads",
        "optimizer",
        "activations",
        "logits",
        "capture",
        "teacher/ref",
        "zero3 gather",
        "total",
    ]
    lines = [
        "| recipe | ZeRO | grad. ckpt | " + " | ".join(columns) + " |",
        "| --- | --- | --- | " + " | ".join("---:" for _ in columns) + " |",
    ]
    for recipe in recipes:
        for stage in (2, 3):
            for checkpointing in (True, False):
                rows = budget(recipe, gpus, stage, checkpointing)
                cells = " | ".join(f"{rows[c] / GIB:.2f}" for c in columns)
                lines.append(f"| {recipe.name} | {stage} | {'on' if checkpointing else 'off'} | {cells} |")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--completion", type=int, help="override both recipes' completion length (tokens)")
    parser.add_argument("--prompt", type=int, help="override both recipes' prompt length (tokens)")
    args = parser.parse_args(argv)
    recipes = [replace(r, completion=args.completion or r.completion, prompt=args.prompt or r.prompt) for r in RECIPES]
    for m in (QWEN25_VL_7B, QWEN25_VL_32B):
        total, trainable = model_parameters(m)
        print(
            f"{m.name}: {total / 1e9:.2f}B parameters, {trainable / 1e9:.2f}B trainable with the vision tower frozen"
        )
    for r in recipes:
        print(f"{r.name}: per-device batch {r.batch}, prompt {r.prompt} + completion {r.completion} tokens")
    print(f"\nGiB per GPU, {args.gpus} GPUs:\n")
    print(table(args.gpus, recipes))


if __name__ == "__main__":
    main()
