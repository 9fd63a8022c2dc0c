"""`trl-attention grpo`: RAL / SAYO training from a YAML config and command-line overrides.

    trl-attention grpo --config examples/configs/grpo_tiny.yaml --max_steps 2
    accelerate launch -m trl_attention grpo --config run.yaml          # several GPUs / DeepSpeed (--config_file)

Options are the fields of `GRPOScriptArguments` (data, rewards), `AttentionGRPOConfig` (every TRL GRPOConfig field
plus `attn_coef`, `attn_layer`, ...) and TRL's `ModelConfig` (model name, dtype, LoRA); `--help` lists them all.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import ModelConfig, get_peft_config

from ..ral import AttentionGRPOConfig, AttentionGRPOTrainer
from ..recipes import REWARDS, resolve_rewards
from .data import DataArguments, add_heatmap_callback, load_model_and_data
from .training import add_training_command, parse_config

__all__ = ["GRPOScriptArguments", "build_grpo_trainer", "parse_args", "register"]

HELP = "RAL / SAYO GRPO training (AttentionGRPOTrainer) from a YAML config + overrides."


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


def parse_args(argv: list[str], defaults: dict | None = None):
    """(script args, AttentionGRPOConfig, ModelConfig) from argv (may contain `--config FILE.yaml`)."""
    return parse_config((GRPOScriptArguments, AttentionGRPOConfig, ModelConfig), argv, "trl-attention grpo", defaults)


def build_grpo_trainer(script_args, training_args, model_args):
    """Model, processor, dataset, rewards and the AttentionGRPOTrainer they make (shared by the example scripts)."""
    reward_funcs = resolve_rewards(script_args.rewards, script_args.prompt_format)  # fail before loading a model
    model, processor, dataset = load_model_and_data(script_args, model_args, training_args.seed)
    trainer = AttentionGRPOTrainer(
        model=model,
        reward_funcs=reward_funcs,
        args=training_args,
        train_dataset=dataset,
        processing_class=processor,
        peft_config=get_peft_config(model_args),
        teacher_model=script_args.teacher_model_name_or_path,
    )
    add_heatmap_callback(trainer, script_args, dataset)
    return trainer


def register(commands):
    """The `grpo` subcommand."""
    return add_training_command(commands, "grpo", HELP, parse_args, build_grpo_trainer)
