#!/usr/bin/env bash
# One command for every benchmark: results -> bench/results/*.json, table -> BENCHMARKS.md.
#   bash bench/run.sh [--quick] [--only lexical,dense,...]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# wrk drives the HTTP load tests; install it from Debian when missing (the HTTP parts are
# skipped, and say so in the results, if it cannot be installed).
if ! command -v wrk >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  (apt-get install -y -qq wrk >/dev/null 2>&1 || (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq wrk >/dev/null 2>&1)) \
    || echo "bench: could not install wrk; HTTP load tests will be skipped"
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
exec .venv/bin/python -m bench.run_all "$@"
