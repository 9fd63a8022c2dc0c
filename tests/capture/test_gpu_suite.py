"""benchmarks/gpu_suite.sh --cpu-smoke runs every check of the GPU suite at toy sizes on CPU: keeps it runnable."""

import os
import subprocess

from tests.testing_utils import ROOT


def test_gpu_suite_cpu_smoke_prints_its_table():
    env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_suite.sh"), "--cpu-smoke"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )
    out = proc.stdout
    assert proc.returncode == 0, out[-3000:] + proc.stderr[-3000:]
    table = out[out.index("check   case") :]
    for check in ("parity", "micro", "step", "ral"):
        assert any(line.startswith(check) for line in table.splitlines()), table
    assert "parity  float32 all_three" in table and "rel dSink" in table
    assert "parity  bfloat16" in table and "0 FAIL" in table
