"""torchrun worker of tests/ral/test_resume.py: a straight 4-step RAL run on 2 processes (gloo, DDP; checkpoints
at every step), then the same run resumed from checkpoint-1 (inside a reuse cycle); rank 0 writes what matched.

Usage: python -m torch.distributed.run --standalone --nproc_per_node 2 resume_worker.py WORK_DIR OUT_JSON
"""

import json
import os
import sys
import warnings

import torch
import torch.distributed as dist
from datasets import Dataset


def _run(output_dir, resume=None):
    from accelerate.state import AcceleratorState

    from tests.testing_utils import PROMPTS, length_reward, trainer_args
    from trl_attention import AttentionGRPOConfig, AttentionGRPOTrainer
    from trl_attention.tiny import build_tiny_lm

    torch.manual_seed(0)
    model, tokenizer = build_tiny_lm(seed=0)
    args = trainer_args(
        AttentionGRPOConfig,
        output_dir,
        max_steps=4,
        num_iterations=2,
        save_strategy="steps",
        save_steps=1,
        per_device_train_batch_size=2,
        num_generations=4,
        ddp_backend="gloo",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = AttentionGRPOTrainer(
            model=model,
            reward_funcs=length_reward,
            args=args,
            train_dataset=Dataset.from_dict({"prompt": PROMPTS * 4}),
            processing_class=tokenizer,
        )
        generations, generate = [], trainer._generate_and_score_completions

        def counted(batch):
            generations.append(trainer.state.global_step + 1)
            return generate(batch)

        trainer._generate_and_score_completions = counted
        trainer.train(resume_from_checkpoint=resume)
    logs = [(h["step"], h["loss"], h.get("attention/jsd")) for h in trainer.state.log_history if "loss" in h]
    params = torch.cat([p.detach().flatten() for p in trainer.model.parameters()])
    AcceleratorState._reset_state(reset_partial_state=False)  # the next Trainer brings its own state
    return logs, generations, params


def main(work: str, out: str) -> None:
    straight_dir, resumed_dir = os.path.join(work, "straight"), os.path.join(work, "resumed")
    logs, generations, params = _run(straight_dir)
    checkpoint = os.path.join(straight_dir, "checkpoint-1")
    resumed_logs, resumed_generations, resumed_params = _run(resumed_dir, resume=checkpoint)
    rank = dist.get_rank()
    equal = [None, None]
    dist.all_gather_object(equal, torch.equal(params, resumed_params))
    first = [None, None]
    dist.all_gather_object(first, params[:64].tolist())
    if rank == 0:
        result = {
            "files": sorted(f for f in os.listdir(checkpoint) if f.startswith("rollouts_")),
            "generations": {"straight": generations, "resumed": resumed_generations},
            "equal": {str(r): e for r, e in enumerate(equal)},
            "logs_equal": resumed_logs == logs,  # the checkpoint brings steps up to 1 in its state
            "ranks_agree": first[0] == first[1],  # DDP: both ranks hold the same parameters
        }
        with open(out, "w") as f:
            json.dump(result, f)


if __name__ == "__main__":
    main(*sys.argv[1:])
