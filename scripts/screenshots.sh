#!/usr/bin/env bash
# Regenerates the committed screenshots of the web page (docs/img/*.png): runs the browser test
# (tests/test_ui.py: a real server, real models, headless Chromium) with LTRR_UPDATE_SCREENSHOTS=1.
# Needs /usr/bin/chromium (scripts/test.sh installs it when run as root).
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 LTRR_UPDATE_SCREENSHOTS=1
stamp=$(mktemp)
trap 'rm -f "$stamp"' EXIT
.venv/bin/python -m pytest tests/test_ui.py -q -p no:cacheprovider "$@"
for name in search learning feedback-queued; do
  if [ ! docs/img/$name.png -nt "$stamp" ]; then
    echo "docs/img/$name.png was not regenerated (was the browser test skipped?)" >&2
    exit 1
  fi
done
echo "regenerated: $(ls docs/img/*.png | tr '\n' ' ')"
