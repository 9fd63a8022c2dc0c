"""On-policy attention distillation, Qwen2.5-VL-32B teacher -> Qwen2.5-VL-7B student (PAPERS.md section 1).

loss = GKD's generalized JSD on the student's own rollouts + gamma * JSD of the final-layer attention policies
(`AttentionGKDTrainer`). The paper searched gamma in {0.05, 0.5, 1.0}. Every AttentionGKDConfig field is a flag.
The teacher runs under ZeRO-3 sharding when the DeepSpeed config is stage 3 (see the README's scale-out section).

    accelerate launch --config_file trl_attention/configs/accelerate/zero3.yaml examples/attention_distill.py \
        --model_name_or_path Qwen/Qwen2.5-VL-7B-Instruct --teacher_model_name_or_path Qwen/Qwen2.5-VL-32B-Instruct \
        --dataset_name my_org/my_conversational_image_dataset --output_dir out/distill --bf16 true

    # offline, on CPU, with a tiny student and a deeper, wider tiny teacher (what the test suite runs):
    python examples/attention_distill.py --tiny --output_dir out/distill-tiny --max_steps 2 --use_cpu true \
        --report_to none

The dataset is conversational with images: `messages` (ending with the assistant turn) or `prompt` + `completion`,
and `images` or `image` (see `trl_attention.vision_collator`).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

from transformers import AutoModelForImageTextToText, AutoProcessor, HfArgumentParser

from trl_attention.gkd import AttentionGKDConfig, AttentionGKDTrainer

RECIPE = dict(
    lmbda=1.0, beta=0.5, attn_distill_coef=0.5, gkd_coef=1.0, learning_rate=1e-6, max_new_tokens=256,
    temperature=0.9, per_device_train_batch_size=1, gradient_accumulation_steps=8, max_length=4096,
    gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False},
    teacher_model_init_kwargs={"dtype": "bfloat16", "attn_implementation": "sdpa"},
    teacher_model_name_or_path="Qwen/Qwen2.5-VL-32B-Instruct",  # GKDConfig's field; same tokenizer as the student
)  # fmt: skip


@dataclass
class ScriptArguments:
    model_name_or_path: str = field(default="Qwen/Qwen2.5-VL-7B-Instruct", metadata={"help": "Student model."})
    dataset_name: str | None = field(
        default=None, metadata={"help": "Hub dataset name or a `datasets.save_to_disk` directory."}
    )
    dataset_split: str = field(default="train", metadata={"help": "Split of a hub dataset."})
    tiny: bool = field(default=False, metadata={"help": "Offline tiny student/teacher VLMs and synthetic data."})


def _tiny(seed: int):
    from trl_attention.tiny import build_tiny_vlm, make_grounding_dataset

    student, processor = build_tiny_vlm(seed=seed)
    teacher, _ = build_tiny_vlm(seed=seed + 1, num_hidden_layers=6, hidden_size=96, intermediate_size=192,
                                num_attention_heads=6, num_key_value_heads=3)  # fmt: skip
    dataset = make_grounding_dataset(64, seed=seed).map(lambda row: {"completion": f"The answer is {row['answer']}."})
    return student, teacher, processor, dataset


def build(script_args, training_args):
    """Models, processor, dataset and trainer; separate from `main` so tests can inspect the trainer."""
    if script_args.tiny:
        training_args.teacher_model_init_kwargs = None  # the tiny teacher is an instance, built in fp32
        student, teacher, processor, dataset = _tiny(training_args.seed)
    else:
        import os

        from datasets import load_dataset, load_from_disk

        student = AutoModelForImageTextToText.from_pretrained(script_args.model_name_or_path, dtype="bfloat16",
                                                              attn_implementation="sdpa")  # fmt: skip
        teacher = training_args.teacher_model_name_or_path  # loaded by the trainer with teacher_model_init_kwargs
        processor = AutoProcessor.from_pretrained(script_args.model_name_or_path, padding_side="left")
        name = script_args.dataset_name
        if name is None:
            raise SystemExit("--dataset_name is required (or --tiny)")
        dataset = load_from_disk(name) if os.path.isdir(name) else load_dataset(name, split=script_args.dataset_split)
    return AttentionGKDTrainer(model=student, teacher_model=teacher, args=training_args, train_dataset=dataset,
                               processing_class=processor)  # fmt: skip


def parse(argv=None):
    parser = HfArgumentParser((ScriptArguments, AttentionGKDConfig))
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
