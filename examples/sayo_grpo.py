"""SAYO: GRPO with the region attention reward (+ format and accuracy rewards) on Qwen2.5-VL-7B.

The reference recipe (docs/papers.md section 2): LoRA r16/alpha32, lr 5e-6, KL beta 0.001, 16 generations, temperature
1.0, top-p 0.9, max completion 110 tokens, DeepSpeed ZeRO-1. Every GRPOConfig field is a flag.

    accelerate launch examples/sayo_grpo.py --model_name_or_path Qwen/Qwen2.5-VL-7B-Instruct \
        --dataset_path my_grounding_dataset --output_dir out/sayo --bf16 true

    # offline, on CPU, with the tiny VLM and synthetic data (what the test suite runs; --tiny sizes the run for a
    # CPU: 4 generations, fp32 without a GPU, no reports):
    python examples/sayo_grpo.py --tiny --output_dir out/sayo-tiny --max_steps 2

`--resume_from_checkpoint latest` (or a path) resumes, `--overwrite_output_dir true` starts again over old
checkpoints; an output_dir with checkpoints is otherwise an error (docs/long-runs.md).

The dataset follows the SAYO convention of docs/sayo.md: `prompt`, `image` or `images`, `solution`, `boxes`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, HfArgumentParser

from trl_attention import AttentionGRPOConfig, AttentionGRPOTrainer
from trl_attention.cli.checkpoints import prepare_output_dir
from trl_attention.cli.training import ConfigError, recipe_defaults, train_and_save
from trl_attention.rewards import accuracy_reward
from trl_attention.sayo import RegionAttentionReward, format_reward

RECIPE = dict(
    learning_rate=5e-6,
    beta=0.001,
    num_generations=16,
    temperature=1.0,
    top_p=0.9,
    max_completion_length=110,
    attn_coef=0.0,  # SAYO is a reward; add RAL's term with --attn_coef and --num_iterations 2
)
# --tiny: sized for a CPU (16 generations would need a generation batch of 16 and bf16 needs a GPU).
TINY = dict(
    num_generations=4,
    per_device_train_batch_size=4,
    max_completion_length=16,
    bf16=torch.cuda.is_available(),
    use_cpu=not torch.cuda.is_available(),
    report_to=["none"],
    save_strategy="no",
)


@dataclass
class ScriptArguments:
    model_name_or_path: str = field(default="Qwen/Qwen2.5-VL-7B-Instruct", metadata={"help": "Policy model."})
    dataset_path: str | None = field(default=None, metadata={"help": "A `datasets.load_from_disk` directory."})
    tiny: bool = field(default=False, metadata={"help": "Use the offline tiny VLM and synthetic grounding data."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank (0 trains all weights)."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    reward_weights_sayo: str = field(default="1.0,1.0,1.0", metadata={"help": "region, format, accuracy weights."})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Delete the checkpoint-* directories in output_dir and start from step 0."}
    )


def build(script_args, training_args):
    """Model, processor, dataset and trainer; separate from `main` so tests can inspect the trainer."""
    if script_args.tiny:
        from trl_attention.tiny import build_tiny_vlm, make_grounding_dataset

        model, processor = build_tiny_vlm(seed=training_args.seed)
        dataset = make_grounding_dataset(64, seed=training_args.seed)
    else:
        from datasets import load_from_disk

        model = AutoModelForImageTextToText.from_pretrained(script_args.model_name_or_path, attn_implementation="sdpa")
        processor = AutoProcessor.from_pretrained(script_args.model_name_or_path, padding_side="left")
        dataset = load_from_disk(script_args.dataset_path)
    peft_config = None
    if script_args.lora_r:
        from peft import LoraConfig

        peft_config = LoraConfig(
            r=script_args.lora_r,
            lora_alpha=script_args.lora_alpha,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
        )
    training_args.reward_weights = [float(w) for w in script_args.reward_weights_sayo.split(",")]
    return AttentionGRPOTrainer(
        model=model,
        reward_funcs=[RegionAttentionReward(), format_reward, accuracy_reward],
        args=training_args,
        train_dataset=dataset,
        processing_class=processor,
        peft_config=peft_config,
    )


def parse(argv=None):
    """(ScriptArguments, AttentionGRPOConfig); ConfigError for a model or dataset given with --tiny, a missing
    dataset_path, and an output_dir whose checkpoints would be overwritten (see trl_attention.cli.checkpoints)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = HfArgumentParser((ScriptArguments, AttentionGRPOConfig))
    parser.set_defaults(**recipe_defaults(argv, RECIPE, TINY))
    script_args, training_args = parser.parse_args_into_dataclasses(args=argv)
    given = [f"--{name}" for name in ("model_name_or_path", "dataset_path") if f"--{name}" in argv]
    if script_args.tiny and given:
        raise ConfigError(f"{' and '.join(given)} given with --tiny, which uses the tiny VLM and synthetic data")
    if not script_args.tiny and script_args.dataset_path is None:
        raise ConfigError("--dataset_path is required (or --tiny for the tiny VLM and synthetic data)")
    prepare_output_dir(training_args, overwrite=script_args.overwrite_output_dir)
    return script_args, training_args


def main(argv=None):
    script_args, training_args = parse(argv)
    return train_and_save(build(script_args, training_args), training_args)


if __name__ == "__main__":
    main(sys.argv[1:])
