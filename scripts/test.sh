#!/usr/bin/env bash
# Set up .venv if needed, then lint and run the whole test suite (CPU only, offline).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
.venv/bin/ruff check --quiet .   # lint: undefined names, unused imports, import order (pyproject [tool.ruff])
exec .venv/bin/python -m pytest -q -p no:cacheprovider "$@"
