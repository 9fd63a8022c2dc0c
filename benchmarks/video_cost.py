"""What a video row costs against an image row in one RAL step (generation, TRL's old-logps forward, the loss
forward and backward), as a ratio, in one run.

Both arms use the tiny Qwen2.5-VL of `trl_attention.tiny` and frames of the same size (--size px): an image row is
one frame, a video row is --frames frames of the synthetic moving-shape clips (temporal patch 2: --frames/2 token
grids of the image's size). The arms run interleaved, median of --repeats, so load drift hits both alike.
Printed: visual tokens per row, prompt length, step seconds per arm and the video/image ratio.

Usage: python benchmarks/video_cost.py [--frames 16] [--size 112] [--repeats 5] [--threads 1]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from datasets import Dataset

from trl_attention import AttentionGRPOConfig, AttentionGRPOTrainer
from trl_attention.tiny import build_tiny_vlm, make_grounding_dataset
from trl_attention.tiny.video_data import make_motion_dataset


def _reward(completions, **kwargs):
    return [float(len(str(c))) for c in completions]


def build(rows, args, out):
    model, processor = build_tiny_vlm(seed=0)
    config = AttentionGRPOConfig(
        output_dir=out,
        per_device_train_batch_size=4,
        num_generations=4,
        max_completion_length=args.new_tokens,
        num_iterations=2,
        max_steps=1,
        use_cpu=True,
        report_to=[],
        save_strategy="no",
        disable_tqdm=True,
        video_nframes=args.frames,
        video_min_pixels=28 * 28,
        video_max_pixels=args.size**2,
    )
    trainer = AttentionGRPOTrainer(
        model=model,
        reward_funcs=_reward,
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=processor,
    )
    trainer.model.train()
    trainer.current_gradient_accumulation_steps = 1  # set by the training loop, read by TRL's loss
    return trainer


def step(trainer, rows) -> tuple[float, dict]:
    """Seconds of one rollout + loss + backward on `rows`, and the batch."""
    start = time.perf_counter()
    batch = trainer._generate_and_score_completions(rows)
    loss = trainer._compute_loss(trainer.model, batch)
    loss.backward()
    trainer.model.zero_grad(set_to_none=True)
    return time.perf_counter() - start, batch


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--new_tokens", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    images = [dict(r) for r in make_grounding_dataset(1, seed=0, image_size=args.size)]
    videos = [dict(r) for r in make_motion_dataset(1, seed=0, frames=args.frames, size=args.size)]
    with tempfile.TemporaryDirectory() as tmp:
        arms = {"image": (build(images, args, tmp), images * 4), "video": (build(videos, args, tmp), videos * 4)}
        times = {name: [] for name in arms}
        info = {}
        for _ in range(args.repeats):
            for name, (trainer, rows) in arms.items():
                seconds, batch = step(trainer, rows)
                times[name].append(seconds)
                config = trainer.model.config
                token = config.video_token_id if name == "video" else config.image_token_id
                info[name] = (int((batch["prompt_ids"][0] == token).sum()), batch["prompt_ids"].size(1))
    median = {name: statistics.median(t) for name, t in times.items()}
    for name in arms:
        print(
            f"{name:>6}: {info[name][0]:4d} visual tokens, prompt {info[name][1]:4d} tokens, {median[name]:.3f} s/step"
        )
    print(
        f"video/image step time: {median['video'] / median['image']:.2f}x "
        f"({args.frames} frames of {args.size} px, median of {args.repeats}, {args.threads} thread(s))"
    )


if __name__ == "__main__":
    main()
