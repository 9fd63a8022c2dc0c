#!/usr/bin/env bash
# Fresh virtualenv + install + the demo: AttentionGRPOTrainer on the tiny VLM and synthetic grounding data (CPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/_venv.sh
exec "${VENV:-.venv}/bin/trl-attention" demo "$@"
