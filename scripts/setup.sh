#!/usr/bin/env bash
# Creates .venv/ in the repo root and installs the pinned set. Safe to re-run: a stamp keyed by
# the lock file's hash makes a second run a no-op.
#
# Order matters (see BRIEF): torch 2.13.0 CPU first, so nothing pulls a CUDA build; numpy<2 and
# scipy<1.14 because libpecos crashes on newer ones; libpecos with --no-deps because its declared
# XR-Transformer dependencies (datasets, peft -> numpy-2 pyarrow) break sentence-transformers.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
"$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11), f"ltrr needs Python 3.11, found {sys.version}"'

stamp=.venv/.ltrr-installed
want=$(cat requirements.lock pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "setup: .venv is up to date"
  exit 0
fi

[ -x .venv/bin/python ] || "$PY" -m venv .venv
export PIP_DISABLE_PIP_VERSION_CHECK=1
pip() { .venv/bin/python -m pip "$@"; }
echo "setup: installing torch 2.13.0 (CPU) first"
pip install -q --upgrade pip wheel setuptools 2>&1 | grep -v "is ignored" || true
pip install -q torch==2.13.0 numpy==1.26.4 scipy==1.13.1 2>&1 | grep -v "is ignored" || true
echo "setup: installing the pinned dependencies (requirements.lock)"
pip install -q -r requirements.lock 2>&1 | grep -v "is ignored" || true
pip install -q --no-deps libpecos==1.2.8 2>&1 | grep -v "is ignored" || true
pip install -q --no-deps --no-build-isolation -e . 2>&1 | grep -v "is ignored" || true
# Fail loudly here rather than at first import in the service.
.venv/bin/python - <<'PY'
import numpy, scipy, torch
assert numpy.__version__.startswith("1."), numpy.__version__
assert torch.__version__.startswith("2.13.0"), torch.__version__
import faiss, tantivy, lightgbm, vowpal_wabbit_next, sentence_transformers  # noqa: F401
from pecos.xmc.xlinear.model import XLinearModel  # noqa: F401
import services, retrievers, bandit, ranker, replay, logged  # noqa: F401
print(f"setup: ok (numpy {numpy.__version__}, scipy {scipy.__version__}, torch {torch.__version__})")
PY
echo "$want" > "$stamp"
