"""`trl-attention grpo`: RAL / SAYO training from a YAML config and command-line overrides.

    trl-attention grpo --config examples/configs/grpo_tiny.yaml --max_steps 2
    accelerate launch -m trl_attention grpo --config run.yaml          # several GPUs / DeepSpeed (--config_file)

Options are the fields of `GRPOScriptArguments` (data, rewards), `AttentionGRPOConfig` (every TRL GRPOConfig field
plus `attn_coef`, `attn_layer`, ...) and TRL's `ModelConfig` (model name, dtype, LoRA). `--help` lists this
command's own options (without importing TRL), `--help-all` all of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..ral.arguments import GRPO_ARGUMENTS
from .recipes import REWARDS, resolve_rewards
from .data import DataArguments, check_loadable, check_sources
from .training import TrainingCommand, build_trainer

__all__ = ["COMMAND", "GRPOScriptArguments", "build_grpo_trainer", "parse_args", "register"]


@dataclass
class GRPOScriptArguments(DataArguments):
    """Data, rewards and run options of `trl-attention grpo`."""

    rewards: list[str] = field(
        default_factory=lambda: ["accuracy", "format"],
        metadata={
            "help": f"Reward functions, from {sorted(REWARDS)} ('sayo' = RegionAttentionReward, needs a "
            "`boxes` column) or dotted import paths; weights via reward_weights."
        },
    )
    teacher_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Teacher model (path or hub id, same tokenizer) for RAL's distillation terms: set gkd_coef "
            "and/or attn_distill_coef > 0."
        },
    )


def _config() -> type:
    from ..ral import AttentionGRPOConfig

    return AttentionGRPOConfig


def build_grpo_trainer(script_args, training_args, model_args):
    """Model, processor, dataset, rewards and the AttentionGRPOTrainer they make (shared by the example scripts)."""
    from ..ral import AttentionGRPOTrainer

    teacher = script_args.teacher_model_name_or_path
    check_sources(script_args, model_args, teacher=teacher)  # before any loading
    if teacher is not None:
        check_loadable("teacher_model_name_or_path", teacher)
    reward_funcs = resolve_rewards(script_args.rewards, script_args.prompt_format)  # fail before loading a model
    return build_trainer(
        AttentionGRPOTrainer,
        script_args,
        training_args,
        model_args,
        reward_funcs=reward_funcs,
        teacher_model=teacher,
    )


COMMAND = TrainingCommand(
    name="grpo",
    script_arguments=GRPOScriptArguments,
    own_arguments=GRPO_ARGUMENTS,  # AttentionGRPOConfig = GRPOConfig + these
    config=_config,
    build=build_grpo_trainer,
    trl_config="GRPOConfig",
    trl_docs="https://huggingface.co/docs/trl/grpo_trainer",
    examples="--learning_rate, --num_generations, --num_iterations (RAL's term needs > 1), --beta, "
    "--reward_weights, --model_name_or_path, --lora_r, --deepspeed",
)
parse_args = COMMAND.parse  # (script args, AttentionGRPOConfig, ModelConfig) from argv; the example scripts use it
register = COMMAND.register
