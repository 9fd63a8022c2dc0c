"""Cost of attention capture in one training step (forward + backward + optimiser step), one run, as ratios.

Modes (peak memory: each mode in a fresh subprocess; time: the modes interleaved in one process, median of
`--repeats` rounds, so machine-load drift hits every mode alike):
  sdpa     the model's fast kernel, no capture (baseline)
  capture  sdpa everywhere + capture_attention on the last layer, the captured rows enter the loss
  eager    the anchors' way: eager attention in every layer with output_attentions=True

Usage: python benchmarks/capture_cost.py [--seq 2048 --rows 512 --layers 8 --heads 8 --hidden 256 --device cpu]
Prints time and peak-memory ratios against `sdpa`. CPU peak memory is RSS growth over the post-setup baseline;
CUDA uses torch.cuda.max_memory_allocated.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


MODES = ("sdpa", "capture", "eager")


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def build(args):
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    from trl_attention import capture_attention

    torch.manual_seed(0)
    device = torch.device(args.device)
    config = Qwen2Config(
        vocab_size=1024, hidden_size=args.hidden, intermediate_size=2 * args.hidden, num_hidden_layers=args.layers,
        num_attention_heads=args.heads, num_key_value_heads=args.heads, max_position_embeddings=args.seq,
    )  # fmt: skip
    model = Qwen2ForCausalLM(config).to(device, dtype=getattr(torch, args.dtype))
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
    ids = torch.randint(0, 1024, (args.batch, args.seq), device=device)

    def step(mode):
        model.set_attn_implementation("eager" if mode == "eager" else "sdpa")
        if mode == "capture":
            with capture_attention(model, num_rows=args.rows) as cap:
                out = model(input_ids=ids)
            rows = cap.probs
        elif mode == "eager":
            out = model(input_ids=ids, output_attentions=True)
            rows = out.attentions[-1].float().mean(1)[:, -args.rows :]
        else:
            out, rows = model(input_ids=ids), None
        loss = out.logits.float().logsumexp(-1).mean()
        if rows is not None:
            loss = loss + (rows * rows.detach().log1p()).sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return step, device


def peak_memory(args) -> float:
    """MiB above the post-setup baseline for one warm-up step and one measured step of `args.mode`."""
    import torch

    step, device = build(args)
    # Baseline before the first step: ru_maxrss is a lifetime peak, so it must include the warm-up step.
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_mib()
    step(args.mode)  # warm-up (allocator, lazy init)
    step(args.mode)
    if device.type == "cuda":
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base


def step_times(args, modes) -> dict:
    """Median step seconds per mode, the modes interleaved round by round in one process."""
    step, _ = build(args)
    for mode in modes:
        step(mode)  # warm-up
    times = {mode: [] for mode in modes}
    for _ in range(args.repeats):
        for mode in modes:
            start = time.perf_counter()
            step(mode)
            times[mode].append(time.perf_counter() - start)
    return {mode: sorted(t)[len(t) // 2] for mode, t in times.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=MODES, help="measure one mode's peak memory (internal)")
    parser.add_argument("--seq", type=int, default=2048)
    parser.add_argument("--rows", type=int, default=512, help="captured query rows (completion length)")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    if args.mode:
        print(json.dumps({"peak_mib": peak_memory(args)}))
        return 0
    forwarded = list(argv if argv is not None else sys.argv[1:])
    results = {}
    # Memory first: Linux carries ru_maxrss across fork+exec, so children must start from a small parent.
    for mode in MODES:
        proc = subprocess.run([sys.executable, __file__, "--mode", mode, *forwarded], capture_output=True, text=True)
        if proc.returncode:
            print(proc.stderr, file=sys.stderr)
            return proc.returncode
        results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    for mode, seconds in step_times(args, MODES).items():
        results[mode]["seconds"] = seconds
    base = results["sdpa"]
    print(f"seq={args.seq} rows={args.rows} layers={args.layers} heads={args.heads} hidden={args.hidden} "
          f"batch={args.batch} dtype={args.dtype} device={args.device}")  # fmt: skip
    print(f"{'mode':8s} {'step s':>8s} {'time x':>7s} {'peak MiB':>9s} {'mem x':>6s}")
    for mode, r in results.items():
        print(f"{mode:8s} {r['seconds']:8.3f} {r['seconds'] / base['seconds']:7.2f} {r['peak_mib']:9.1f} "
              f"{r['peak_mib'] / max(base['peak_mib'], 1e-9):6.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
