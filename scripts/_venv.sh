#!/usr/bin/env bash
# Create the virtualenv $VENV (default .venv) and install the package with the extras given as $1 (e.g. "[dev]").
# torch is pinned to the local CPU build here only: an unpinned torch pulls several GB of CUDA wheels.
set -euo pipefail
VENV="${VENV:-.venv}"
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --upgrade pip
"$VENV/bin/python" -m pip install -q torch==2.13.0
"$VENV/bin/python" -m pip install -q -e ".${1:-}"
