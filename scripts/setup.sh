#!/usr/bin/env bash
# Create .venv (once) and install adapt with its test extras, CPU PyTorch first.
# GPU users: install the CUDA build of torch yourself first (see README), then run this.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
stamp=.venv/.adapt-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ] || [ examples/loha/pyproject.toml -nt "$stamp" ]; then
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -c "import torch" 2>/dev/null || .venv/bin/python -m pip install -q torch==2.13.0
  .venv/bin/python -m pip install -q -c constraints.txt -e ".[test]"
  # The LoHa example plugin: a separate distribution the tests install like a user would.
  .venv/bin/python -m pip install -q --no-deps --no-build-isolation -e examples/loha
  touch "$stamp"
fi
