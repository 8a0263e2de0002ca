#!/usr/bin/env bash
# Set up .venv if needed, then run the quickstart on the bundled tiny model (no downloads).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1
exec .venv/bin/adapt quickstart "$@"
