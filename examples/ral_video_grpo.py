"""RAL (AttentionGRPOTrainer) on Qwen2.5-VL-7B with Video-R1-260k: the paper's RL stage, image and video rows mixed.

The paper's setup (docs/papers.md section 1): RL on 51.2k samples of Video-R1-260k, vision encoder and projector
frozen, 8 rollouts per prompt, reward 0.9 * accuracy + 0.1 * format, attn_coef in {0.5, 1, 5}, temperature 0.9, lr 1e-5,
KL 0.04, 16 frames per video. RAL's term acts only on reused rollouts, hence num_iterations=2. Accuracy is
`video_r1_accuracy_reward` (one rule per Video-R1 problem type); `--ral-zero` drops the thinking part of the format
(answer-only prompt and format reward). Every AttentionGRPOConfig / ModelConfig field is a flag and overrides the
recipe below (`--attn_coef 5`, `--video_max_pixels ...`, `--lora_r 16`, `--config run.yaml`):

    accelerate launch --num_processes 8 examples/ral_video_grpo.py --records Video-R1-260k.json \
        --media_root /data/Video-R1-data --output_dir out/ral-video --deepspeed "$(trl-attention configs --path zero3)"
    accelerate launch --num_processes 8 examples/ral_video_grpo.py --records ... --ral-zero --output_dir out/zero

    # the same code on the embedded tiny VLM and 6 synthetic Video-R1 records (MPEG-4 clips + PNGs), on CPU:
    python examples/ral_video_grpo.py --tiny --output_dir out/ral-video-tiny --max_steps 2

The records and what each field becomes: docs/video.md#video-r1-records.
"""

from __future__ import annotations

import atexit
import shutil
import sys
import tempfile
from dataclasses import dataclass, field

import torch

from trl_attention.cli.checkpoints import prepare_output_dir
from trl_attention.cli.training import ConfigError, parse_config, recipe_defaults, train_and_save
from trl_attention.rewards import (
    answer_format_reward,
    char_overlap,
    reasoning_format_reward,
    video_r1_accuracy_reward,
)

RECIPE = {
    "model_name_or_path": "Qwen/Qwen2.5-VL-7B-Instruct",
    "dtype": "bfloat16",
    "bf16": True,
    "num_samples": 51_200,  # the paper's 51.2k of Video-R1-260k (a seeded random subset)
    "reward_weights": [0.9, 0.1],  # video_r1_accuracy_reward, format reward
    "freeze_vision_tower": True,
    "attn_coef": 1.0,
    "num_iterations": 2,
    "num_generations": 8,
    "per_device_train_batch_size": 8,
    "temperature": 0.9,
    "learning_rate": 1e-5,
    "beta": 0.04,
    "max_completion_length": 768,
    "video_nframes": 16,
    "video_max_pixels": 256 * 28 * 28,  # our choice (the papers give no resolution): <= 2048 visual tokens a clip
    "gradient_checkpointing": True,
    "logging_steps": 1,
    "log_completions": True,
    "report_to": ["tensorboard"],
    "save_steps": 200,
}
# --tiny: the embedded model and synthetic records, sized for a CPU. A random tiny model never earns the accuracy or
# format reward, so a dense shaping reward (char_overlap with the answer) is added: otherwise every advantage, and
# with it every gradient and RAL's term, would be 0.
TINY = {
    "num_samples": 6,  # synthetic records written: 3 videos, 3 images, every problem type
    "num_generations": 4,
    "per_device_train_batch_size": 8,
    "max_completion_length": 16,
    "learning_rate": 3e-3,
    "max_steps": 2,
    "video_nframes": 4,
    "video_min_pixels": 56 * 56,
    "video_max_pixels": 112 * 112,
    "report_to": ["none"],
    "log_completions": False,
    "save_strategy": "no",
    "dtype": None,
    "bf16": torch.cuda.is_available(),
    "use_cpu": not torch.cuda.is_available(),
    "reward_weights": [0.9, 0.1, 0.5],
}


@dataclass
class VideoR1Arguments:
    """The Video-R1 data and run options of this recipe."""

    tiny: bool = field(
        default=False, metadata={"help": "Tiny VLM and synthetic Video-R1 records (offline, CPU); not with --records."}
    )
    records: str | None = field(
        default=None, metadata={"help": "Video-R1 record file: a JSON list (Video-R1-260k.json) or JSON Lines."}
    )
    media_root: str | None = field(
        default=None, metadata={"help": "Directory the records' `path`s are relative to (default: the file's)."}
    )
    ral_zero: bool = field(
        default=False, metadata={"help": "RAL-zero: answer-only prompt and format reward (no <think>)."}
    )
    num_samples: int | None = field(
        default=None, metadata={"help": "Train on a seeded random subset of N records (default: all)."}
    )
    check_files: bool = field(
        default=True, metadata={"help": "Check every record's image / video file exists before loading a model."}
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Delete the checkpoint-* directories in output_dir and start from step 0."}
    )


def answer_overlap(completions, solution, **kwargs):
    """--tiny's shaping reward: `char_overlap` with the row's answer (dense, so a random model gets advantages)."""
    return char_overlap(completions, [str(s) for s in solution])


def parse(argv=None):
    """(VideoR1Arguments, AttentionGRPOConfig, ModelConfig); ConfigError for --tiny with a model or records, or
    no --records without --tiny."""
    from trl import ModelConfig

    from trl_attention import AttentionGRPOConfig

    argv = sys.argv[1:] if argv is None else list(argv)
    types = (VideoR1Arguments, AttentionGRPOConfig, ModelConfig)
    script_args, training_args, model_args = parse_config(
        types, argv, "examples/ral_video_grpo.py", recipe_defaults(argv, RECIPE, TINY)
    )
    if script_args.tiny:
        given = {"--model_name_or_path": model_args.model_name_or_path, "--records": script_args.records}
        given = [option for option, value in given.items() if value is not None]
        if given:
            raise ConfigError(
                f"{' and '.join(given)} given with --tiny, which uses the tiny VLM and synthetic records"
            )
    elif script_args.records is None:
        raise ConfigError("--records is required (a Video-R1 JSON / JSONL file), or --tiny for synthetic records")
    prepare_output_dir(training_args, overwrite=script_args.overwrite_output_dir)
    return script_args, training_args, model_args


def build(script_args, training_args, model_args):
    """Records -> dataset, model, rewards and the trainer; separate from `main` so tests can inspect it."""
    from trl import get_peft_config

    from trl_attention import AttentionGRPOTrainer
    from trl_attention.loading import load_model_and_processor
    from trl_attention.video.videor1 import load_video_r1, write_synthetic_video_r1

    records, root, name, num_samples = (
        script_args.records,
        script_args.media_root,
        model_args.model_name_or_path,
        script_args.num_samples,
    )
    if script_args.tiny:
        from trl_attention.cli.data import _tiny_checkpoint  # saved once (rank 0), so TRL can load a ref model

        root = tempfile.mkdtemp(prefix="ral_video_tiny_")
        atexit.register(shutil.rmtree, root, True)
        records = write_synthetic_video_r1(root, n=num_samples or 6, seed=training_args.seed)
        name, num_samples = _tiny_checkpoint(training_args.seed), None
    # The records first: a malformed one is reported before a 7B model is loaded.
    dataset = load_video_r1(
        records,
        root,
        num_samples=num_samples,
        seed=training_args.seed,
        ral_zero=script_args.ral_zero,
        check_files=script_args.check_files,
    )
    model, processor = load_model_and_processor(
        name, model_args.dtype, model_args.attn_implementation, model_args.model_revision
    )
    rewards = [video_r1_accuracy_reward, answer_format_reward if script_args.ral_zero else reasoning_format_reward]
    if script_args.tiny:
        rewards.append(answer_overlap)
    return AttentionGRPOTrainer(
        model=model,
        reward_funcs=rewards,
        args=training_args,
        train_dataset=dataset,
        processing_class=processor,
        peft_config=get_peft_config(model_args),
    )


def main(argv=None):
    script_args, training_args, model_args = parse(argv)
    return train_and_save(build(script_args, training_args, model_args), training_args)


if __name__ == "__main__":
    main()
