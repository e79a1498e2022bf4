#!/usr/bin/env bash
# Install libra into ./.venv: the CPU build of torch first (a bare `torch` requirement would
# pull a multi-GB CUDA build), then the project with its test extras. Safe to rerun.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet "torch==2.13.0"
# llama-cpp-python compiles llama.cpp from source the first time (several minutes on 2 cores).
.venv/bin/python -m pip install --quiet -e ".[dev]"
.venv/bin/python -c "import libra, torch, trl, llama_cpp; print(f'libra installed in .venv (torch {torch.__version__}, trl {trl.__version__})')"
