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
from functools import partial

from ..distill.arguments import GKD_ARGUMENTS
from .data import DataArguments, check_loadable, check_sources
from .training import ConfigError, TrainingCommand, build_trainer

__all__ = ["COMMAND", "GKDScriptArguments", "TINY_TEACHER", "build_gkd_trainer", "parse_args", "register"]

# --tiny: a teacher of another depth, width and head count than the tiny student, same tokenizer (32B -> 7B).
TINY_TEACHER = {
    "num_hidden_layers": 6,
    "hidden_size": 96,
    "intermediate_size": 192,
    "num_attention_heads": 6,
    "num_key_value_heads": 3,
}


@dataclass
class GKDScriptArguments(DataArguments):
    """Data and run options of `trl-attention gkd` (the teacher is GKDConfig's `teacher_model_name_or_path`)."""


def _config() -> type:
    from ..distill import AttentionGKDConfig

    return AttentionGKDConfig


def _with_completion(dataset, prompt_format: str):
    if {"messages", "completion"} & set(dataset.column_names):
        return dataset

    def completion(row):
        text = row["solution"] if prompt_format == "none" else f"<answer>{row['solution']}</answer>"
        return {"completion": [{"role": "assistant", "content": [{"type": "text", "text": text}]}]}

    return dataset.map(completion)


def build_gkd_trainer(script_args, training_args, model_args):
    """Student, teacher, processor, dataset and the AttentionGKDTrainer they make."""
    from ..distill import AttentionGKDTrainer

    check_sources(script_args, model_args, training_args.teacher_model_name_or_path, tiny_teacher=True)
    if script_args.tiny:
        from ..tiny import build_tiny_vlm

        teacher = build_tiny_vlm(seed=training_args.seed + 1, **TINY_TEACHER)[0]
        training_args.teacher_model_init_kwargs = None  # an instance: nothing to load
    elif training_args.teacher_model_name_or_path is None:
        raise ConfigError("teacher_model_name_or_path is required (or --tiny for the embedded models)")
    else:
        teacher = training_args.teacher_model_name_or_path  # the trainer loads it (as a VLM for a processor)
        check_loadable("teacher_model_name_or_path", teacher)
    return build_trainer(
        AttentionGKDTrainer,
        script_args,
        training_args,
        model_args,
        prepare=partial(_with_completion, prompt_format=script_args.prompt_format),
        teacher_model=teacher,
    )


COMMAND = TrainingCommand(
    name="gkd",
    script_arguments=GKDScriptArguments,
    own_arguments=GKD_ARGUMENTS,  # AttentionGKDConfig = GKDConfig + these
    config=_config,
    build=build_gkd_trainer,
    trl_config="GKDConfig",
    trl_docs="https://huggingface.co/docs/trl/gkd_trainer",
    examples="--teacher_model_name_or_path (required unless --tiny), --lmbda, --beta, --max_new_tokens, "
    "--learning_rate, --model_name_or_path, --lora_r, --deepspeed",
)
parse_args = COMMAND.parse  # (script args, AttentionGKDConfig, ModelConfig) from argv; the example scripts use it
register = COMMAND.register
