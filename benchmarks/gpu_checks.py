"""Every check of the capture layer that needs CUDA, in one run, as one table (`benchmarks/gpu_suite.sh` runs it).

  parity   fused Triton kernels vs the torch reference, fp32 and bf16: values, dQ, dK (and d sinks), on masks, GQA,
           softcap, sinks and sliding windows
  micro    capture of the 7B last layer (H=28, H_kv=4, d=128, C=1024, T=8192, bf16) vs SDPA forward+backward
  step     the training-step ratio of `benchmarks/capture.py --preset 7b` (no capture / torch / triton capture)
  ral      one AttentionGRPOTrainer (RAL) step on a tiny model loaded with attn_implementation="flash_attention_2"
  vllm     two RAL steps with vLLM colocate generation (use_vllm=True, vllm_mode="colocate") on a tiny model saved to
           disk: attention/jsd and TRL's importance-sampling ratio logged, finite losses (SKIP without vllm)

`--cpu-smoke` runs the same code at toy sizes on CPU (Triton in its interpreter, the step table with the tiny
preset, the RAL step with sdpa) so this script cannot rot without a GPU; it proves nothing about CUDA numbers.
Each row: check, case, result, value, limit/reference, status (PASS / FAIL / SKIP / INFO). Exit status 1 on a FAIL.
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import time
from pathlib import Path

SMOKE = "--cpu-smoke" in sys.argv
if SMOKE:  # the interpreter must be chosen before anything imports triton
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ROWS: list[tuple] = []


def row(check, case, result, value, limit, status):
    ROWS.append((check, case, result, value, limit, status))
    print(f"[{status}] {check} {case}: {result}={value} ({limit})", flush=True)


# -- parity ---------------------------------------------------------------------------------------------------------
PARITY = {  # batch, heads, kv_heads, q_len, length, dim, rows, mask, extras
    "gqa_pad2d": (2, 8, 2, 300, 300, 64, 77, "pad2d", {}),
    "mqa_causal_C=T": (1, 8, 1, 256, 256, 128, 256, "none", {}),
    "bool4d": (2, 4, 2, 200, 200, 64, 50, "bool4d", {}),
    "softcap_window": (2, 8, 4, 300, 300, 64, 100, "pad2d", {"softcap": 30.0, "sliding_window": 64}),
    "sinks_window_cache": (1, 8, 2, 128, 400, 64, 128, "none", {"sinks": True, "sliding_window": 96}),
    "all_three": (2, 8, 2, 256, 256, 128, 64, "pad2d", {"softcap": 20.0, "sinks": True, "sliding_window": 100}),
}
SMOKE_PARITY = {  # interpreter sizes
    "gqa_pad2d": (2, 4, 2, 37, 37, 16, 9, "pad2d", {}),
    "all_three": (1, 4, 2, 40, 40, 16, 12, "pad2d", {"softcap": 2.0, "sinks": True, "sliding_window": 9}),
}


def _parity_case(device, dtype, spec, seed=0):
    from trl_attention.ops import attention_rows
    from trl_attention.ops.attention_rows_triton import attention_rows_triton

    batch, heads, kv_heads, q_len, length, dim, rows, mask_kind, extras = spec
    gen = torch.Generator(device="cpu").manual_seed(seed)
    q = torch.randn(batch, heads, rows, dim, generator=gen).to(device, dtype).requires_grad_()
    k = torch.randn(batch, kv_heads, length, dim, generator=gen).to(device, dtype).requires_grad_()
    extras = dict(extras)
    if extras.get("sinks"):
        extras["sinks"] = torch.randn(heads, generator=gen).to(device).requires_grad_()
    pad = torch.ones(batch, length, dtype=torch.long)
    pad[0, : length // 10] = 0
    causal = torch.ones(rows, length, dtype=torch.bool).tril(length - rows)
    mask = {"none": None, "pad2d": pad, "bool4d": causal[None, None] & pad.bool()[:, None, None, :]}[mask_kind]
    mask = mask.to(device) if mask is not None else None
    scaling = dim**-0.5
    got = attention_rows_triton(q, k, mask, scaling, True, **extras)
    ref = attention_rows(q, k, mask, scaling, True, backend="torch", **extras)
    weight = torch.randn(got.shape, generator=gen).to(device)
    inputs = [q, k] + ([extras["sinks"]] if "sinks" in extras else [])
    grads = [torch.autograd.grad((out * weight).sum(), inputs) for out in (got, ref)]
    return got, ref, grads


def parity(device):
    cases = SMOKE_PARITY if SMOKE else PARITY
    for dtype, value_tol, grad_tol in ((torch.float32, 5e-6, 1e-4), (torch.bfloat16, 2e-5, 3e-2)):
        name = str(dtype).split(".")[-1]
        for case, spec in cases.items():
            try:
                got, ref, (g, r) = _parity_case(device, dtype, spec)
            except Exception as err:  # a crash is a failure of this row, not of the suite
                row("parity", f"{name} {case}", "error", type(err).__name__, str(err)[:60], "FAIL")
                continue
            err = (got - ref).abs().max().item()
            row("parity", f"{name} {case}", "max|dP|", f"{err:.1e}", f"<= {value_tol:.0e}", _ok(err <= value_tol))
            for label, a, b in zip(("dQ", "dK", "dSink"), g, r):
                rel = ((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-30)).item()
                row(
                    "parity",
                    f"{name} {case}",
                    f"rel {label}",
                    f"{rel:.1e}",
                    f"<= {grad_tol:.0e}",
                    _ok(rel <= grad_tol),
                )


def _ok(flag):
    return "PASS" if flag else "FAIL"


# -- micro-benchmark ------------------------------------------------------------------------------------------------
def _timed(fn, device, repeats):
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated() if device.type == "cuda" else 0
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append(time.perf_counter() - start)
    peak = f"{(torch.cuda.max_memory_allocated() - base) / 2**20:.0f} MiB" if device.type == "cuda" else "n/a MiB"
    return sorted(times)[len(times) // 2] * 1e3, peak


def micro(device):
    import torch.nn.functional as F

    from trl_attention.ops import attention_rows

    heads, kv_heads, dim, rows, length = (4, 2, 16, 16, 64) if SMOKE else (28, 4, 128, 1024, 8192)
    dtype = torch.float32 if SMOKE else torch.bfloat16
    shape = f"H={heads} Hkv={kv_heads} d={dim} C={rows} T={length}"
    gen = torch.Generator(device=device).manual_seed(0)
    q, k, v = (
        torch.randn(1, n, length, dim, device=device, dtype=dtype, generator=gen).requires_grad_()
        for n in (heads, kv_heads, kv_heads)
    )
    grad_out = torch.randn(q.shape, device=device, dtype=dtype, generator=gen)
    grad_rows = torch.randn(1, rows, length, device=device, generator=gen)

    def sdpa():
        F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True).backward(grad_out)

    def capture(backend):
        return lambda: attention_rows(q, k, None, None, True, num_rows=rows, backend=backend).backward(grad_rows)

    repeats = 1 if SMOKE else 10
    base_ms, base_mib = _timed(sdpa, device, repeats)
    row("micro", f"sdpa fwd+bwd {shape}", "ms", f"{base_ms:.2f}", f"peak {base_mib}", "INFO")
    for backend in ("triton", "torch"):
        ms, mib = _timed(capture(backend), device, repeats)
        row(
            "micro",
            f"capture {backend} fwd+bwd",
            "x sdpa",
            f"{ms / base_ms:.2f}",
            f"{ms:.2f} ms, {mib}",
            "INFO",
        )


# -- training-step ratio --------------------------------------------------------------------------------------------
def step(device, seq, timeout):
    args = ["--preset", "tiny", "--seq", "32", "--repeats", "1", "--threads", "1"] if SMOKE else []
    if not SMOKE:
        args = ["--preset", "7b", "--seq", str(seq), "--repeats", "3", "--device", "cuda"]
    cmd = [sys.executable, str(ROOT / "benchmarks" / "capture.py"), *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        row("step", " ".join(args), "timeout", f"> {timeout}s", "raise --step-timeout", "FAIL")
        return
    if proc.returncode:
        row("step", " ".join(args), "exit", proc.returncode, proc.stderr.strip()[-80:], "FAIL")
        return
    for line in proc.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 3 and parts[0].isdigit() and parts[2] in ("torch", "triton", "eager"):
            if "n/a" in line:
                row("step", f"T={parts[0]} {parts[2]}", "skipped", " ".join(parts[3:]), "", "SKIP")
            else:
                row("step", f"T={parts[0]} C={parts[1]} {parts[2]}", "time x", parts[4], f"mem x {parts[6]}", "INFO")


# -- RAL step with flash-attention ----------------------------------------------------------------------------------
def _ral_steps(device, model, tokenizer, out, **extra):
    """Two RAL steps (the second reuses the rollouts, so the term acts); returns the trainer, after train()."""
    import warnings

    from datasets import Dataset

    from trl_attention import AttentionGRPOConfig, AttentionGRPOTrainer

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        args = AttentionGRPOConfig(
            output_dir=out,
            per_device_train_batch_size=4,
            num_generations=4,
            max_completion_length=8,
            max_steps=2,
            num_iterations=2,
            learning_rate=1e-3,
            report_to=[],
            logging_steps=1,
            save_strategy="no",
            bf16=device.type == "cuda",
            use_cpu=device.type != "cuda",
            disable_tqdm=True,
            attn_coef=1.0,
            **extra,
        )
        trainer = AttentionGRPOTrainer(
            model=model,
            reward_funcs=lambda completions, **kw: [len(set(str(c))) / 10.0 for c in completions],
            args=args,
            train_dataset=Dataset.from_dict({"prompt": ["the red square is", "name a shape"] * 4}),
            processing_class=tokenizer,
        )
        trainer.train()
    return trainer


def _logged(trainer, key: str) -> tuple[bool, list]:
    logged = [h for h in trainer.state.log_history if key in h]
    return bool(logged) and all(math.isfinite(h["loss"]) for h in logged if "loss" in h), logged


def ral(device):
    import importlib.util
    import tempfile

    from trl_attention.tiny import build_tiny_lm

    if device.type == "cuda" and importlib.util.find_spec("flash_attn") is None:
        row("ral", "flash_attention_2", "skipped", "flash_attn is not installed", "pip install flash-attn", "SKIP")
        return
    impl = "flash_attention_2" if device.type == "cuda" else "sdpa"
    model, tokenizer = build_tiny_lm(seed=0)
    if device.type == "cuda":
        model = model.to(device, torch.bfloat16)
    model.set_attn_implementation(impl)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        ok, logged = _logged(_ral_steps(device, model, tokenizer, out), "attention/jsd")
    note = f"{time.perf_counter() - start:.1f}s, jsd logged" if logged else "no attention/jsd logged"
    row("ral", f"2 steps {impl}", "finite loss", ok, note, _ok(ok))


def vllm(device):
    """GRPO with vLLM colocate generation and RAL's term: vLLM returns no attention, RAL captures it in the training
    forwards, and its term takes TRL's vLLM importance-sampling weights (docs/trl-internals.md)."""
    import importlib.util
    import tempfile

    from trl_attention.tiny import save_tiny_lm

    if importlib.util.find_spec("vllm") is None or device.type != "cuda":
        why = "vllm is not installed" if importlib.util.find_spec("vllm") is None else "vLLM needs CUDA"
        row("vllm", "colocate + RAL", "skipped", why, "pip install vllm (a wheel on a machine without network)", "SKIP")
        return
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as out:
        path = save_tiny_lm(f"{out}/tiny")  # vLLM loads the model from disk
        trainer = _ral_steps(
            device, path, None, f"{out}/run", use_vllm=True, vllm_mode="colocate", vllm_gpu_memory_utilization=0.2
        )
    ok, logged = _logged(trainer, "attention/jsd")
    ratio = [h[k] for h in trainer.state.log_history for k in h if k.startswith("sampling/importance_sampling_ratio")]
    ok = ok and bool(ratio)
    note = f"{time.perf_counter() - start:.1f}s, jsd and IS ratio logged" if ok else "jsd or IS ratio not logged"
    row("vllm", "2 steps colocate + RAL", "finite loss", ok, note, _ok(ok))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-smoke", action="store_true", help="toy sizes on CPU (Triton interpreter)")
    parser.add_argument("--only", nargs="+", choices=["parity", "micro", "step", "ral", "vllm"], default=None)
    parser.add_argument("--step-seq", type=int, default=2048, help="T of the 7b training-step ratio")
    parser.add_argument("--step-timeout", type=int, default=330, help="seconds for benchmarks/capture.py")
    args = parser.parse_args(argv)
    if not SMOKE and not torch.cuda.is_available():
        print("no CUDA device: run with --cpu-smoke for the CPU smoke test")
        return 2
    device = torch.device("cpu" if SMOKE else "cuda")
    checks = args.only or ["parity", "micro", "step", "ral", "vllm"]
    for name in checks:
        start = time.perf_counter()
        try:
            {"parity": parity, "micro": micro, "ral": ral, "vllm": vllm}.get(
                name, lambda d: step(d, args.step_seq, args.step_timeout)
            )(device)
        except Exception as err:
            row(name, "crashed", type(err).__name__, str(err)[:80], "", "FAIL")
        print(f"-- {name} took {time.perf_counter() - start:.0f}s", flush=True)
    print(f"\n{'check':7s} {'case':44s} {'result':12s} {'value':>10s}  {'limit / reference':28s} status")
    for check, case, result, value, limit, status in ROWS:
        print(f"{check:7s} {case:44s} {result:12s} {str(value):>10s}  {str(limit):28s} {status}")
    failed = sum(r[-1] == "FAIL" for r in ROWS)
    print(f"\n{len(ROWS)} rows, {failed} FAIL, device={torch.cuda.get_device_name() if not SMOKE else 'cpu (smoke)'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
