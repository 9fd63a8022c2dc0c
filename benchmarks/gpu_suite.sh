#!/usr/bin/env bash
# Every capture-layer check that needs CUDA, in one go (< 10 minutes on one GPU), printed as one table:
# Triton vs torch parity (fp32, bf16; values, dQ, dK, d sinks), the 7B last-layer micro-benchmark against SDPA,
# the capture training-step ratio (benchmarks/capture.py --preset 7b), a RAL step with flash_attention_2 and RAL
# with vLLM colocate generation (each skipped with a line saying so when flash_attn / vllm is not installed).
# Details: benchmarks/gpu_checks.py.
#
#   bash benchmarks/gpu_suite.sh               # on a GPU machine
#   bash benchmarks/gpu_suite.sh --cpu-smoke   # toy sizes on CPU: keeps the suite runnable (tests run this)
#   bash benchmarks/gpu_suite.sh --only parity micro
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-4}" TOKENIZERS_PARALLELISM=false
exec timeout "${SUITE_TIMEOUT:-590}" "$PYTHON" benchmarks/gpu_checks.py "$@"
