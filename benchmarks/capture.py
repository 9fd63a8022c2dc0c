"""Cost of attention capture in a training step of a Qwen2.5-VL-shaped model (text part), as ratios, in one run.

For each sequence length T (default 512 1024 2048 4096) with C = T/4 captured rows, one training step (forward,
backward, SGD step) in four modes:
  none    sdpa in every layer, no capture (the baseline, "a")
  eager   the anchors' way: eager attention in every layer with output_attentions=True ("b")
  torch   sdpa + capture_attention(backend="torch") on the last layer ("c")
  triton  sdpa + capture_attention(backend="triton") on the last layer, CUDA only ("d")
In eager/torch/triton the captured rows enter the loss, so their backward runs.

Peak memory: each (T, mode) in a fresh subprocess started by this small parent (Linux carries ru_maxrss across
fork+exec, so children must not start from a grown parent). CPU: peak RSS growth over the post-setup RSS, with
glibc told to mmap every block over 64 KiB so freed tensors leave RSS at once (RSS then tracks live tensors, not
the allocator's caching); CUDA: torch.cuda.max_memory_allocated growth. Time: one subprocess per T runs the modes
interleaved round by round, median of --repeats, so load drift hits every mode alike (on a shared CPU, --threads 1
avoids the stalls of oversubscribed OpenMP threads). `extra/BCT` is the extra peak memory over `none` in units of
one fp32 (B, C, T) tensor, the size of the returned rows: constant across T means memory linear in C*T.

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
       [--modes none eager torch triton]
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
        if probs is not None:
            loss = loss + (probs * probs.detach().log1p()).sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()

    return step, device, rows


def child_memory(args) -> dict:
    """MiB above the post-setup baseline over one warm-up and one measured step of one mode."""
    import torch

    _threads(args)
    device = torch.device(args.device)
    if reason := _unavailable(args.mode, device):
        return {"na": reason}
    step, device, _ = build(args, args.seq[0])
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated() / 2**20
    else:
        base = _rss_mib()  # ru_maxrss is a lifetime peak: the baseline is taken before the warm-up step
    step(args.mode)
    step(args.mode)
    if device.type == "cuda":
        return {"peak_mib": torch.cuda.max_memory_allocated() / 2**20 - base}
    return {"peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - base}


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
    forwarded = [
        "--preset",
        args.preset,
        "--device",
        args.device,
        "--dtype",
        args.dtype,
        "--batch",
        str(args.batch),
        "--rows-frac",
        str(args.rows_frac),
        "--repeats",
        str(args.repeats),
        "--seq",
        str(seq),
        "--threads",
        str(args.threads),
        "--modes",
        *args.modes,
    ]
    cmd = [sys.executable, __file__, f"--child-{kind}", *forwarded] + (["--mode", mode] if mode else [])
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="0")
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if proc.returncode:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"child {kind} T={seq} {mode or ''} failed")
    return json.loads(proc.stdout.strip().splitlines()[-1])


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
    print(
        f"{'T':>5s} {'C':>5s} {'mode':7s} {'step s':>8s} {'time x':>7s} {'peak MiB':>9s} {'mem x':>6s} {'extra/BCT':>9s}"
    )
    for seq in args.seq:
        rows = max(1, int(seq * args.rows_frac))
        base_s, base_m = seconds[seq]["none"], memory[(seq, "none")]["peak_mib"]
        for mode in modes:
            mem = memory[(seq, mode)]
            if "na" in mem:
                print(f"{seq:5d} {rows:5d} {mode:7s} {mem['na']}")
                continue
            s, m = seconds[seq][mode], mem["peak_mib"]
            per_ct = (m - base_m) * 2**20 / (4 * args.batch * rows * seq)
            print(f"{seq:5d} {rows:5d} {mode:7s} {s:8.3f} {s / base_s:7.2f} {m:9.1f} {m / base_m:6.2f} {per_ct:9.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
