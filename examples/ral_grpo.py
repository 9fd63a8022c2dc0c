"""RAL (AttentionGRPOTrainer) on Qwen2.5-VL-7B with a reasoning format, on a public multimodal reasoning dataset.

The paper's setup (docs/papers.md section 1): vision encoder and projector frozen, 8 rollouts per prompt, reward
0.9 * accuracy + 0.1 * format, attn_coef in {0.5, 1, 5}, temperature 0.9, lr 1e-5, KL 0.04. RAL's term acts only on
reused rollouts, hence num_iterations=2. Every option of `trl-attention grpo --help-all` is a flag (or a YAML key with
`--config`), and overrides the recipe below:

    accelerate launch --num_processes 8 examples/ral_grpo.py --output_dir out/ral --bf16 true
    accelerate launch --config_file <deepspeed.yaml> examples/ral_grpo.py --dataset_name <other> --attn_coef 5

    # the same code on the embedded tiny VLM and synthetic data, on CPU (what CI runs):
    python examples/ral_grpo.py --tiny --output_dir out/ral-tiny --max_steps 2

RAL-zero (answer-only format) is `examples/ral_zero_grpo.py`, i.e. this recipe with `--prompt_format answer`.
"""

from __future__ import annotations

import sys

import torch

from trl_attention.cli.grpo import build_grpo_trainer, parse_args
from trl_attention.cli.training import recipe_defaults, train_and_save

RECIPE = {
    "model_name_or_path": "Qwen/Qwen2.5-VL-7B-Instruct",
    "dtype": "bfloat16",
    "bf16": True,
    "dataset_name": "lmms-lab/multimodal-open-r1-8k-verified",  # image, problem, solution
    "prompt_format": "reasoning",
    "rewards": ["accuracy", "format"],
    "reward_weights": [0.9, 0.1],
    "freeze_vision_tower": True,
    "attn_coef": 1.0,
    "num_iterations": 2,
    "num_generations": 8,
    "per_device_train_batch_size": 8,
    "temperature": 0.9,
    "learning_rate": 1e-5,
    "beta": 0.04,
    "max_completion_length": 768,
    "gradient_checkpointing": True,
    "logging_steps": 1,
    "log_completions": True,
    "heatmap_every": 50,
    "report_to": ["tensorboard"],
    "save_steps": 200,
}
# --tiny: the embedded model and synthetic data, sized for a CPU. A random tiny model never gets the accuracy or
# format reward, so a dense shaping reward (char_overlap with the answer word) is added: otherwise every advantage,
# and with it every gradient and RAL's term, would be 0.
TINY = {
    "num_samples": 32,
    "num_generations": 4,
    "per_device_train_batch_size": 4,
    "max_completion_length": 16,
    "learning_rate": 3e-3,
    "max_steps": 20,
    "heatmap_every": 0,
    "report_to": ["none"],
    "log_completions": False,
    "save_strategy": "no",
    "dtype": None,
    "bf16": torch.cuda.is_available(),
    "use_cpu": not torch.cuda.is_available(),
    "rewards": ["accuracy", "format", "char_overlap"],
    "reward_weights": [0.9, 0.1, 0.5],
}


def main(argv=None, **overrides):
    argv = sys.argv[1:] if argv is None else list(argv)
    script_args, training_args, model_args = parse_args(
        argv, defaults=recipe_defaults(argv, RECIPE, TINY, **overrides)
    )
    return train_and_save(build_grpo_trainer(script_args, training_args, model_args), training_args)


if __name__ == "__main__":
    main()
