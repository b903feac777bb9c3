#!/usr/bin/env bash
# Second README command: set up, lint, and run the whole test suite (real Redis, real indexes,
# real models trained inside the tests).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
# A real browser for tests/test_ui.py: Debian's headless Chromium. CI runs as root on a fresh
# machine, so install it there; elsewhere say why the browser tests will be skipped.
if [ ! -x /usr/bin/chromium ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing chromium and chromium-driver for the browser tests (apt-get)..."
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; } \
      || echo "WARNING: apt-get could not install chromium: tests/test_ui.py will be skipped" >&2
  else
    echo "NOTE: /usr/bin/chromium is missing and this is not root: tests/test_ui.py will be skipped" \
         "(install it with: sudo apt-get install chromium chromium-driver)" >&2
  fi
fi
.venv/bin/ruff check .
exec .venv/bin/python -m pytest "$@"
