#!/usr/bin/env bash
# First README command: set up, build indexes on the shipped catalog, train the cold-start
# models, and serve the API on the embedded default (own Redis, tantivy + faiss on disk).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec .venv/bin/ltrr up "$@"
