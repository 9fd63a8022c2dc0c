"""On-policy attention distillation, Qwen2.5-VL-32B teacher -> Qwen2.5-VL-7B student (docs/papers.md section 1).

loss = GKD's generalized JSD on the student's own rollouts + gamma * JSD of the final-layer attention policies
(`AttentionGKDTrainer`). The paper searched gamma in {0.05, 0.5, 1.0}. Every option of `trl-attention gkd
--help-all` is a flag (or a YAML key with `--config`) and overrides the recipe below.
The teacher runs under ZeRO-3 sharding when the DeepSpeed config is stage 3 (see docs/scale-out.md).

    accelerate launch --config_file trl_attention/configs/accelerate/zero3.yaml examples/attention_distill.py \
        --model_name_or_path Qwen/Qwen2.5-VL-7B-Instruct --teacher_model_name_or_path Qwen/Qwen2.5-VL-32B-Instruct \
        --dataset_name lmms-lab/multimodal-open-r1-8k-verified --output_dir out/distill

    # offline, on CPU, with a tiny student and a deeper, wider tiny teacher (what the test suite runs):
    python examples/attention_distill.py --tiny --output_dir out/distill-tiny --max_steps 2

Datasets with `messages` or `prompt` + `completion` (and `images` / `image`) are used as they are; VQA-style
datasets (question, answer, image) get the formatted answer as the completion for GKD's off-policy part.
"""

from __future__ import annotations

import sys

import torch

from trl_attention.cli.gkd import build_gkd_trainer, parse_args
from trl_attention.cli.training import recipe_defaults, train_and_save

RECIPE = {
    "model_name_or_path": "Qwen/Qwen2.5-VL-7B-Instruct",
    "dtype": "bfloat16",
    "bf16": True,
    "teacher_model_name_or_path": "Qwen/Qwen2.5-VL-32B-Instruct",  # same tokenizer as the student
    "teacher_model_init_kwargs": {"dtype": "bfloat16", "attn_implementation": "sdpa"},
    "dataset_name": "lmms-lab/multimodal-open-r1-8k-verified",
    "prompt_format": "reasoning",
    "lmbda": 1.0,
    "beta": 0.5,
    "attn_distill_coef": 0.5,
    "gkd_coef": 1.0,
    "learning_rate": 1e-6,
    "max_new_tokens": 256,
    "temperature": 0.9,
    "per_device_train_batch_size": 1,
    "gradient_accumulation_steps": 8,
    "max_length": 4096,
    "freeze_vision_tower": True,
    "gradient_checkpointing": True,
    "gradient_checkpointing_kwargs": {"use_reentrant": False},
    "logging_steps": 1,
    "save_steps": 200,
}
# --tiny: the embedded student and a deeper, wider tiny teacher with another head count, sized for a CPU.
TINY = {
    "num_samples": 32,
    "per_device_train_batch_size": 2,
    "gradient_accumulation_steps": 1,
    "max_new_tokens": 8,
    "max_steps": 20,
    "report_to": ["none"],
    "save_strategy": "no",
    "dtype": None,
    "learning_rate": 1e-4,
    "bf16": torch.cuda.is_available(),
    "use_cpu": not torch.cuda.is_available(),
}


def parse(argv, **overrides):
    """(script args, AttentionGKDConfig, ModelConfig) with the recipe's defaults under argv."""
    return parse_args(list(argv), defaults=recipe_defaults(argv, RECIPE, TINY, **overrides))


def main(argv=None, **overrides):
    script_args, training_args, model_args = parse(sys.argv[1:] if argv is None else argv, **overrides)
    return train_and_save(build_gkd_trainer(script_args, training_args, model_args), training_args)


if __name__ == "__main__":
    main()
