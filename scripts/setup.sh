#!/usr/bin/env bash
# Create .venv (once) and install adapt with its test extras, CPU PyTorch first.
# GPU users: install the CUDA build of torch yourself first (see README), then run this.
# pip's and setuptools' output goes to .venv/setup.log; it is shown only if a step fails.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv"
  python3 -m venv .venv
fi
log=.venv/setup.log
step() {  # step DESCRIPTION COMMAND...: run quietly, show the log's end on failure
  local what=$1; shift
  echo "setup: $what"
  if ! "$@" >>"$log" 2>&1; then
    echo "setup: failed: $what; the end of $log:" >&2
    tail -n 30 "$log" >&2
    exit 1
  fi
}
stamp=.venv/.adapt-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || [ constraints.txt -nt "$stamp" ] || [ examples/loha/pyproject.toml -nt "$stamp" ]; then
  : >"$log"
  step "upgrading pip" .venv/bin/python -m pip install --upgrade pip
  .venv/bin/python -c "import torch" 2>/dev/null || step "installing PyTorch (CPU)" .venv/bin/python -m pip install torch==2.13.0
  step "installing adapt and its test dependencies" .venv/bin/python -m pip install -c constraints.txt -e ".[test]"
  # The LoHa example plugin: a separate distribution the tests install like a user would.
  step "installing the LoHa example plugin" .venv/bin/python -m pip install --no-deps --no-build-isolation -e examples/loha
  touch "$stamp"
  echo "setup: done (details in $log)"
fi
