#!/usr/bin/env bash
# Set up .venv if needed, then lint and run the whole test suite (CPU only, offline).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
.venv/bin/ruff check --quiet .   # lint: undefined names, unused imports, import order (pyproject [tool.ruff])
# types (pyproject [tool.mypy]); the second run is the conftest.py that shares its module name with tests/conftest.py
.venv/bin/mypy --no-error-summary
.venv/bin/mypy --no-error-summary tests/bad_inputs/conftest.py
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
