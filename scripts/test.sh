#!/usr/bin/env bash
# Fresh virtualenv + install + the whole test suite (CPU). CI runs exactly this via .ci/run.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/_venv.sh "[dev]"
exec "${VENV:-.venv}/bin/python" -m pytest -q "$@"
