"""Evidence 2 (docs/evidence.md, "The testbed"): a task where GRPO learns over its SFT start, what RAL (the paper's
rollout reference and the opt-in group reference), SAYO and distillation add to it over SFT seeds x RL seeds, and
RAL's dose-response (attn_coef x rollout reuse).

The task: the demo's grid at 168 px (36 visual tokens, a 3x3 grid of 2x2-token slots), 1-2 objects of distinct
colours and shapes, "What colour is the <shape>?", answer-only format. SFT with TRL's SFTTrainer stops early
(`--sft-steps`, on the steep part of its learning curve), so RL has headroom; every arm starts from the same
checkpoint of its SFT seed and runs the same steps, batch, group size and lr. Each model is measured on one fixed
held-out set: greedy accuracy, answer format, where the answer tokens look (region share, lift) and how far that
attention moved from its SFT checkpoint's (JSD over the image tokens, same completion).

    python benchmarks/testbed.py --jobs 2          # 3 SFT seeds x 5 RL seeds x 5 arms
    python benchmarks/testbed.py --dose --jobs 2   # attn_coef {0,1,5,25} x num_iterations {1,2,4} / steps_per_generation 4
    python benchmarks/testbed.py --quick           # 2 x 2, short runs (minutes)
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # more threads than free cores slows these small kernels ~10x
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from evidence_train import Arm, load, train_rl, train_sft  # noqa: E402
from testbed_report import dose_pivot, dose_table, main_table, plot_dose, plot_main, summarise  # noqa: E402

from trl_attention.tiny import make_grounding_dataset  # noqa: E402
from trl_attention_recipes.evaluation import (  # noqa: E402
    attention_shift,
    box_token_share,
    evaluate,
    generate,
    majority_accuracy,
)

TASK = dict(image_size=168, layout="grid", object_cells=2, questions="colour", min_shapes=1, max_shapes=2, system_prompt="")
ARMS = {
    "grpo": Arm(fmt="answer"),
    "ral": Arm(attn_coef=1.0, fmt="answer"),
    "ral_group": Arm(attn_coef=1.0, fmt="answer", attn_reference="group"),
    "sayo": Arm(sayo=True, fmt="answer"),
    "distill": Arm(distill=True, fmt="answer"),
}
DOSE_COEFS = (0.0, 1.0, 5.0, 25.0)
DOSE_REUSE = {"ni1": dict(num_iterations=1), "ni2": dict(num_iterations=2), "ni4": dict(num_iterations=4),
              "spg4": dict(num_iterations=1, steps_per_generation=4)}  # spg4: 4 optimiser steps per generation batch
# Without reuse (ni1) the term is exactly 0 with 0 gradient (p_theta == p_old): its row runs 0 and 25 only, to show it.
DOSE_ARMS = {
    f"{r}_c{c:g}": Arm(attn_coef=c, fmt="answer", **kw)
    for r, kw in DOSE_REUSE.items()
    for c in DOSE_COEFS
    if r != "ni1" or c in (0.0, 25.0)
}
FULL = dict(sft_seeds=3, rl_seeds=5, sft_steps=120, teacher_steps=300, rl_steps=100, n_eval=128)
QUICK = dict(sft_seeds=2, rl_seeds=2, sft_steps=150, teacher_steps=200, rl_steps=20, n_eval=64)
DOSE = dict(sft_seeds=1, rl_seeds=2)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help=f"short runs: {QUICK}")
    p.add_argument("--dose", action="store_true", help=f"RAL's dose-response arms instead ({DOSE} seeds unless set)")
    p.add_argument("--arms", nargs="+", help="arms to run (default: all of the chosen table)")
    p.add_argument("--sft-seeds", type=int, help=f"SFT checkpoints (default {FULL['sft_seeds']})")
    p.add_argument("--rl-seeds", type=int, help=f"RL seeds per checkpoint and arm (default {FULL['rl_seeds']})")
    p.add_argument("--sft-steps", type=int, help=f"student SFT steps: partial on purpose (default {FULL['sft_steps']})")
    p.add_argument("--teacher-steps", type=int, help=f"teacher SFT steps (default {FULL['teacher_steps']})")
    p.add_argument("--rl-steps", type=int, help=f"RL optimiser steps per arm (default {FULL['rl_steps']})")
    p.add_argument("--n-eval", type=int, help=f"held-out rows (default {FULL['n_eval']})")
    p.add_argument("--n-train", type=int, default=4096, help="training rows (SFT and RL prompts)")
    p.add_argument("--sft-lr", type=float, default=3e-3)
    p.add_argument("--sft-batch", type=int, default=16)
    p.add_argument("--rl-batch", type=int, default=32, help="completions per optimiser step")
    p.add_argument("--generations", type=int, default=8, help="completions per prompt (GRPO group)")
    p.add_argument("--rl-lr", type=float, default=3e-4)
    p.add_argument("--collapse-format", type=float, default=0.5, help="a run whose held-out answer format rate is "
                   "below this has collapsed (counted per arm)")
    p.add_argument("--jobs", type=int, default=1, help="runs in parallel, one torch thread each (1 per idle core)")
    p.add_argument("--output-dir", help="default outputs/testbed[_dose][_quick]")
    p.add_argument("--progress", action="store_true", help="show the trainers' progress bars")
    p.add_argument("--from-json", help="re-render the tables and plot of an earlier run's results.json (no training)")
    args = p.parse_args(argv)
    defaults = {**FULL, **(QUICK if args.quick else {}), **(DOSE if args.dose else {})}
    for key, value in defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    table = DOSE_ARMS if args.dose else ARMS
    args.arms = args.arms or list(table)
    unknown = [a for a in args.arms if a not in table]
    if unknown:
        p.error(f"unknown arms {unknown}; choose from {list(table)}")
    suffix = ("_dose" if args.dose else "") + ("_quick" if args.quick else "")
    args.output_dir = str(args.output_dir or f"outputs/testbed{suffix}")
    # evidence_train reads these
    args.image_size, args.task, args.max_completion = TASK["image_size"], "grid", {"answer": 12}
    args.sft_extra, args.rl_extra = dict(warmup_steps=100, adam_beta2=0.95, bf16=False), dict(bf16=False)
    return args


_DATA: dict = {}


def data(args):
    """(train, held-out) rows, built once per process (the same rows in every process: fixed seeds)."""
    if "train" not in _DATA:
        _DATA["train"] = make_grounding_dataset(args.n_train, seed=1, **TASK)
        _DATA["held"] = make_grounding_dataset(args.n_eval, seed=10_000, **TASK)
    return _DATA["train"], _DATA["held"]


def measure(args, model, processor, sft_path: str | None) -> dict:
    """Held-out metrics of `model`; `attn_shift`: JSD of its answer tokens' image attention from the SFT model's."""
    _, held = data(args)
    result = evaluate(model, processor, held, args.max_completion["answer"])
    if sft_path is not None:
        completions = generate(model, processor, held, args.max_completion["answer"])
        result["attn_shift"] = attention_shift(model, load(sft_path)[0], processor, held, completions)
    return result


def _sft_job(args, seed: int, teacher: bool = False) -> tuple:
    torch.set_num_threads(1)
    train, _ = data(args)
    name = "teacher" if teacher else f"sft_{seed}"
    path = str(Path(args.output_dir) / "checkpoints" / name)
    steps = args.teacher_steps if teacher else args.sft_steps
    train_sft(args, train, "answer", seed, steps, path, teacher=teacher)
    return name, path, measure(args, *load(path), None)


def _rl_job(args, arm_name: str, sft_seed: int, rl_seed: int, sft_path: str, teacher_path: str | None) -> dict:
    torch.set_num_threads(1)
    arm = (DOSE_ARMS if args.dose else ARMS)[arm_name]
    train, _ = data(args)
    t0 = time.perf_counter()
    out = str(Path(args.output_dir) / "rl" / f"{arm_name}_{sft_seed}_{rl_seed}")
    teacher = load(teacher_path)[0] if arm.distill else None
    model, processor, history = train_rl(args, arm, sft_path, train, rl_seed, out, teacher=teacher)
    result = measure(args, model, processor, sft_path)
    rewards = [h["rewards/accuracy_reward/mean"] for h in history if "rewards/accuracy_reward/mean" in h]
    drift = [v for h in history for k, v in h.items() if k.startswith("attention/") and k.endswith("jsd")]
    quarter = max(1, len(rewards) // 4)
    result.update(
        arm=arm_name,
        sft_seed=sft_seed,
        seed=rl_seed,
        train_seconds=time.perf_counter() - t0,
        train_accuracy_first=sum(rewards[:quarter]) / quarter if rewards else None,
        train_accuracy_last=sum(rewards[-quarter:]) / quarter if rewards else None,
        attn_divergence_max=max(drift) if drift else None,
        collapsed=result["answer_format"] < args.collapse_format,
    )
    return result


class _Inline:
    """The executor of --jobs 1: runs each job in this process when submitted (no worker start-up)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def submit(self, fn, *args):
        future = Future()
        future.set_result(fn(*args))
        return future


def _log(msg: str, start: float) -> None:
    print(f"[{time.perf_counter() - start:7.1f}s] {msg}", flush=True)


def _brief(r: dict) -> str:
    shift = f" shift {r['attn_shift']:.4f}" if "attn_shift" in r else ""
    return f"acc {r['accuracy']:.3f} format {r['answer_format']:.2f} lift {r['lift']:.2f}{shift}"


def run(args) -> dict:
    """The whole benchmark; returns the JSON payload (also written to the output dir)."""

    start, out = time.perf_counter(), Path(args.output_dir)
    if args.from_json:
        return _report(args, json.loads(Path(args.from_json).read_text()), out)
    table = DOSE_ARMS if args.dose else ARMS
    needs_teacher = any(table[a].distill for a in args.arms)
    pool = ProcessPoolExecutor(max_workers=args.jobs, mp_context=get_context("spawn")) if args.jobs > 1 else _Inline()
    with pool:
        jobs = [pool.submit(_sft_job, args, s) for s in range(args.sft_seeds)]
        if needs_teacher:
            jobs.append(pool.submit(_sft_job, args, 0, True))
        baselines, paths = {}, {}
        for job in jobs:
            name, path, result = job.result()
            baselines[name], paths[name] = result, path
            _log(f"{name}: {_brief(result)}", start)
        tasks = [
            (a, s, r, paths[f"sft_{s}"], paths.get("teacher"))
            for s in range(args.sft_seeds)
            for r in range(args.rl_seeds)
            for a in args.arms
        ]
        runs = []
        for job in [pool.submit(_rl_job, args, *t) for t in tasks]:
            result = job.result()
            runs.append(result)
            _log(f"{result['arm']:12s} sft {result['sft_seed']} rl {result['seed']}: {_brief(result)} "
                 f"({result['train_seconds']:.0f}s)", start)
    train, held = data(args)
    payload = {
        "command": "python " + " ".join(shlex.quote(a) for a in ["benchmarks/testbed.py", *sys.argv[1:]]),
        "config": vars(args),
        "box_token_share": box_token_share(held, TASK["image_size"]),
        "majority_accuracy": majority_accuracy(train, held),
        "wall_seconds": time.perf_counter() - start,
        "baselines": baselines,
        "runs": runs,
    }
    return _report(args, payload, out)


def _report(args, payload: dict, out: Path) -> dict:
    """Summary, tables, JSON and plot of a run's payload (`run`, or `--from-json`: its command and sizes kept)."""
    from evidence_report import write_results

    args = argparse.Namespace(**{**vars(args), **{k: v for k, v in payload["config"].items() if k != "from_json"}})
    runs, baselines = payload["runs"], payload["baselines"]
    rows = payload["summary"] = summarise(runs, baselines, args.arms)
    chance, blind, wall = payload["box_token_share"], payload["majority_accuracy"], payload["wall_seconds"]
    header = (
        f"Held-out set: {args.n_eval} rows ({(TASK['image_size'] // 28) ** 2} visual tokens; the target box covers "
        f"{chance:.3f} of them on average, image-blind accuracy {blind:.3f}). {args.sft_seeds} SFT checkpoint(s) "
        f"({args.sft_steps} steps) x {args.rl_seeds} RL seed(s) per arm, {args.rl_steps} RL steps of "
        f"{args.rl_batch} completions ({args.generations} per prompt), lr {args.rl_lr:g}. Mean ± 95% t-interval "
        f"half-width; the intervals of Δ are "
        + (
            f"over the SFT checkpoints' means (df = {args.sft_seeds - 1}; over all runs in the JSON)"
            if args.sft_seeds > 1
            else f"over the {args.rl_seeds} paired RL seeds (one SFT checkpoint)"
        )
        + f". Wall time {wall / 60:.1f} min with {args.jobs} job(s)."
    )
    if args.dose:
        table_md = f"{dose_table(rows, DOSE_REUSE, DOSE_COEFS)}\n\n{dose_pivot(rows, DOSE_REUSE, DOSE_COEFS)}"
        draw = lambda path: plot_dose(rows, DOSE_REUSE, DOSE_COEFS, path)  # noqa: E731
    else:
        table_md, draw = main_table(rows), lambda path: plot_main(rows, baselines, path)  # noqa: E731
    write_results(out, payload["command"], header, table_md, payload, draw)
    return payload


def main(argv=None) -> int:
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
