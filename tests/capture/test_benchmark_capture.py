"""benchmarks/capture.py runs end to end (tiny preset) and prints its ratio table: keeps the benchmark runnable."""

import subprocess
import sys

import torch

from tests.testing_utils import ROOT

SCRIPT = ROOT / "benchmarks" / "capture.py"


def test_capture_benchmark_prints_the_ratio_table():
    cmd = [sys.executable, str(SCRIPT), "--preset", "tiny", "--seq", "32", "--repeats", "1", "--threads", "1"]
    cmd.append("--live-bytes")  # also the per-op live-tensor count (trl_attention_recipes.memory)
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True).stdout
    rows = {line.split()[2]: line.split() for line in out.splitlines() if line.startswith("   32 ")}
    assert set(rows) == {"none", "eager", "torch", "triton"}, out
    assert rows["none"][4] == "1.00" and rows["none"][6] == "1.00"  # ratios against the baseline
    assert float(rows["torch"][4]) > 0 and float(rows["eager"][5]) > 0
    assert "live/BCT" in out and float(rows["torch"][9]) < float(rows["eager"][9])  # no (B, H, T, T) weights
    if not torch.cuda.is_available():
        assert "n/a (no CUDA)" in " ".join(rows["triton"])
