"""A LightGBM model compiled to machine code (lleaves, LLVM) for serving.

Why: LightGBM's own predictor spent ~1.25 ms on one search's 300 candidates with the cold-start
model (94 trees of 15 leaves); the same trees compiled to native code with lleaves score them in
~0.25 ms, conversion to float64 included (bench_ranker, same run: 4.9x), with identical results
(the trees' branches and missing-value routing are compiled as LightGBM wrote them).

Compiling takes about a second per model, so it happens once when a model is loaded, and a model
whose compiled scores differ from LightGBM's on a probe (a bug in either, or a model feature
lleaves does not support) is served by LightGBM instead: a speed-up must never change a ranking.
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Callable
from typing import Protocol

import numpy as np

log = logging.getLogger(__name__)

# Largest |compiled - LightGBM| accepted on the probe rows (both compute in float64).
PROBE_TOLERANCE = 1e-9
PROBE_ROWS = 256


class _Compiled(Protocol):
    def predict(self, data: np.ndarray, n_jobs: int | None = None) -> np.ndarray: ...


class CompiledForest:
    """Scores feature rows with a compiled copy of a LightGBM model (thread safe: the compiled
    function is pure, and lleaves releases the GIL while it runs)."""

    def __init__(self, model: _Compiled, n_features: int) -> None:
        self._model = model
        self.n_features = n_features

    def predict(self, X: np.ndarray) -> np.ndarray:
        # One thread: a search's 300 rows take ~50 us, less than a thread pool's hand-off.
        return np.asarray(self._model.predict(np.ascontiguousarray(X, dtype=np.float64), n_jobs=1))


def compile_forest(model_txt: str, n_features: int, reference: Callable[[np.ndarray], np.ndarray],
                   seed: int = 0) -> CompiledForest | None:
    """The compiled forest of `model_txt`, or None (logged) when lleaves is missing, fails, or
    disagrees with `reference` (a callable X -> scores: the LightGBM booster's predict) on probe
    rows that mix normal values, zeros and NaNs."""
    try:
        import lleaves
    except ImportError:
        log.info("lleaves is not installed: the ranker scores with LightGBM's predictor")
        return None
    fd, path = tempfile.mkstemp(suffix=".txt", prefix="ltrr-ranker-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(model_txt)
        model = lleaves.Model(model_file=path)
        model.compile()
        forest = CompiledForest(model, n_features)
    except Exception as exc:  # any failure here only costs speed
        log.warning("could not compile the ranker with lleaves (%r): scoring with LightGBM", exc)
        return None
    finally:
        os.unlink(path)
    rng = np.random.default_rng(seed)
    # Small-scale rows cross the thresholds of scores and shares, large-scale ones those of
    # ranks and years.
    probe = rng.normal(size=(PROBE_ROWS, n_features)) * np.where(rng.random((PROBE_ROWS, 1)) < 0.5, 3.0, 2000.0)
    probe[rng.random(probe.shape) < 0.2] = 0.0
    probe[rng.random(probe.shape) < 0.3] = np.nan
    try:
        diff = float(np.max(np.abs(forest.predict(probe) - np.asarray(reference(probe), dtype=np.float64))))
    except Exception as exc:  # the same: fall back, never fail the load
        log.warning("the compiled ranker failed its probe (%r): scoring with LightGBM", exc)
        return None
    if not diff <= PROBE_TOLERANCE:
        log.warning("the compiled ranker differs from LightGBM by %.3g on its probe: scoring with LightGBM", diff)
        return None
    return forest
