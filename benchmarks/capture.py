"""Cost of attention capture in a training step of a Qwen2.5-VL-shaped model (text part), as ratios, in one run.

For each sequence length T (default 512 1024 2048 4096) with C = T/4 captured rows, one training step (forward,
backward, SGD step) in four modes:
  none    sdpa in every layer, no capture (the baseline, "a")
  eager   the anchors' way: eager attention in every layer with output_attentions=True ("b")
  torch   sdpa + capture_attention(backend="torch") on the last layer ("c")
  triton  sdpa + capture_attention(backend="triton") on the last layer, CUDA only ("d")
In eager/torch/triton the captured rows enter the loss as a fixed weighted sum over keys, `(probs @ w).sum()`, so
their backward runs and the loss holds no (B, C, T) tensor besides the rows and, in backward, their gradient (an
elementwise loss such as `probs * f(probs)` would keep one more for backward).

Peak memory: each (T, mode) in a fresh subprocess started by this small parent (Linux carries ru_maxrss across
fork+exec, so children must not start from a grown parent). CPU: peak RSS growth, with glibc told to mmap every
block over 64 KiB so freed tensors leave RSS at once (RSS then tracks live tensors, not the allocator's caching);
CUDA: torch.cuda.max_memory_allocated growth. `peak MiB` and `extra/BCT`: the step after a warm-up step, over the
memory at its start (the kernel's peak-RSS mark is reset in between, /proc/self/clear_refs; a lifetime peak where
that is refused); `cold/BCT`: the first two steps over the memory before them, so one-time growth (lazy imports,
library caches) and anything a step leaves behind count too. `--live-bytes` adds `live/BCT` from a third step:
the most bytes of tensors created by aten ops alive at once (a TorchDispatchMode; exact for tensors, blind to
scratch memory inside a kernel). Time: one subprocess per T runs the modes interleaved round by round, median of
--repeats, so load drift hits every mode alike (on a shared CPU, --threads 1 avoids the stalls of oversubscribed
OpenMP threads). `*/BCT` is the extra peak memory over `none` in units of one fp32 (B, C, T) tensor, the size of
the returned rows: constant across T means memory linear in C*T; 2 is the rows and their gradient.

Model: Qwen2_5_VLForConditionalGeneration, text-only input, a 1-layer stub vision tower (not run). `--preset 7b` is
Qwen2.5-VL-7B's text part (28 layers, hidden 3584, 28/4 heads, head dim 128, vocab 152064; a GPU). The default
`--preset cpu` keeps the 7B's attention geometry per key/value group (head dim 128, 7 query heads per kv head) at
Qwen2.5-0.5B width (hidden 896, MLP 4864), 4 layers, vocab 8192, so a step fits a small CPU. Fewer layers and a
smaller vocabulary make the capture's relative cost larger than in the full model, not smaller.

`--micro`: the capture alone against SDPA forward+backward of the same layer (7B last layer: H=28, H_kv=4, d=128,
C=1024, T=8192, bf16 on CUDA), per backend.

`--preset toy` is an attention-heavy toy (8 layers, hidden 256, 8 heads / 2 kv heads, head dim 32, MLP 512, vocab
1024), where the capture's extra memory is the largest share: `--preset toy --batch 2 --seq 2048 --modes none torch`.

Usage: python benchmarks/capture.py [--seq 512 1024 2048 4096] [--preset cpu|7b|toy] [--device cpu|cuda]
       [--modes none eager torch triton] [--live-bytes]
       python benchmarks/capture.py --micro [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

MODES = ("none", "eager", "torch", "triton")
_SHAPE = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
)
PRESETS = {
    "cpu": dict(zip(_SHAPE, (896, 4864, 4, 7, 1, 128, 8192))),
    "7b": dict(zip(_SHAPE, (3584, 18944, 28, 28, 4, 128, 152064))),
    "tiny": dict(zip(_SHAPE, (64, 128, 2, 4, 2, 16, 256))),  # smoke test of this script only
    # attention-heavy toy (8 layers, hidden 256, 8 heads in 2 key/value groups, small MLP and vocabulary): where the
    # capture's memory shows most; run with --batch 2 --seq 2048
    "toy": dict(zip(_SHAPE, (256, 512, 8, 8, 2, 32, 1024))),
}


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _unavailable(mode, device) -> str | None:
    """Why a mode cannot run here (the Triton backend needs CUDA and triton), or None."""
    if mode != "triton":
        return None
    import torch

    if device.type != "cuda" or not torch.cuda.is_available():
        return "n/a (no CUDA)"
    try:
        import triton  # noqa: F401
    except ImportError:
        return "n/a (no triton)"
    return None


def _threads(args):
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)


def build(args, seq):
    import torch
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    from trl_attention import capture_attention

    torch.manual_seed(0)
    device = torch.device(args.device)
    half = PRESETS[args.preset]["head_dim"] // 2
    mrope = [half // 4, (half - half // 4) // 2, half - half // 4 - (half - half // 4) // 2]  # Qwen's 16/24/24 at 128
    text = {
        **PRESETS[args.preset],
        "max_position_embeddings": max(seq, 4096),
        "rms_norm_eps": 1e-6,
        "rope_parameters": {"rope_type": "default", "rope_theta": 1e6, "mrope_section": mrope},
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
    }
    vision = {
        "depth": 1,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_heads": 2,
        "out_hidden_size": text["hidden_size"],
    }
    config = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=vision,
        image_token_id=5,
        video_token_id=6,
        vision_start_token_id=3,
        vision_end_token_id=4,
    )
    with torch.device(device):
        model = Qwen2_5_VLForConditionalGeneration(config).to(dtype=getattr(torch, args.dtype)).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6)
    ids = torch.randint(10, text["vocab_size"], (args.batch, seq), device=device)
    rows = max(1, int(seq * args.rows_frac))
    key_weight = torch.linspace(-1.0, 1.0, seq, device=device)

    def step(mode):
        model.set_attn_implementation("eager" if mode == "eager" else "sdpa")
        if mode in ("torch", "triton"):
            with capture_attention(model, num_rows=rows, backend=mode) as cap:
                out = model(input_ids=ids)
            probs = cap.probs
        elif mode == "eager":
            out = model(input_ids=ids, output_attentions=True)
            probs = out.attentions[-1].float().mean(1)[:, -rows:]
        else:
            out, probs = model(input_ids=ids), None
        loss = out.logits.float().logsumexp(-1).mean()
        if probs is not None:  # a fixed weighted sum over keys: no (B, C, T) tensor beyond the rows and their grad
            loss = loss + (probs @ key_weight).sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return step, device, rows


def _reset_peak_rss() -> bool:
    """Set the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux >= 4.0); False where that is refused."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        return False
    return True


def _peak_rss_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmHWM:")) / 1024


def child_memory(args) -> dict:
    """MiB above the baseline at the peak of one mode's step. "peak_mib": a step after a warm-up step, over the
    memory at its start; "cold_mib": the first two steps, over the memory before the first (one-time growth in)."""
    import torch

    _threads(args)
    device = torch.device(args.device)
    if reason := _unavailable(args.mode, device):
        return {"na": reason}
    step, device, _ = build(args, args.seq[0])
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        cold_base = torch.cuda.memory_allocated()
        step(args.mode)
        cold = torch.cuda.max_memory_allocated() - cold_base
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        step(args.mode)
        peak = torch.cuda.max_memory_allocated()
        result = {"peak_mib": (peak - base) / 2**20, "cold_mib": max(cold, peak - cold_base) / 2**20}
    else:
        cold_base, resettable = _rss_mib(), _reset_peak_rss()
        step(args.mode)  # warm-up: one-time growth (lazy imports, kernel and allocator caches)
        cold = _peak_rss_mib() if resettable else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        base = _rss_mib() if resettable and _reset_peak_rss() else cold_base  # else ru_maxrss: a lifetime peak
        step(args.mode)
        peak = _peak_rss_mib() if resettable else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        result = {"peak_mib": peak - base, "cold_mib": max(cold, peak) - cold_base}
    if args.live_bytes:
        from trl_attention_recipes.memory import LiveTensorBytes

        with LiveTensorBytes() as live:
            step(args.mode)
        result["live_mib"] = live.peak / 2**20
    return result


def child_times(args) -> dict:
    """Median step seconds per runnable mode at one T, the modes interleaved round by round."""
    import torch

    _threads(args)
    device = torch.device(args.device)
    modes = [m for m in MODES if m in args.modes and not _unavailable(m, device)]
    step, _, _ = build(args, args.seq[0])
    for mode in modes:
        step(mode)  # warm-up
    times = {mode: [] for mode in modes}
    for _ in range(args.repeats):
        for mode in modes:
            start = time.perf_counter()
            step(mode)
            times[mode].append(time.perf_counter() - start)
    return {mode: sorted(t)[len(t) // 2] for mode, t in times.items()}


def micro(args) -> int:
    """Capture of C rows of one layer vs SDPA forward+backward of that layer (median ms, peak MiB above inputs)."""
    import torch
    import torch.nn.functional as F

    from trl_attention.ops import attention_rows

    _threads(args)
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    heads, kv_heads, dim, rows, length = args.micro_shape
    gen = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(1, heads, length, dim, device=device, dtype=dtype, generator=gen)
    k = torch.randn(1, kv_heads, length, dim, device=device, dtype=dtype, generator=gen)
    v = torch.randn(1, kv_heads, length, dim, device=device, dtype=dtype, generator=gen)
    q.requires_grad_(), k.requires_grad_(), v.requires_grad_()
    grad_out = torch.randn(q.shape, device=device, dtype=dtype, generator=gen)
    grad_probs = torch.randn(1, rows, length, device=device, generator=gen)

    def sdpa():
        F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True).backward(grad_out)

    def capture(backend):
        def run():
            attention_rows(q, k, None, None, True, num_rows=rows, backend=backend).backward(grad_probs)

        return run

    cases = {"sdpa fwd+bwd (full layer)": sdpa, "capture torch fwd+bwd": capture("torch")}
    cases["capture triton fwd+bwd"] = capture("triton") if device.type == "cuda" else None
    print(f"micro: H={heads} H_kv={kv_heads} d={dim} C={rows} T={length} dtype={args.dtype} device={args.device}")
    print(f"{'case':28s} {'ms':>10s} {'peak MiB':>10s}")
    for name, fn in cases.items():
        if fn is None:
            print(f"{name:28s} {'n/a (no CUDA)':>21s}")
            continue
        fn()  # warm-up / compile
        q.grad = k.grad = v.grad = None
        sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
        sync()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
        times = []
        for _ in range(args.repeats):
            q.grad = k.grad = v.grad = None
            start = time.perf_counter()
            fn()
            sync()
            times.append(time.perf_counter() - start)
        peak = f"{(torch.cuda.max_memory_allocated() - base) / 2**20:10.1f}" if device.type == "cuda" else "n/a (CPU)"
        print(f"{name:28s} {sorted(times)[len(times) // 2] * 1e3:10.1f} {peak:>10s}")
    return 0


def _child(args, kind, seq, mode=None) -> dict:
    names = ("preset", "device", "dtype", "batch", "rows_frac", "repeats", "threads")
    forwarded = [f"--{name.replace('_', '-')}={getattr(args, name)}" for name in names] + [f"--seq={seq}"]
    forwarded += ["--modes", *args.modes] + (["--live-bytes"] if args.live_bytes else [])
    cmd = [sys.executable, __file__, f"--child-{kind}", *forwarded] + (["--mode", mode] if mode else [])
    # memory children mmap every block over 4 KiB, so a freed tensor leaves RSS at once even at the tiny preset;
    # timing children keep the 64 KiB threshold of earlier runs (fewer page faults, comparable step seconds)
    threshold = "4096" if kind == "memory" else "65536"
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=threshold, MALLOC_TRIM_THRESHOLD_="0")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"child {kind} T={seq} {mode or ''} failed")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _ratio(value: float, base: float) -> float:
    """value / base; 1 for the baseline itself, nan where the baseline grew by nothing measurable."""
    return 1.0 if value == base else value / base if base > 0 else float("nan")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seq", type=int, nargs="+", default=[512, 1024, 2048, 4096])
    parser.add_argument("--rows-frac", type=float, default=0.25, help="C = T * rows_frac")
    parser.add_argument("--preset", choices=sorted(PRESETS), default="cpu")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="default: float32 on CPU, bfloat16 on CUDA")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES), help="modes to run (none first)")
    parser.add_argument(
        "--live-bytes", action="store_true", help="also count live tensor bytes in a third step (live/BCT column)"
    )
    parser.add_argument("--micro", action="store_true", help="last-layer micro-benchmark instead")
    parser.add_argument(
        "--micro-shape", type=int, nargs=5, default=[28, 4, 128, 1024, 8192], metavar=("H", "H_KV", "D", "C", "T")
    )
    parser.add_argument("--child-memory", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--child-times", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.dtype = args.dtype or ("bfloat16" if args.device.startswith("cuda") else "float32")
    if args.micro:
        return micro(args)
    if args.child_memory or args.child_times:
        print(json.dumps(child_memory(args) if args.child_memory else child_times(args)))
        return 0
    # Memory children first, from this parent that never imports torch; then one timing child per T.
    modes = [m for m in MODES if m in args.modes or m == "none"]  # "none" is the baseline of every ratio
    args.modes = modes
    memory = {(seq, mode): _child(args, "memory", seq, mode) for seq in args.seq for mode in modes}
    seconds = {seq: _child(args, "times", seq) for seq in args.seq}
    print(
        f"preset={args.preset} ({PRESETS[args.preset]}) batch={args.batch} dtype={args.dtype} "
        f"device={args.device} C=T*{args.rows_frac} repeats={args.repeats} threads={args.threads or 'default'}"
    )
    live = f" {'live/BCT':>8s}" if args.live_bytes else ""
    print(
        f"{'T':>5s} {'C':>5s} {'mode':7s} {'step s':>8s} {'time x':>7s} {'peak MiB':>9s} {'mem x':>6s} "
        f"{'extra/BCT':>9s} {'cold/BCT':>8s}{live}"
    )
    for seq in args.seq:
        rows = max(1, int(seq * args.rows_frac))
        bct = 4 * args.batch * rows * seq / 2**20  # MiB of one fp32 (B, C, T) tensor
        base_s, base = seconds[seq]["none"], memory[(seq, "none")]
        for mode in modes:
            mem = memory[(seq, mode)]
            if "na" in mem:
                print(f"{seq:5d} {rows:5d} {mode:7s} {mem['na']}")
                continue
            s, m = seconds[seq][mode], mem["peak_mib"]
            extra = [(mem[k] - base[k]) / bct for k in ("peak_mib", "cold_mib", "live_mib") if k in mem]
            print(
                f"{seq:5d} {rows:5d} {mode:7s} {s:8.3f} {s / base_s:7.2f} {m:9.1f} {_ratio(m, base['peak_mib']):6.2f} "
                f"{extra[0]:9.2f} {extra[1]:8.2f}" + "".join(f" {e:8.2f}" for e in extra[2:])
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
