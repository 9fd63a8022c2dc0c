"""SAYO: GRPO with the region attention reward (+ format and accuracy rewards) on Qwen2.5-VL-7B.

The reference recipe (PAPERS.md section 2): LoRA r16/alpha32, lr 5e-6, KL beta 0.001, 16 generations, temperature
1.0, top-p 0.9, max completion 110 tokens, DeepSpeed ZeRO-1. Every GRPOConfig field is a flag.

    accelerate launch examples/sayo_grpo.py --model_name_or_path Qwen/Qwen2.5-VL-7B-Instruct \
        --dataset_path my_grounding_dataset --output_dir out/sayo --bf16 true

    # offline, on CPU, with the tiny VLM and synthetic data (what the test suite runs):
    python examples/sayo_grpo.py --tiny --output_dir out/sayo-tiny --max_steps 2 --use_cpu true --report_to none

The dataset follows the SAYO convention of docs/sayo.md: `prompt`, `image` or `images`, `solution`, `boxes`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from transformers import AutoModelForImageTextToText, AutoProcessor, HfArgumentParser

from trl_attention import AttentionGRPOConfig, AttentionGRPOTrainer
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


@dataclass
class ScriptArguments:
    model_name_or_path: str = field(default="Qwen/Qwen2.5-VL-7B-Instruct", metadata={"help": "Policy model."})
    dataset_path: str | None = field(default=None, metadata={"help": "A `datasets.load_from_disk` directory."})
    tiny: bool = field(default=False, metadata={"help": "Use the offline tiny VLM and synthetic grounding data."})
    lora_r: int = field(default=16, metadata={"help": "LoRA rank (0 trains all weights)."})
    lora_alpha: int = field(default=32, metadata={"help": "LoRA alpha."})
    reward_weights_sayo: str = field(default="1.0,1.0,1.0", metadata={"help": "region, format, accuracy weights."})


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
    parser = HfArgumentParser((ScriptArguments, AttentionGRPOConfig))
    parser.set_defaults(**RECIPE)
    return parser.parse_args_into_dataclasses(args=argv)


def main(argv=None):
    script_args, training_args = parse(argv)
    trainer = build(script_args, training_args)
    trainer.train()
    trainer.save_model(training_args.output_dir)
    return trainer


if __name__ == "__main__":
    main(sys.argv[1:])
