"""`trl-attention grpo`: RAL / SAYO training from a YAML config and command-line overrides.

    trl-attention grpo --config examples/configs/grpo_tiny.yaml --max_steps 2
    accelerate launch -m trl_attention grpo --config run.yaml          # several GPUs / DeepSpeed (--config_file)

Options are the fields of `GRPOScriptArguments` (below), `AttentionGRPOConfig` (every TRL GRPOConfig field plus
`attn_coef`, `attn_layer`, ...) and TRL's `ModelConfig` (model name, dtype, LoRA); `--help` lists them all.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from dataclasses import dataclass, field

from trl import ModelConfig, get_peft_config

from .cli_config import ConfigError, add_training_command, parse_config
from .ral import AttentionGRPOConfig, AttentionGRPOTrainer
from .recipes import (
    PROMPT_FORMATS,
    REWARDS,
    freeze_vision_tower,
    load_model_and_processor,
    prepare_dataset,
    resolve_rewards,
    synthetic_vqa,
)

__all__ = ["GRPOScriptArguments", "build_grpo_trainer", "parse_args", "register"]

PROG = "trl-attention grpo"


@dataclass
class GRPOScriptArguments:
    """Data, rewards and run options of `trl-attention grpo` (the model options are TRL's `ModelConfig`)."""

    tiny: bool = field(
        default=False,
        metadata={"help": "Use the embedded tiny Qwen2.5-VL and synthetic grounding data (offline, seconds on CPU); "
                  "the model and dataset options are then ignored."},
    )  # fmt: skip
    dataset_name: str | None = field(
        default=None, metadata={"help": "Hub dataset name or local path for `datasets.load_dataset`."}
    )
    dataset_config: str | None = field(default=None, metadata={"help": "Dataset configuration name."})
    dataset_train_split: str = field(default="train", metadata={"help": "Split to train on."})
    num_samples: int | None = field(
        default=None, metadata={"help": "Train on the first N rows (default: all; 256 synthetic rows with --tiny)."}
    )
    question_column: str | None = field(
        default=None, metadata={"help": "Question column (default: the first of problem, question, query)."}
    )
    answer_column: str | None = field(
        default=None, metadata={"help": "Answer column (default: the first of solution, answer, label, answers)."}
    )
    image_column: str | None = field(default=None, metadata={"help": "Image column (default: image or images)."})
    prompt_format: str = field(
        default="answer",
        metadata={"help": f"Instruction appended to each question, one of {sorted(PROMPT_FORMATS)}: 'reasoning' "
                  "(<think> then <answer>, RAL), 'answer' (<answer> only, RAL-zero), 'none'."},
    )  # fmt: skip
    rewards: list[str] = field(
        default_factory=lambda: ["accuracy", "format"],
        metadata={"help": f"Reward functions, from {sorted(REWARDS)} ('sayo' = RegionAttentionReward, needs a "
                  "`boxes` column) or dotted import paths; weights via reward_weights."},
    )  # fmt: skip
    freeze_vision: bool = field(
        default=False, metadata={"help": "Freeze the vision encoder and projector (RAL trains only the LM)."}
    )
    heatmap_every: int = field(
        default=0, metadata={"help": "Log attention heatmaps every N steps to the report_to backends (0: off)."}
    )

    def __post_init__(self):
        if self.prompt_format not in PROMPT_FORMATS:
            raise ValueError(f"prompt_format must be one of {sorted(PROMPT_FORMATS)}, got {self.prompt_format!r}")
        if self.heatmap_every < 0 or (self.num_samples is not None and self.num_samples < 1):
            raise ValueError("heatmap_every must be >= 0 and num_samples >= 1")


def parse_args(argv: list[str], defaults: dict | None = None):
    """(script args, AttentionGRPOConfig, ModelConfig) from argv (may contain `--config FILE.yaml`)."""
    return parse_config((GRPOScriptArguments, AttentionGRPOConfig, ModelConfig), argv, PROG, defaults)


def build_grpo_trainer(script_args, training_args, model_args):
    """Model, processor, dataset, rewards and the AttentionGRPOTrainer they make (shared by the example scripts)."""
    from datasets import load_dataset

    reward_funcs = resolve_rewards(script_args.rewards, script_args.prompt_format)  # fail before loading a model
    if script_args.tiny:  # saved and loaded back, so it takes the real models' path (and TRL can build a ref model)
        from .tiny import save_tiny_vlm

        path = save_tiny_vlm(tempfile.mkdtemp(prefix="trl_attention_tiny_"), seed=training_args.seed)
        atexit.register(shutil.rmtree, path, True)
        model, processor = load_model_and_processor(path, None, model_args.attn_implementation)
        raw = synthetic_vqa(script_args.num_samples or 256, seed=training_args.seed)
    else:
        if model_args.model_name_or_path is None or script_args.dataset_name is None:
            raise ConfigError("model_name_or_path and dataset_name are required (or --tiny for the embedded model)")
        model, processor = load_model_and_processor(
            model_args.model_name_or_path, model_args.dtype, model_args.attn_implementation, model_args.model_revision
        )
        raw = load_dataset(script_args.dataset_name, script_args.dataset_config, split=script_args.dataset_train_split)
        if script_args.num_samples is not None:
            raw = raw.select(range(min(script_args.num_samples, len(raw))))
    if script_args.freeze_vision:
        freeze_vision_tower(model)
    columns = (script_args.question_column, script_args.answer_column, script_args.image_column)
    dataset = prepare_dataset(raw, script_args.prompt_format, *((None,) * 3 if script_args.tiny else columns))
    trainer = AttentionGRPOTrainer(
        model=model, reward_funcs=reward_funcs, args=training_args,
        train_dataset=dataset, processing_class=processor, peft_config=get_peft_config(model_args),
    )  # fmt: skip
    if script_args.heatmap_every:
        from .callbacks import AttentionHeatmapCallback

        examples = dataset.select(range(min(2, len(dataset))))
        trainer.add_callback(AttentionHeatmapCallback(trainer, examples, every_n_steps=script_args.heatmap_every))
    return trainer


def run(argv: list[str]) -> int:
    script_args, training_args, model_args = parse_args(argv)
    try:
        trainer = build_grpo_trainer(script_args, training_args, model_args)
    except ValueError as error:  # bad reward names, dataset columns, boxes: the message names the culprit
        raise ConfigError(str(error)) from error
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model(training_args.output_dir)
    trainer.accelerator.print(f"Trained {trainer.state.global_step} steps; model saved to {training_args.output_dir}")
    return 0


def register(commands):
    """The `grpo` subcommand."""
    return add_training_command(
        commands, "grpo", "RAL / SAYO GRPO training (AttentionGRPOTrainer) from a YAML config + overrides.", run
    )
