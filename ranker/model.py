"""LightGBM LambdaMART ranker: training, and an artifact of two files that `load` verifies.

`LTRModel.write(dir)` puts `model.txt` and `meta.json` into a directory; the service's artifact
store (services.artifacts) makes that directory a version atomically and checksums it. `meta.json`
records the feature names, the registry hash and the SHA-256 of model.txt; `load` checks all
three and raises `ModelLoadError`, so serving keeps its previous model instead of serving garbage.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import lightgbm as lgb
import numpy as np

from ranker.compiled import CompiledForest, compile_forest
from ranker.features import DEFAULT_REGISTRY, FeatureRegistry

# Small-data defaults: click logs give a few thousand queries; small trees, a minimum leaf size
# and feature/bagging subsampling keep LambdaMART from memorizing individual queries. The tree
# budget (15 leaves x <= 150 rounds) is also the serving budget: prediction cost grows with
# trees x rows, and 300 candidates must score in well under a millisecond.
DEFAULT_PARAMS: dict[str, object] = {
    "objective": "lambdarank",
    "metric": "ndcg",
    "eval_at": [10],
    "learning_rate": 0.1,
    "num_leaves": 15,
    "min_data_in_leaf": 20,
    "min_sum_hessian_in_leaf": 1e-3,
    "feature_fraction": 0.9,
    "bagging_fraction": 0.9,
    "bagging_freq": 1,
    "lambda_l2": 1.0,
    "lambdarank_truncation_level": 20,
    "max_bin": 255,
    "verbose": -1,
    "seed": 7,
    "deterministic": True,
}


class ModelLoadError(RuntimeError):
    """The artifact is missing, corrupt, or built for other features; keep serving the previous model."""


@dataclass(frozen=True, slots=True)
class RankData:
    """Rows grouped by query: `group[i]` rows of X belong to query i, in order."""

    X: np.ndarray
    y: np.ndarray
    group: np.ndarray
    weights: np.ndarray | None = None


@dataclass
class LTRModel:
    booster: lgb.Booster
    feature_names: list[str]
    registry_version: str
    meta: dict[str, object] = field(default_factory=dict)
    num_threads: int = 1  # prediction threads: 1 avoids OpenMP start-up cost on 300-row batches
    # The same trees as machine code (ranker.compiled), set by load(compiled=True): what serving
    # scores with; None scores with the booster.
    compiled: CompiledForest | None = None

    def predict(self, X: np.ndarray) -> np.ndarray:
        if X.ndim != 2 or X.shape[1] != len(self.feature_names):
            raise ValueError(f"expected (n, {len(self.feature_names)}) features, got {X.shape}")
        if X.shape[0] == 0:
            return np.zeros(0, dtype=np.float64)
        if self.compiled is not None:
            return self.compiled.predict(X)
        return self.booster.predict(X, num_threads=self.num_threads)

    @property
    def version(self) -> str | None:
        v = self.meta.get("version")
        return str(v) if v is not None else None

    def write(self, directory: Path | str) -> Path:
        """Writes model.txt and meta.json into `directory` (which must exist) and returns it.
        Versioning, atomic publication and promotion are the caller's artifact store's job; meta
        records the feature names, the registry hash and model.txt's SHA-256, which `load` checks."""
        directory = Path(directory)
        model_txt = self.booster.model_to_string()
        meta = {**self.meta, "feature_names": self.feature_names, "registry_version": self.registry_version,
                "lightgbm": lgb.__version__, "model_sha256": hashlib.sha256(model_txt.encode()).hexdigest(),
                "created": self.meta.get("created", time.time())}
        meta.pop("version", None)  # the store names versions; a copied meta must not claim one
        _write_synced(directory / "model.txt", model_txt)
        _write_synced(directory / "meta.json", json.dumps(meta, indent=2, default=float))
        return directory


def _write_synced(path: Path, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())


def load(path: Path | str, registry: FeatureRegistry = DEFAULT_REGISTRY, *, num_threads: int = 1,
         version: str | None = None, compiled: bool = False) -> LTRModel:
    """Loads a directory written by `LTRModel.write`, refusing it (ModelLoadError) unless it is
    intact and was trained on exactly `registry`'s features in the same order. `version` (the
    artifact store's name for it) becomes `model.version`. `compiled` also compiles the trees to
    machine code for serving (ranker.compiled: ~1 s once, then ~5x faster scoring, bench_ranker); a model that
    cannot be compiled faithfully is still loaded and scores with LightGBM."""
    path = Path(path)
    try:
        meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
        model_txt = (path / "model.txt").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelLoadError(f"{path}: cannot read artifact: {e}") from e
    if not isinstance(meta, dict):
        raise ModelLoadError(f"{path}: meta.json is not an object")
    if hashlib.sha256(model_txt.encode()).hexdigest() != meta.get("model_sha256"):
        raise ModelLoadError(f"{path}: model.txt does not match its recorded SHA-256 (corrupt or truncated)")
    names = meta.get("feature_names")
    if names != registry.names:
        raise ModelLoadError(f"{path}: trained on features {_diff(names, registry.names)}; "
                             f"this server's registry is {registry.version}")
    if meta.get("registry_version") != registry.version:
        raise ModelLoadError(f"{path}: registry hash {meta.get('registry_version')} != {registry.version}")
    try:
        booster = lgb.Booster(model_str=model_txt)
    except lgb.basic.LightGBMError as e:
        raise ModelLoadError(f"{path}: LightGBM refused model.txt: {e}") from e
    if booster.feature_name() != registry.names:
        raise ModelLoadError(f"{path}: model.txt feature names differ from meta.json")
    if version is not None:
        meta["version"] = version
    model = LTRModel(booster, list(names), registry.version, meta, num_threads=num_threads)
    if compiled:
        model.compiled = compile_forest(model_txt, len(names), lambda X: booster.predict(X, num_threads=1))
    return model


def _diff(got: object, want: Sequence[str]) -> str:
    if not isinstance(got, list):
        return repr(got)
    missing, extra = [n for n in want if n not in got], [n for n in got if n not in want]
    if not missing and not extra:
        return "(same names, different order)"
    return f"(missing {missing[:5]}, unexpected {extra[:5]})"


def train(X: np.ndarray, y: np.ndarray, group: Sequence[int] | np.ndarray, weights: np.ndarray | None = None,
          valid: RankData | None = None, *, registry: FeatureRegistry = DEFAULT_REGISTRY,
          params: Mapping[str, object] | None = None, num_boost_round: int = 150,
          early_stopping_rounds: int = 20, num_threads: int = 1) -> LTRModel:
    """Trains LambdaMART. `y` holds integer graded relevance (0..30 with LightGBM's default gains);
    `weights` are per-row: LightGBM's lambdarank multiplies each row's gradient and hessian by its
    weight (and averages them per query for the ndcg metric). Early stopping uses `valid` if given.
    `num_threads` defaults to 1 because retraining shares the machine with serving, and OpenMP
    spin-waiting on oversubscribed cores can make multi-threaded training far slower; 0 = all cores."""
    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(y)
    group = np.asarray(group, dtype=np.int64)
    if X.ndim != 2 or X.shape[1] != registry.dim:
        raise ValueError(f"X must be (n, {registry.dim}) in registry order, got {X.shape}")
    if group.sum() != X.shape[0] or y.shape[0] != X.shape[0]:
        raise ValueError("group sizes must sum to the number of rows, and y must have one label per row")
    if np.any(y < 0) or np.any(y != np.round(y)):
        raise ValueError("lambdarank labels must be non-negative integers")
    p = {**DEFAULT_PARAMS, **(params or {}), "num_threads": num_threads}
    dtrain = lgb.Dataset(X, label=y, group=group, weight=weights, feature_name=registry.names,
                         free_raw_data=True, params={"max_bin": p["max_bin"], "verbose": -1})
    valid_sets, names, callbacks = [], [], []
    evals: dict[str, dict[str, list[float]]] = {}
    if valid is not None:
        dvalid = lgb.Dataset(np.asarray(valid.X, dtype=np.float32), label=valid.y, group=valid.group,
                             weight=valid.weights, reference=dtrain, feature_name=registry.names)
        valid_sets, names = [dvalid], ["valid"]
        callbacks = [lgb.early_stopping(early_stopping_rounds, verbose=False), lgb.record_evaluation(evals)]
    t0 = time.perf_counter()
    booster = lgb.train(p, dtrain, num_boost_round=num_boost_round, valid_sets=valid_sets, valid_names=names,
                        callbacks=callbacks)
    metrics: dict[str, float] = {"train_seconds": time.perf_counter() - t0, "num_trees": booster.num_trees()}
    if valid is not None and evals:
        best = booster.best_iteration or booster.num_trees()
        metrics["valid_ndcg@10"] = float(evals["valid"]["ndcg@10"][best - 1])
        metrics["best_iteration"] = best
    meta = {"created": time.time(), "n_queries": int(group.size), "n_rows": int(X.shape[0]),
            "params": {k: v for k, v in p.items() if k != "num_threads"}, "metrics": metrics,
            "weighted": weights is not None}
    return LTRModel(booster, list(registry.names), registry.version, meta)
