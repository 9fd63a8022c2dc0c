"""Does the SAYO reward move attention into the box? A measured answer on the tiny VLM, one run.

Trains the tiny VLM with GRPO on the synthetic grounding data from the same seed: (a) with the region attention
reward alone, (b) the same plus RAL's attention term (attn_coef=1, num_iterations=2: the advantage-weighted JSD
pulls attention toward the rollouts that looked at the box), (c) a control reward of random numbers (GRPO updates
of the same size, no attention signal). Both log `sayo/region_share` (share of the image attention of the highest-entropy completion tokens that
falls on the target box; the control run logs it through a zero-weight SAYO reward). Prints the mean over the first
and last `--window` steps of each run.

    python benchmarks/sayo_region_share.py --steps 150 2>/dev/null | grep -v "^{"
"""

from __future__ import annotations

import argparse
import random
import warnings

from trl_attention import AttentionGRPOConfig, AttentionGRPOTrainer
from trl_attention.sayo import RegionAttentionReward
from trl_attention.tiny import build_tiny_vlm, make_grounding_dataset


def random_reward(completions, **kwargs):
    """Control: noise with the same spread as a real reward, carrying no information about attention."""
    return [random.random() for _ in completions]


def run(steps: int, control: bool, args, attn_coef: float = 0.0, num_iterations: int = 1) -> list[float]:
    random.seed(args.seed)
    model, processor = build_tiny_vlm(seed=args.seed)
    config = AttentionGRPOConfig(
        output_dir="/tmp/sayo_region_share",
        max_steps=steps,
        per_device_train_batch_size=16,
        num_generations=8,
        max_completion_length=8,
        learning_rate=args.lr,
        attn_coef=attn_coef,
        num_iterations=num_iterations,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        gradient_checkpointing=False,
        seed=args.seed,
        reward_weights=[0.0, 1.0] if control else [1.0],
    )
    rewards = [RegionAttentionReward(), random_reward] if control else [RegionAttentionReward()]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = AttentionGRPOTrainer(
            model=model,
            reward_funcs=rewards,
            args=config,
            processing_class=processor,
            train_dataset=make_grounding_dataset(256, seed=args.seed),
        )
        trainer.train()
    return [h["sayo/region_share"] for h in trainer.state.log_history if "sayo/region_share" in h]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--window", type=int, default=20)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    print(f"steps={args.steps} lr={args.lr} seed={args.seed}; region share = mean over {args.window} steps")
    runs = (("sayo", False, 0.0, 1), ("sayo + RAL", False, 1.0, 2), ("random reward", True, 0.0, 1))
    for name, control, attn_coef, num_iterations in runs:
        shares = run(args.steps, control, args, attn_coef, num_iterations)
        first, last = shares[: args.window], shares[-args.window :]
        print(f"{name:14s} first {sum(first) / len(first):.4f}  last {sum(last) / len(last):.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
