"""What each method does to accuracy and to where the model looks, on the tiny VLM at CPU scale (docs/evidence.md).

The papers' pipeline in miniature: SFT with TRL's SFTTrainer (reasoning format, and answer-only for RAL-zero) saved
as a checkpoint, a wider teacher SFT'd longer, then one RL run per arm and seed from the checkpoint, all arms with
the same steps, batch, generations and num_iterations=2. Each model is measured on one fixed held-out set: greedy
accuracy, and the answer tokens' attention on the target box (region share, lift, entropy). Writes
results.md / results.json / results.png to the output dir and prints the table.

    python benchmarks/evidence.py --quick          # 2 min on 2 idle cores (~10 shared): 2 seeds, short runs
    python benchmarks/evidence.py --task grid      # the demo's layout, where SFT learns: 25 min (--quick 8.4)
    python benchmarks/evidence.py                  # 11 min on 2 idle cores (~60 shared): 5 seeds, longer runs
    python benchmarks/evidence.py --ablation       # RAL: attn_layers=[1,-1], attn_divergence jsd / kl / reverse_kl, attn_heads per_head
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")  # more threads than free cores slows these small kernels ~10x
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from evidence_data import FORMATS, make_distractor_dataset  # noqa: E402
from evidence_report import markdown_table, plot, summarise, write_results  # noqa: E402
from evidence_train import ABLATION_ARMS, ARMS, load, train_rl, train_sft  # noqa: E402

from trl_attention_recipes.evaluation import box_token_share, evaluate, majority_accuracy  # noqa: E402

ALL_ARMS = {**ARMS, **ABLATION_ARMS}
# Full run; --quick replaces these. Both are the same pipeline, only seeds / steps / held-out rows differ.
FULL = dict(seeds=5, sft_steps=200, teacher_steps=300, rl_steps=50, n_eval=96)
QUICK = dict(seeds=2, sft_steps=100, teacher_steps=120, rl_steps=10, n_eval=64)
# --task grid (the demo's task, where SFT learns: docs/demo.md) changes these defaults. "free" keeps TRL's
# trainer defaults (bf16 autocast on CPU included) so the published free-layout table reproduces.
TASKS = {
    "free": dict(n_train=512, sft_batch=8, rl_batch=8, rl_lr=1e-3, shapes=(3, 4), sft_extra={}, rl_extra={}),
    "grid": dict(
        n_train=4096,
        sft_batch=16,
        rl_batch=16,
        rl_lr=3e-4,
        shapes=(2, 3),
        sft_extra=dict(warmup_steps=100, adam_beta2=0.95, bf16=False),
        rl_extra=dict(bf16=False),
    ),
}
GRID_RUN = {
    False: dict(sft_steps=600, teacher_steps=900, rl_steps=100, n_eval=128),
    True: dict(seeds=2, teacher_steps=300, rl_steps=30),  # --quick
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="the ~10 minute form: " + str(QUICK))
    p.add_argument(
        "--task",
        choices=sorted(TASKS),
        default="free",
        help="free: shapes anywhere, colour and shape questions (the tiny model does not learn it); grid: each "
        f"object on its own 2x2-token slot, colour questions (the demo's task); grid sets {TASKS['grid']} and "
        f"steps {GRID_RUN}",
    )
    p.add_argument("--ablation", action="store_true", help="arms grpo, ral and the RAL ablations instead")
    p.add_argument("--arms", nargs="+", choices=sorted(ALL_ARMS), help="arms to run (default: the six methods)")
    p.add_argument("--seeds", type=int, help=f"RL seeds per arm (default {FULL['seeds']})")
    p.add_argument("--sft-steps", type=int, help=f"student SFT steps (default {FULL['sft_steps']})")
    p.add_argument("--teacher-steps", type=int, help=f"teacher SFT steps (default {FULL['teacher_steps']})")
    p.add_argument("--rl-steps", type=int, help=f"RL optimiser steps per arm (default {FULL['rl_steps']})")
    p.add_argument("--n-eval", type=int, help=f"held-out rows (default {FULL['n_eval']})")
    p.add_argument("--n-train", type=int, help="training rows (SFT and RL prompts; default 512)")
    p.add_argument("--image-size", type=int, default=224, help="square images; (size/28)^2 visual tokens")
    p.add_argument("--sft-batch", type=int, help="SFT rows per step (default 8)")
    p.add_argument("--sft-lr", type=float, default=3e-3)
    p.add_argument("--rl-batch", type=int, help="completions per step (default 8)")
    p.add_argument("--generations", type=int, default=4, help="completions per prompt (GRPO group)")
    p.add_argument("--rl-lr", type=float, help="RL learning rate (default 1e-3)")
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 per free core)")
    p.add_argument("--output-dir", help="default outputs/evidence[_grid][_quick]")
    p.add_argument("--progress", action="store_true", help="show the trainers' progress bars")
    args = p.parse_args(argv)
    defaults = {**(QUICK if args.quick else FULL), **TASKS[args.task]}
    if args.task == "grid":
        defaults.update(GRID_RUN[False], **(GRID_RUN[True] if args.quick else {}))
    for key, value in defaults.items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.arms is None:
        args.arms = ["grpo", "ral", *ABLATION_ARMS] if args.ablation else list(ARMS)
    suffix = ("_grid" if args.task == "grid" else "") + ("_quick" if args.quick else "")
    args.output_dir = Path(args.output_dir or f"outputs/evidence{suffix}")
    args.max_completion = {"reasoning": 32, "answer": 16}
    return args


def _log(msg: str, start: float) -> None:
    print(f"[{time.perf_counter() - start:7.1f}s] {msg}", flush=True)


def _brief(r: dict) -> str:
    return f"acc {r['accuracy']:.3f} share {r['region_share']:.3f} lift {r['lift']:.2f} H {r['entropy']:.2f}"


def run(args) -> dict:
    """The whole benchmark; returns the JSON payload (also written to the output dir)."""
    torch.set_num_threads(args.threads)
    start, out = time.perf_counter(), args.output_dir
    ckpt = out / "checkpoints"
    arms = {name: ALL_ARMS[name] for name in args.arms}
    fmts = [f for f in FORMATS if any(arm.fmt == f for arm in arms.values())]
    task = dict(image_size=args.image_size, shapes=args.shapes, layout=args.task)
    train = {f: make_distractor_dataset(args.n_train, seed=1, fmt=f, **task) for f in fmts}
    held = {f: make_distractor_dataset(args.n_eval, seed=10_000, fmt=f, **task) for f in fmts}
    chance = box_token_share(next(iter(held.values())), args.image_size)
    blind = majority_accuracy(next(iter(train.values())), next(iter(held.values())))

    students, baselines = {}, {}
    for f in fmts:  # one SFT checkpoint per format, shared by every arm and seed (as in the papers)
        name = "sft" if f == "reasoning" else "sft_zero"
        students[f] = train_sft(args, train[f], f, 0, args.sft_steps, str(ckpt / name))
        baselines[name] = evaluate(*load(students[f]), held[f], args.max_completion[f])
        _log(f"{name}: {_brief(baselines[name])}", start)
    teacher = None
    if any(arm.distill for arm in arms.values()):
        teacher = train_sft(
            args, train["reasoning"], "reasoning", 0, args.teacher_steps, str(ckpt / "teacher"), teacher=True
        )
        baselines["teacher"] = evaluate(*load(teacher), held["reasoning"], args.max_completion["reasoning"])
        _log(
            f"teacher (wider, {args.teacher_steps} steps): {_brief(baselines['teacher'])}; region share vs "
            f"sft {baselines['teacher']['region_share']:.3f} vs {baselines['sft']['region_share']:.3f}",
            start,
        )

    runs: dict = {name: [] for name in arms}
    for seed in range(args.seeds):
        for name, arm in arms.items():
            t0 = time.perf_counter()
            model, processor, history = train_rl(
                args,
                arm,
                students[arm.fmt],
                train[arm.fmt],
                seed,
                str(out / "rl" / name),
                teacher=load(teacher)[0] if arm.distill else None,
            )
            result = evaluate(model, processor, held[arm.fmt], args.max_completion[arm.fmt])
            rewards = [h["reward"] for h in history if "reward" in h]
            jsd = [
                h[k]
                for h in history
                for k in h
                if k.startswith("attention/") and k[10:] in ("jsd", "kl", "reverse_kl")
            ]
            result.update(
                seed=seed,
                train_seconds=time.perf_counter() - t0,
                reward_first=rewards[0] if rewards else None,
                reward_last=rewards[-1] if rewards else None,
                attn_divergence_max=max(jsd) if jsd else None,
            )
            runs[name].append(result)
            _log(f"seed {seed} {name:16s} {_brief(result)} ({result['train_seconds']:.0f}s)", start)

    rows = summarise(runs, baselines, unpaired=[n for n, arm in arms.items() if arm.fmt != "reasoning"])
    table = markdown_table(rows)
    command = "python " + " ".join(shlex.quote(a) for a in ["benchmarks/evidence.py", *sys.argv[1:]])
    wall = time.perf_counter() - start
    header = (
        f"Held-out set: {args.n_eval} rows, {(args.image_size // 28) ** 2} visual tokens per image; the target "
        f"box covers {chance:.3f} of them on average (the region share of uniform attention); image-blind "
        f"baseline accuracy {blind:.3f} (the commonest training answer per question kind). Mean ± 95% "
        f"t-interval half-width over {args.seeds} seed(s); Δ = paired difference to grpo on the same seed (none for ral_zero: other format and checkpoint). "
        f"Wall time {wall / 60:.1f} min."
    )
    payload = {
        "command": command,
        "config": {k: v if not isinstance(v, Path) else str(v) for k, v in vars(args).items()},
        "box_token_share": chance,
        "majority_accuracy": blind,
        "wall_seconds": wall,
        "summary": rows,
        "baselines": baselines,
        "runs": runs,
    }
    write_results(out, command, header, table, payload, lambda path: plot(rows, path, chance))
    return payload


def main(argv=None) -> int:
    run(parse_args(argv))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
