#!/usr/bin/env bash
# Fresh virtualenv + install + the whole test suite (CPU). CI runs exactly this via .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q torch==2.13.0   # local CPU build; an unpinned torch pulls CUDA wheels
"$VENV/bin/python" -m pip install -q -e ".[dev]"
exec "$VENV/bin/python" -m pytest -q "$@"
