"""Cost of attention capture in one training step (forward + backward + optimiser step), one run, as ratios.

Modes, each in a fresh subprocess so peak memory is its own:
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


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def run_mode(args) -> dict:
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
    model.set_attn_implementation("eager" if args.mode == "eager" else "sdpa")
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-4)
    ids = torch.randint(0, 1024, (args.batch, args.seq), device=device)

    def step():
        if args.mode == "capture":
            with capture_attention(model, num_rows=args.rows) as cap:
                out = model(input_ids=ids)
            rows = cap.probs
        elif args.mode == "eager":
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

    # Baseline before the first step: ru_maxrss is a lifetime peak, so it must include the warm-up step.
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_mib()
    step()  # warm-up (allocator, lazy init)
    times = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    if device.type == "cuda":
        peak = (torch.cuda.max_memory_allocated() - base) / 2**20
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base
    return {"mode": args.mode, "seconds": sorted(times)[len(times) // 2], "peak_mib": peak}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mode", choices=["sdpa", "capture", "eager"], help="run one mode (internal)")
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
        print(json.dumps(run_mode(args)))
        return 0
    forwarded = [a for a in (argv if argv is not None else sys.argv[1:])]
    results = {}
    for mode in ("sdpa", "capture", "eager"):
        proc = subprocess.run([sys.executable, __file__, "--mode", mode, *forwarded], capture_output=True, text=True)
        if proc.returncode:
            print(proc.stderr, file=sys.stderr)
            return proc.returncode
        results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
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
