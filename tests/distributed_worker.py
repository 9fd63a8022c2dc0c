"""One AttentionGRPOTrainer run per mode, identical whatever the world size; a torchrun worker and a library.

`python -m torch.distributed.run --nproc_per_node 2 tests/distributed_worker.py OUT MODEL_DIR ddp zero2 zero3`
trains once per mode (plain DDP, or the shipped DeepSpeed config of that name) and rank 0 writes the logged
metrics to OUT as JSON. `run(...)` in the test process gives the 1-process reference over the same data.

"The same data" under GRPO: the global generation batch is `per_device_train_batch_size * world_size`, so the
1-process run uses 4 per device and the 2-process runs 2; one prompt times num_generations=4 fills it, so its
group spans both ranks (TRL gathers the rewards to compute advantages) and no rank pads prompts differently.
Sampling is made a function of the global row: greedy decoding over logits plus Gumbel noise seeded by (row,
step) is exact sampling from the model (the Gumbel-max trick) yet independent of how rows are split over ranks
and of TRL's per-rank seeds. SGD (not Adam, whose first step is scale-free) makes the step-2 metrics depend
linearly on the all-reduced step-1 gradient; max_grad_norm is large so clipping does not hide a wrong scale.
"""

from __future__ import annotations

import json
import os
import sys
import warnings

import torch
from transformers import LogitsProcessor, LogitsProcessorList

KEYS = (
    "loss",
    "grad_norm",
    "reward",
    "reward_std",
    "kl",
    "attention/jsd",
    "attention/entropy",
    "attention/image_mass",
)


class GlobalRowGumbel(LogitsProcessor):
    """Adds Gumbel noise seeded by (global row, decoding step): argmax then samples softmax(logits) exactly."""

    def __init__(self, row_offset: int):
        self.row_offset, self.step = row_offset, 0

    def __call__(self, input_ids, scores):
        noise = torch.empty_like(scores, dtype=torch.float32)
        for i in range(scores.size(0)):
            gen = torch.Generator().manual_seed(1_000_003 * (self.row_offset + i) + self.step)
            uniform = torch.rand(scores.size(1), generator=gen).clamp(1e-12, 1 - 1e-7)
            noise[i] = -torch.log(-torch.log(uniform))
        self.step += 1
        return scores + noise.to(scores.dtype)


def _row_seeded_generate(model, rank: int):
    original = model.generate

    def generate(*args, **kwargs):
        batch = kwargs["input_ids"].size(0)
        kwargs["logits_processor"] = LogitsProcessorList([GlobalRowGumbel(rank * batch)])
        return original(*args, **kwargs)

    model.generate = generate


def run(output_dir, model_dir: str, mode: str, world_size: int = 1, rank: int = 0, **overrides) -> list[dict]:
    """Train 2 steps; returns the per-step log entries (KEYS only). `mode`: "ddp" or a shipped DeepSpeed config."""
    from conftest import length_reward, trainer_args
    from transformers import AutoModelForImageTextToText

    from trl_attention import AttentionGRPOConfig, AttentionGRPOTrainer
    from trl_attention.distributed import check_distributed_setup, check_zero3_capture_ready, config_path
    from trl_attention.tiny import build_processor, make_grounding_dataset

    values = dict(
        per_device_train_batch_size=4 // world_size, num_generations=4, max_steps=2, num_iterations=2, attn_coef=5.0,
        beta=0.04, loss_type="grpo", optim="sgd", learning_rate=0.5, max_grad_norm=1e6,
        generation_kwargs={"do_sample": False}, deepspeed=None if mode == "ddp" else config_path(f"deepspeed/{mode}.json"),
    )  # fmt: skip
    values.update(overrides)
    args = trainer_args(AttentionGRPOConfig, output_dir, **values)  # before loading: ZeRO-3 partitions at load
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    try:
        check_zero3_capture_ready(model)
        unprepared = None
    except ValueError as error:  # partitioned by zero.Init, no engine yet
        unprepared = str(error)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = AttentionGRPOTrainer(model=model, reward_funcs=length_reward, args=args,
                                       processing_class=build_processor(), train_dataset=make_grounding_dataset(8))  # fmt: skip
        _row_seeded_generate(trainer.model, rank)
        trainer.train()
    # The policy (in its engine) and TRL's reference model (prepare_deepspeed: how teachers are prepared) pass.
    check_distributed_setup(args, trainer.model, teacher=trainer.ref_model, world_size=world_size,
                            device_memory=2**40)  # fmt: skip
    engine = type(trainer.model_wrapped).__name__
    stage = trainer.accelerator.deepspeed_plugin.zero_stage if trainer.is_deepspeed_enabled else None
    extra = {"engine": engine, "stage": stage, "unprepared_check": unprepared}
    steps = [{k: h[k] for k in KEYS if k in h} | extra for h in trainer.state.log_history if "loss" in h]
    del trainer
    return steps


def _cpu_deepspeed() -> None:
    import deepspeed.comm.torch

    # DeepSpeed's CPU backend JIT-compiles a shared-memory all-reduce (C++, 1-2 min per fresh environment) that
    # only speeds up its inference all-reduce; every collective under test goes through torch.distributed/gloo.
    deepspeed.comm.torch.build_shm_op = lambda: None
    # ZeRO-3 partitions at from_pretrained (zero.Init), which sizes the world from deepspeed.comm: initialise it
    # now, as accelerate does when the first state it builds is a DeepSpeed one (here a DDP run may come first).
    deepspeed.init_distributed(dist_backend="gloo")


def main(out: str, model_dir: str, *modes: str) -> None:
    from accelerate.state import AcceleratorState, PartialState

    _cpu_deepspeed()

    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    results = {}
    for mode in modes:
        results[mode] = run(os.path.join(os.path.dirname(out), mode), model_dir, mode, world_size, rank)
        AcceleratorState._reset_state(reset_partial_state=False)  # the next Trainer brings its own plugin
    if rank == 0:
        with open(out, "w") as f:
            json.dump(results, f)
    PartialState().wait_for_everyone()


def example(out: str, name: str, *argv: str) -> None:
    """Run examples/NAME.py's `main(argv)` (what the launchers start); rank 0 writes how it was distributed."""
    import importlib.util

    _cpu_deepspeed()
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples", f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = module.main(list(argv))
    teacher = getattr(trainer, "teacher_model", None) or getattr(trainer, "ref_model", None)
    result = {
        "engine": type(trainer.model_wrapped).__name__,
        "stage": trainer.accelerator.deepspeed_plugin.zero_stage if trainer.is_deepspeed_enabled else None,
        "teacher_engine": type(teacher).__name__,
        "teacher_stage": teacher.zero_optimization_stage() if hasattr(teacher, "zero_optimization_stage") else None,
        "losses": [h["loss"] for h in trainer.state.log_history if "loss" in h],
    }
    if trainer.accelerator.is_main_process:
        with open(out, "w") as f:
            json.dump(result, f)


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    if sys.argv[1] == "example":
        example(*sys.argv[2:])
    else:
        main(*sys.argv[1:])
