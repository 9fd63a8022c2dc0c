#!/usr/bin/env bash
# Fresh virtualenv + install + the demo: AttentionGRPOTrainer on the tiny VLM and synthetic grounding data (CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q torch==2.13.0   # local CPU build; an unpinned torch pulls CUDA wheels
"$VENV/bin/python" -m pip install -q -e .
exec "$VENV/bin/trl-attention" demo "$@"
