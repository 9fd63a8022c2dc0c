"""RAL (AttentionGRPOTrainer) on a VLM with the synthetic grounding data.

Every AttentionGRPOConfig / GRPOConfig field is a flag (`--help` lists them with their help text):

    python examples/ral_grpo.py --output_dir out/ral --max_steps 20 --num_iterations 2 --attn_coef 1.0 \
        --per_device_train_batch_size 4 --num_generations 4 --max_completion_length 16 --use_cpu --report_to none

    # a real checkpoint (GPU): add --model_name_or_path Qwen/Qwen2.5-VL-7B-Instruct --bf16
"""

from __future__ import annotations

from dataclasses import dataclass, field

from transformers import AutoModelForImageTextToText, AutoProcessor, HfArgumentParser

from trl_attention import AttentionGRPOConfig, AttentionGRPOTrainer
from trl_attention.tiny import build_tiny_vlm, make_grounding_dataset


@dataclass
class ScriptArguments:
    model_name_or_path: str | None = field(default=None, metadata={"help": "Model id or path; default: tiny VLM."})
    num_samples: int = field(default=256, metadata={"help": "Synthetic grounding examples to train on."})


def answer_reward(completions, answer, **kwargs):
    """1 when the completion names the answer word, else 0."""
    return [float(a in c[0]["content"].lower()) for c, a in zip(completions, answer)]


def main():
    script_args, training_args = HfArgumentParser((ScriptArguments, AttentionGRPOConfig)).parse_args_into_dataclasses()
    if script_args.model_name_or_path is None:
        model, processor = build_tiny_vlm(seed=training_args.seed)
    else:
        model = AutoModelForImageTextToText.from_pretrained(script_args.model_name_or_path, attn_implementation="sdpa")
        processor = AutoProcessor.from_pretrained(script_args.model_name_or_path, padding_side="left")
    trainer = AttentionGRPOTrainer(
        model=model, reward_funcs=answer_reward, args=training_args, processing_class=processor,
        train_dataset=make_grounding_dataset(script_args.num_samples, seed=training_args.seed),
    )  # fmt: skip
    trainer.train()
    trainer.save_model(training_args.output_dir)


if __name__ == "__main__":
    main()
