"""Training runs that are identical whatever the world size; a torchrun worker and a library.

`python -m torch.distributed.run --standalone --nproc_per_node 2 tests/distributed_worker.py OUT MODEL_DIR MODE...`
trains once per MODE in the same processes and rank 0 writes the logged metrics to OUT as JSON. MODE: `ddp` or a
shipped DeepSpeed config (`zero2`, `zero3`) for AttentionGRPOTrainer, with `_teacher` adding the GRPO teacher terms
and the frozen vision tower; `gkd_ddp` / `gkd_zero3` for AttentionGKDTrainer; `distill_example` for
examples/attention_distill.py under ZeRO-3. `run(...)` / `run_gkd(...)` in the test process give the 1-process
references over the same data.

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
    "distill/gkd_jsd",
    "attention/distill_jsd",
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
    """Train 2 steps; returns the per-step log entries (KEYS only). `mode`: "ddp" or a shipped DeepSpeed config,
    with "_teacher": plus a tiny teacher (GKD and attention-distillation terms) and the vision tower frozen."""
    from transformers import AutoModelForImageTextToText

    from tests.testing_utils import length_reward, trainer_args
    from trl_attention import AttentionGRPOConfig, AttentionGRPOTrainer
    from trl_attention.distributed import (
        DistributedChecksCallback,
        check_zero3_capture_ready,
        config_path,
        parameter_count,
    )
    from trl_attention.tiny import build_processor, make_grounding_dataset

    base, teacher = mode.removesuffix("_teacher"), mode.endswith("_teacher")
    values = dict(
        per_device_train_batch_size=4 // world_size,
        num_generations=4,
        max_steps=2,
        num_iterations=2,
        attn_coef=5.0,
        beta=0.04,
        loss_type="grpo",
        optim="sgd",
        learning_rate=0.5,
        max_grad_norm=1e6,
        generation_kwargs={"do_sample": False},
        deepspeed=None if base == "ddp" else config_path(base),
    )
    if teacher:
        values.update(gkd_coef=0.5, attn_distill_coef=1.0, freeze_vision_tower=True)
    values.update(overrides)
    args = trainer_args(AttentionGRPOConfig, output_dir, **values)  # before loading: ZeRO-3 partitions at load
    model = AutoModelForImageTextToText.from_pretrained(model_dir, dtype=torch.float32)
    try:
        check_zero3_capture_ready(model)
        unprepared = None
    except ValueError as error:  # partitioned by zero.Init, no engine yet
        unprepared = str(error)
    kwargs = {"teacher_model": _tiny_teacher()} if teacher else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        data, processor = make_grounding_dataset(8), build_processor()
        trainer = AttentionGRPOTrainer(
            model=model,
            reward_funcs=length_reward,
            args=args,
            train_dataset=data,
            processing_class=processor,
            **kwargs,
        )
        _row_seeded_generate(trainer.model, rank)
        trainer.add_callback(DistributedChecksCallback(trainer, device_memory=2**40))
        trainer.train()
    engine = type(trainer.model_wrapped).__name__
    stage = trainer.accelerator.deepspeed_plugin.zero_stage if trainer.is_deepspeed_enabled else None
    trainable = parameter_count(p for p in model.parameters() if p.requires_grad)  # ZeRO-3: full sizes
    extra = {
        "engine": engine,
        "stage": stage,
        "unprepared_check": unprepared,
        "trainable": trainable,
        "teacher_engine": type(getattr(trainer, "teacher_model", None)).__name__,
    }
    steps = [{k: h[k] for k in KEYS if k in h} | extra for h in trainer.state.log_history if "loss" in h]
    del trainer
    return steps


GKD_KEYS = ("loss", "grad_norm", "attention/distill_jsd")


def _tiny_teacher():
    from trl_attention.tiny import build_tiny_vlm

    return build_tiny_vlm(
        seed=1,
        num_hidden_layers=3,
        hidden_size=96,
        intermediate_size=192,
        num_attention_heads=6,
        num_key_value_heads=3,
    )[0]


def run_gkd(output_dir, mode: str, world_size: int = 1, **overrides) -> list[dict]:
    """AttentionGKDTrainer off-policy (lmbda=0: the dataset's completions, no sampling), 2 steps, global batch 2.

    The Trainer's seeded sampler gives the 1-process run the same 2 rows that 2 processes take one each; the
    completions differ in length, so the GKD and attention terms must normalise by the global token count."""
    from trl_attention.distill import AttentionGKDConfig, AttentionGKDTrainer
    from trl_attention.distributed import DistributedChecksCallback, config_path
    from trl_attention.tiny import build_tiny_vlm, make_grounding_dataset

    args = AttentionGKDConfig(
        output_dir=str(output_dir),
        per_device_train_batch_size=2 // world_size,
        max_steps=2,
        lmbda=0.0,
        beta=0.5,
        attn_distill_coef=5.0,
        optim="sgd",
        learning_rate=0.5,
        max_grad_norm=1e6,
        max_new_tokens=8,
        seed=0,
        use_cpu=True,
        bf16=False,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        disable_tqdm=True,
        deepspeed=None if mode == "ddp" else config_path(f"deepspeed/{mode}.json"),
        **overrides,
    )
    student, processor = build_tiny_vlm(seed=0)
    teacher = _tiny_teacher()
    dataset = make_grounding_dataset(8).map(lambda row: {"completion": f"The answer is {row['answer']}."})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = AttentionGKDTrainer(
            model=student, teacher_model=teacher, args=args, train_dataset=dataset, processing_class=processor
        )
        trainer.add_callback(DistributedChecksCallback(trainer, device_memory=2**40))
        trainer.train()
    extra = {"engine": type(trainer.model_wrapped).__name__, "teacher_engine": type(trainer.teacher_model).__name__}
    return [{k: h[k] for k in GKD_KEYS if k in h} | extra for h in trainer.state.log_history if "loss" in h]


def _cpu_deepspeed() -> None:
    import importlib

    import deepspeed

    # DeepSpeed's CPU backend JIT-compiles a shared-memory all-reduce (C++, 1-2 min per fresh environment) that
    # only speeds up its inference all-reduce; every collective under test goes through torch.distributed/gloo.
    # (Through sys.modules: the attribute `deepspeed.comm.torch` is PyTorch itself, star-imported over it.)
    importlib.import_module("deepspeed.comm.torch").build_shm_op = lambda: None
    # ZeRO-3 partitions at from_pretrained (zero.Init), which sizes the world from deepspeed.comm: initialise it
    # now, as accelerate does when the first state it builds is a DeepSpeed one (here a DDP run may come first).
    deepspeed.init_distributed(dist_backend="gloo")
    assert importlib.import_module("deepspeed.comm.comm").cdb.shm_comm_op is None


def main(out: str, model_dir: str, *modes: str) -> None:
    from accelerate.state import AcceleratorState, PartialState
    from transformers.integrations.deepspeed import unset_hf_deepspeed_config

    _cpu_deepspeed()

    rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    results = {}
    for mode in modes:
        os.environ.pop("ACCELERATE_USE_DEEPSPEED", None)  # set by the previous mode's DeepSpeed TrainingArguments
        unset_hf_deepspeed_config()
        path = os.path.join(os.path.dirname(out), mode)
        if mode == "distill_example":
            from trl_attention.distributed import config_path

            results[mode] = run_example(
                path, "attention_distill", *DISTILL_EXAMPLE_ARGS, "--deepspeed", config_path("zero3")
            )
        elif mode.startswith("gkd_"):
            results[mode] = run_gkd(path, mode[4:], world_size)
        else:
            results[mode] = run(path, model_dir, mode, world_size, rank)
        AcceleratorState._reset_state(reset_partial_state=False)  # the next Trainer brings its own plugin
    if rank == 0:
        with open(out, "w") as f:
            json.dump(results, f)
    PartialState().wait_for_everyone()


# What examples/launch.sh passes to the distillation example (--deepspeed zero3), sized for 2 CPU processes.
DISTILL_EXAMPLE_ARGS = (
    "--tiny",
    "--max_steps",
    "1",
    "--per_device_train_batch_size",
    "1",
    "--gradient_accumulation_steps",
    "1",
    "--max_new_tokens",
    "8",
    "--use_cpu",
    "true",
    "--bf16",
    "false",
    "--report_to",
    "none",
    "--disable_tqdm",
    "true",
    "--logging_steps",
    "1",
)


def run_example(output_dir: str, name: str, *argv: str) -> dict:
    """examples/NAME.py's `main(argv)` (what the launchers start): how it was distributed, and its losses."""
    import importlib.util

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "examples", f"{name}.py")
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer = module.main([*argv, "--output_dir", output_dir])
    teacher = getattr(trainer, "teacher_model", None) or getattr(trainer, "ref_model", None)
    return {
        "engine": type(trainer.model_wrapped).__name__,
        "stage": trainer.accelerator.deepspeed_plugin.zero_stage if trainer.is_deepspeed_enabled else None,
        "teacher_engine": type(teacher).__name__,
        "teacher_stage": teacher.zero_optimization_stage() if hasattr(teacher, "zero_optimization_stage") else None,
        "losses": [h["loss"] for h in trainer.state.log_history if "loss" in h],
        "output_dir": output_dir,
    }


if __name__ == "__main__":
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))  # for `tests.`
    main(*sys.argv[1:])
