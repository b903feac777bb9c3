#!/usr/bin/env bash
# Second README command: set up, lint, and run the whole test suite (real Redis, real indexes,
# real models trained inside the tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
