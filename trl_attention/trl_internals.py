"""Every touchpoint with TRL internals, in one module, so that a TRL release breaks here first and clearly.

The trainers extend TRL through `super()` and small overrides. What they rely on beyond TRL's public API is listed
here, and `tests/test_trl_contract.py` checks each item against the installed TRL (signatures, return shapes,
batch keys, the old-logps condition, the loss normalisation per `loss_type`, computed by TRL's own `_compute_loss`);
docs/trl-internals.md says where each is used and what to do when a TRL release changes one:

- overridden private methods of `GRPOTrainer` (`GRPO_OVERRIDES`), of `GKDTrainer` (`GKD_OVERRIDES`) and, for
  resuming, of transformers' `Trainer` (`TRAINER_CHECKPOINT_OVERRIDES`), with the parameters the overrides read or
  pass on; GRPO's in-memory rollout state saved with checkpoints (`ROLLOUT_STATE_ATTRIBUTES`);
- attributes read by this package: of the trainers (`GRPO_ATTRIBUTES`, `GKD_ATTRIBUTES`), the model-card class
  attributes both trainers extend (`CLASS_ATTRIBUTES`, with the `_paper` keys `PAPER_KEYS`), the keys of GRPO's
  rollout log `_logs` (`LOGS_KEYS`), and `current_gradient_accumulation_steps`, which transformers' training loop
  sets and TRL's loss reads (`TRAINING_LOOP_ATTRIBUTES`);
- batch keys: the multimodal model inputs of TRL's scoring forward (`SCORING_FORWARD_KEYS`), those the teacher
  forward takes as they are (`TEACHER_FORWARD_KEYS`), the keys of TRL's training batch read by the loss terms
  (`LOSS_BATCH_KEYS`, `OPTIONAL_LOSS_BATCH_KEYS`), those only TRL's own loss reads (`TRL_ONLY_LOSS_BATCH_KEYS`),
  those this package adds, which TRL's buffering must carry along (`PACKAGE_BATCH_KEYS`, and the per-row lists
  `PACKAGE_LIST_BATCH_KEYS`), the multimodal fields of
  `_tokenize_prompts` read by the attention rewards (`TOKENIZED_PROMPT_FIELDS`), and the keys of GKD's batches
  (`GKD_BATCH_KEYS`);
- two pieces of TRL logic that TRL does not expose, restated: when `_generate_and_score_completions` runs the
  old-logps forward (`scores_old_logps`, and its first half `reuses_rollouts`), and how `_compute_loss` normalises
  its per-token loss for each `loss_type` in `LOSS_TYPES` (`aggregate_like_trl`);
- TRL helpers used as they are, imported from non-public modules (`HELPER_PARAMETERS`): `pad` and
  `disable_dropout_in_model` (`trl.trainer.utils`), `prepare_deepspeed` and `prepare_fsdp` (`trl.models`),
  `GKDConfig`/`GKDTrainer` (`trl.experimental.gkd`) and `GKDTrainer.generalized_jsd_loss` (`generalized_jsd`);
- behaviours: TRL reaches the overrides through `self`; rows without `image`/`images` make TRL take its text path
  (no processor call, no multimodal forward kwargs: the video path feeds the forwards itself); a rollout calls
  `_tokenize_prompts`, then the policy's
  old-logps forward, then the reference forward, then `_calculate_rewards` (on `reward_funcs` as they are then);
  the loss forward runs the backbone once per `batch_size` chunk, in order, behind TRL's fused LM head; `log()`
  averages `_metrics` and builds the completions table from `_logs` after the callbacks' `on_log`.
"""

from __future__ import annotations

import warnings

import torch
from trl.models import prepare_deepspeed, prepare_fsdp
from trl.trainer.utils import disable_dropout_in_model, pad

with warnings.catch_warnings():  # TRL warns that experimental APIs may change: the pins in pyproject.toml cover it
    warnings.simplefilter("ignore")
    from trl.experimental.gkd import GKDConfig, GKDTrainer

__all__ = [
    "CLASS_ATTRIBUTES",
    "GKD_ATTRIBUTES",
    "GKD_BATCH_KEYS",
    "GKD_OVERRIDES",
    "GRPO_ATTRIBUTES",
    "GRPO_OVERRIDES",
    "HELPER_PARAMETERS",
    "LOGS_KEYS",
    "LOSS_BATCH_KEYS",
    "LOSS_TYPES",
    "OPTIONAL_LOSS_BATCH_KEYS",
    "OPTIONAL_REWARD_KWARGS",
    "PACKAGE_BATCH_KEYS",
    "REWARD_EXCLUDED_COLUMNS",
    "REWARD_KWARGS",
    "PACKAGE_LIST_BATCH_KEYS",
    "PAPER_KEYS",
    "ROLLOUT_STATE_ATTRIBUTES",
    "SCORING_FORWARD_KEYS",
    "TEACHER_FORWARD_KEYS",
    "TOKENIZED_PROMPT_FIELDS",
    "TRAINER_CHECKPOINT_OVERRIDES",
    "TRAINING_LOOP_ATTRIBUTES",
    "TRL_ONLY_LOSS_BATCH_KEYS",
    "GKDConfig",
    "GKDTrainer",
    "aggregate_like_trl",
    "disable_dropout_in_model",
    "generalized_jsd",
    "importance_weighted",
    "log_global_masked_mean",
    "loss_mask",
    "metrics_mode",
    "pad",
    "prepare_deepspeed",
    "prepare_fsdp",
    "reuses_rollouts",
    "scores_old_logps",
]

# Private GRPOTrainer methods overridden here -> the parameters the overrides read or pass on, in order.
GRPO_OVERRIDES = {
    "_generate_and_score_completions": ("inputs",),  # returns the batch dict the loss reads
    "_get_per_token_logps_and_entropies": (
        "model",
        "input_ids",
        "attention_mask",
        "logits_to_keep",
        "batch_size",
        "compute_entropy",
    ),  # returns (logps, entropies, ...)
    "_compute_loss": ("model", "inputs"),  # returns the scalar loss
    "_tokenize_prompts": ("prompts",),  # returns (prompt_ids list, images, multimodal fields)
    "_calculate_rewards": ("inputs", "prompts", "completions", "completion_ids_list"),
}
# GKDTrainer methods overridden (`compute_loss` is transformers' public hook; GKD's version is what `super()` runs).
GKD_OVERRIDES = {
    "generate_on_policy_outputs": ("model", "inputs", "generation_config"),
    "compute_loss": ("model", "inputs", "return_outputs", "num_items_in_batch"),
}
# What TRL's `_calculate_rewards` passes a reward function by keyword: these, every dataset column but
# `REWARD_EXCLUDED_COLUMNS` (one list per column), and `OPTIONAL_REWARD_KWARGS` when the run has them (environments).
REWARD_KWARGS = ("prompts", "completions", "completion_ids", "trainer_state", "log_extra", "log_metric")
REWARD_EXCLUDED_COLUMNS = ("prompt", "completion", "completion_ids")
OPTIONAL_REWARD_KWARGS = ("environments",)
# transformers `Trainer` methods overridden by `trl_attention.checkpointing` (both trainers; resuming) -> the
# parameters the overrides read or pass on.
TRAINER_CHECKPOINT_OVERRIDES = {
    "_load_from_checkpoint": ("resume_from_checkpoint", "model"),
    "_load_best_model": (),
    "_load_optimizer_and_scheduler": ("checkpoint",),
    "_save_checkpoint": ("model", "trial"),
    "_get_output_dir": ("trial",),
    "train": ("resume_from_checkpoint",),
}
# GRPOTrainer's in-memory rollout state that `RolloutBufferMixin` saves with each checkpoint: the buffered
# generation batch and the micro-step counter `_prepare_inputs` regenerates by (every steps_per_generation *
# num_iterations micro-steps).
ROLLOUT_STATE_ATTRIBUTES = ("_step", "_buffered_inputs")
# Trainer attributes this package reads (set by TRL's __init__; `ref_model` is None without a reference model).
GRPO_ATTRIBUTES = (
    "_metrics",
    "_logs",
    "_tokenizer",
    "loss_type",
    "num_iterations",
    "max_completion_length",
    "use_vllm",
    "vllm_importance_sampling_correction",
    "reward_funcs",
    "rollout_func",
    "environment_factories",
    "tools",
    "log_completions",
    "ref_model",
    "chat_template",
    "chat_template_kwargs",
    "generation_config",
    "generation_kwargs",
    "log_multimodal",
)
GKD_ATTRIBUTES = ("_metrics", "teacher_model", "generation_config", "generation_kwargs")
# Class attributes of TRL's trainers that both trainers extend; TRL's `create_model_card` reads them, and these keys
# of `_paper`.
CLASS_ATTRIBUTES = ("_tag_names", "_name", "_paper")
PAPER_KEYS = ("title", "id", "citation")
# Keys of GRPOTrainer's rollout log `_logs` read (and, for "images", extended) by the heatmap callback.
LOGS_KEYS = ("prompt", "completion", "images")
# Set by transformers' training loop (not at construction), read by TRL's `_compute_loss` and `aggregate_like_trl`.
TRAINING_LOOP_ATTRIBUTES = ("current_gradient_accumulation_steps",)

# Multimodal keyword arguments TRL passes to `_get_per_token_logps_and_entropies` (and keeps in the batch).
SCORING_FORWARD_KEYS = (
    "pixel_values",
    "image_grid_thw",
    "num_images",
    "pixel_attention_mask",
    "spatial_shapes",
    "num_tiles",
    "image_sizes",
    "token_type_ids",
    "mm_token_type_ids",
    "image_position_ids",
)
# Batch keys the teacher forward takes as they are (mm/token type ids already span prompt + completion).
TEACHER_FORWARD_KEYS = (
    "pixel_values",
    "image_grid_thw",
    "pixel_attention_mask",
    "image_sizes",
    "token_type_ids",
    "mm_token_type_ids",
    "spatial_shapes",
    "image_position_ids",
)
# Keys of TRL's training batch read by the loss terms: always there, and there when TRL puts them.
LOSS_BATCH_KEYS = ("prompt_ids", "prompt_mask", "completion_ids", "completion_mask", "advantages")
OPTIONAL_LOSS_BATCH_KEYS = ("tool_mask", "num_items_in_batch", "old_per_token_logps", "importance_sampling_ratio")
# Keys this package adds to TRL's batch: TRL's buffering must shuffle and split them with their rows.
PACKAGE_BATCH_KEYS = ("old_attention_probs", "group_attention_target")
# Keys this package adds as per-row Python lists (video batches' `visual_inputs`, one dict per row): TRL's shuffle
# permutes lists and its split slices them, keeping each entry with its row.
PACKAGE_LIST_BATCH_KEYS = ("visual_inputs",)
# Keys TRL's `_compute_loss` reads that this package passes through untouched (reference, vLLM and IS terms).
TRL_ONLY_LOSS_BATCH_KEYS = ("ref_per_token_logps", "sampling_per_token_logps")
# Multimodal fields of `_tokenize_prompts`'s third result that the attention rewards read (when the processor
# makes them).
TOKENIZED_PROMPT_FIELDS = ("pixel_values", "image_grid_thw", "mm_token_type_ids")
# Keys of GKD's batches: read by GKDTrainer's `compute_loss` and `generate_on_policy_outputs`, and by the overrides.
GKD_BATCH_KEYS = ("input_ids", "attention_mask", "labels", "prompts", "prompt_attention_mask")
# loss_type values whose normalisation `aggregate_like_trl` restates.
LOSS_TYPES = ("grpo", "sapo", "bnpo", "dr_grpo", "cispo", "dapo", "vespo", "luspo")
# TRL helpers used as they are -> the parameters this package passes (positionally first, then by name), in
# TRL's order.
HELPER_PARAMETERS = {
    "pad": ("tensors", "padding_value", "padding_side"),
    "disable_dropout_in_model": ("model",),
    "prepare_deepspeed": ("model", "accelerator"),
    "prepare_fsdp": ("model", "accelerator"),
    "generalized_jsd_loss": ("student_logits", "teacher_logits", "beta", "temperature", "reduction"),
}


def reuses_rollouts(trainer) -> bool:
    """Whether some optimizer step trains on rollouts that earlier parameters generated (the first half of TRL's
    old-logps condition): otherwise the policy of every loss forward is the rollout policy."""
    generate_every = trainer.args.steps_per_generation * trainer.num_iterations
    return trainer.args.gradient_accumulation_steps % generate_every != 0


def scores_old_logps(trainer) -> bool:
    """TRL's own condition for running the old-logps forward in `_generate_and_score_completions`."""
    return reuses_rollouts(trainer) or bool(trainer.use_vllm and trainer.vllm_importance_sampling_correction)


def loss_mask(inputs) -> torch.Tensor:
    """The tokens TRL's loss counts: the completion mask, times the tool mask when tools answered in-line."""
    mask = inputs["completion_mask"]
    return mask * inputs["tool_mask"] if "tool_mask" in inputs else mask


def metrics_mode(trainer) -> str:
    return "train" if trainer.model.training else "eval"


def importance_weighted(trainer, per_token: torch.Tensor, inputs) -> torch.Tensor:
    """`per_token` times TRL's vLLM importance-sampling ratio, exactly when TRL weights its policy loss by it
    (`use_vllm`, `vllm_importance_sampling_correction`, `loss_type` other than "vespo"): (B, C) per token or (B, 1) per
    sequence, truncated or 0 where TRL's mask modes drop a token / sequence. RAL's term and the teacher terms are
    expectations over the same vLLM-sampled rollouts, so they take the same correction (docs/trl-internals.md)."""
    correct = getattr(trainer, "use_vllm", False) and getattr(trainer, "vllm_importance_sampling_correction", False)
    ratio = inputs.get("importance_sampling_ratio") if correct and trainer.loss_type != "vespo" else None
    return per_token if ratio is None else per_token * ratio.to(per_token.dtype)


def aggregate_like_trl(trainer, per_token: torch.Tensor, mask: torch.Tensor, inputs) -> torch.Tensor:
    """Reduce a (B, C) per-token term exactly as GRPOTrainer._compute_loss reduces its policy loss for the
    trainer's `loss_type` (gradient-accumulation scaling included)."""
    training = trainer.model.training
    accumulation = trainer.current_gradient_accumulation_steps if training else 1.0
    masked = per_token * mask
    loss_type = trainer.loss_type
    if loss_type in ("grpo", "sapo"):
        return (masked.sum(-1) / mask.sum(-1).clamp(min=1.0)).mean() / accumulation
    if loss_type == "bnpo":
        return masked.sum() / mask.sum().clamp(min=1.0) / accumulation
    if loss_type == "dr_grpo":
        return masked.sum() / (per_token.size(0) * trainer.max_completion_length) / accumulation
    if loss_type in ("cispo", "dapo", "vespo"):
        normalizer = inputs["num_items_in_batch"].clamp(min=1.0) / trainer.accelerator.num_processes
        if training:
            normalizer = normalizer * trainer.current_gradient_accumulation_steps / trainer.args.steps_per_generation
        return masked.sum() / normalizer
    if loss_type == "luspo":
        return masked.sum(-1).mean() / accumulation
    raise ValueError(f"trl_attention does not know how TRL normalises loss_type={loss_type!r}")


def log_global_masked_mean(trainer, name: str, values: torch.Tensor, mask: torch.Tensor) -> float | None:
    """Append the token mean of `values` over `mask`, summed over all processes, to TRL's `_metrics` under `name`
    (TRL averages a step's entries when it logs). Nothing is appended when no process measured a token (every
    completion masked): "nothing measured" is not 0.0. The count is global, so every rank skips alike and the
    `_metrics` lists stay the same length on all ranks; returns None then."""
    totals = torch.stack([(values * mask).sum(), mask.sum()])
    total, count = trainer.accelerator.reduce(totals, reduction="sum").tolist()
    if count == 0:
        return None
    value = total / count
    trainer._metrics[metrics_mode(trainer)][name].append(value)
    return value


def generalized_jsd(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, beta: float, temperature: float = 1.0
) -> torch.Tensor:
    """(B, C) per-token generalized JSD of GKD (TRL's own `GKDTrainer.generalized_jsd_loss`, summed over the
    vocabulary), so the GRPO teacher term is exactly GKD's token loss on the rollouts. `temperature` divides both
    logits (GKD's convention): the GRPO term passes TRL's sampling temperature, the one its policy logps use."""
    return GKDTrainer.generalized_jsd_loss(
        student_logits, teacher_logits, beta=beta, temperature=temperature, reduction="none"
    ).sum(-1)
