"""Cost of the attention-distillation term in AttentionGKDTrainer: one loss + backward step with and without it.

Both modes run interleaved in one process on the same batch (the tiny VLM scaled up, teacher deeper and wider), so
machine noise hits them alike; prints the median time per step and the ratio. CPU by default.

    python benchmarks/distill_overhead.py --repeats 5 --completion 64
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import torch

from trl_attention.distill import AttentionGKDConfig, AttentionGKDTrainer
from trl_attention.tiny import build_tiny_vlm, make_grounding_dataset


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--completion", type=int, default=64, help="completion words per sample")
    parser.add_argument("--batch", type=int, default=4)
    args = parser.parse_args(argv)
    student, processor = build_tiny_vlm(
        seed=0,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=6,
        num_attention_heads=8,
        num_key_value_heads=4,
    )
    teacher, _ = build_tiny_vlm(
        seed=1,
        hidden_size=384,
        intermediate_size=768,
        num_hidden_layers=8,
        num_attention_heads=12,
        num_key_value_heads=4,
    )
    words = " ".join(["answer"] * args.completion)
    dataset = make_grounding_dataset(args.batch).map(lambda row: {"completion": f"{row['answer']} {words}"})
    config = AttentionGKDConfig(
        output_dir="/tmp/distill_overhead", use_cpu=True, report_to=[], bf16=False, attn_distill_coef=0.5
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = AttentionGKDTrainer(
            model=student, teacher_model=teacher, args=config, train_dataset=dataset, processing_class=processor
        )
    batch = trainer.data_collator([dataset[i] for i in range(args.batch)])
    times = {"gkd": [], "gkd+attention": []}
    for _ in range(args.repeats + 1):  # the first round warms up and is dropped
        for name, coef in (("gkd", 0.0), ("gkd+attention", 0.5)):
            trainer.attn_distill_coef = coef
            trainer.model.zero_grad()
            start = time.perf_counter()
            trainer.compute_loss(trainer.model, batch).backward()
            times[name].append(time.perf_counter() - start)
    result = {name: statistics.median(values[1:]) for name, values in times.items()}
    result["ratio"] = result["gkd+attention"] / result["gkd"]
    print(f"tokens per sample: {batch['input_ids'].size(1)}, batch {args.batch}, threads {torch.get_num_threads()}")
    for name in times:
        print(f"{name:<15} {result[name] * 1000:8.1f} ms/step (median of {args.repeats})")
    print(f"ratio           {result['ratio']:.3f}x")
    return result


if __name__ == "__main__":
    main()
