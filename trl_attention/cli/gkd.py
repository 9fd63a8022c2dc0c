"""`trl-attention gkd`: on-policy attention distillation (`AttentionGKDTrainer`) from a YAML config + overrides.

    trl-attention gkd --tiny --max_steps 2 --use_cpu true --report_to none
    accelerate launch -m trl_attention gkd --config distill.yaml \\
        --model_name_or_path Qwen/Qwen2.5-VL-7B-Instruct --teacher_model_name_or_path Qwen/Qwen2.5-VL-32B-Instruct

Options: `GKDScriptArguments` (the data options shared with `grpo`), `AttentionGKDConfig` (every TRL GKDConfig
field plus `attn_distill_coef`, `gkd_coef`, ...) and TRL's `ModelConfig`. The teacher must share the student's
tokenizer. Datasets with `messages` or `prompt` + `completion` are used as they are; VQA-style datasets get the
formatted answer as the completion (used by GKD's off-policy part, `lmbda < 1`).
"""

from __future__ import annotations

from dataclasses import dataclass

from trl import ModelConfig, get_peft_config

from ..distill import AttentionGKDConfig, AttentionGKDTrainer
from .data import DataArguments, add_heatmap_callback, load_model_and_data
from .training import ConfigError, add_training_command, parse_config

__all__ = ["GKDScriptArguments", "TINY_TEACHER", "build_gkd_trainer", "parse_args", "register"]

# --tiny: a teacher of another depth, width and head count than the tiny student, same tokenizer (32B -> 7B).
TINY_TEACHER = {
    "num_hidden_layers": 6,
    "hidden_size": 96,
    "intermediate_size": 192,
    "num_attention_heads": 6,
    "num_key_value_heads": 3,
}

HELP = "On-policy attention distillation (AttentionGKDTrainer) from a YAML config + overrides."


@dataclass
class GKDScriptArguments(DataArguments):
    """Data and run options of `trl-attention gkd` (the teacher is GKDConfig's `teacher_model_name_or_path`)."""


def parse_args(argv: list[str], defaults: dict | None = None):
    """(script args, AttentionGKDConfig, ModelConfig) from argv (may contain `--config FILE.yaml`)."""
    return parse_config((GKDScriptArguments, AttentionGKDConfig, ModelConfig), argv, "trl-attention gkd", defaults)


def _with_completion(dataset, prompt_format: str):
    if {"messages", "completion"} & set(dataset.column_names):
        return dataset

    def completion(row):
        text = row["solution"] if prompt_format == "none" else f"<answer>{row['solution']}</answer>"
        return {"completion": [{"role": "assistant", "content": [{"type": "text", "text": text}]}]}

    return dataset.map(completion)


def build_gkd_trainer(script_args, training_args, model_args):
    """Student, teacher, processor, dataset and the AttentionGKDTrainer they make."""
    if script_args.tiny:
        from ..tiny import build_tiny_vlm

        teacher = build_tiny_vlm(seed=training_args.seed + 1, **TINY_TEACHER)[0]
        training_args.teacher_model_init_kwargs = None  # an instance: nothing to load
    elif training_args.teacher_model_name_or_path is None:
        raise ConfigError("teacher_model_name_or_path is required (or --tiny for the embedded models)")
    else:
        teacher = training_args.teacher_model_name_or_path  # the trainer loads it (as a VLM for a processor)
    model, processor, dataset = load_model_and_data(script_args, model_args, training_args.seed)
    trainer = AttentionGKDTrainer(
        model=model,
        teacher_model=teacher,
        args=training_args,
        processing_class=processor,
        train_dataset=_with_completion(dataset, script_args.prompt_format),
        peft_config=get_peft_config(model_args),
    )
    add_heatmap_callback(trainer, script_args, dataset)
    return trainer


def register(commands):
    """The `gkd` subcommand."""
    return add_training_command(commands, "gkd", HELP, parse_args, build_gkd_trainer)
