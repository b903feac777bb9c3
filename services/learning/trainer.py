"""Automatic retraining of the ranker and XR-Linear from the joined feedback log, in the learner's
background, never on the search path. Every new model goes through the gate (services.learning.gate)
and is promoted, or kept and refused, with its numbers in models/decisions.jsonl.

When: the ranker after every `retrain_ranker_every` newly labelled searches (a search with at
least one event in its reward wait), XR-Linear after every `retrain_xr_every` new positive
(query, track) pairs. Held out: the most recent 20 % of the labelled searches, which neither
candidate has seen.

* Ranker = LambdaMART on the cold start's self-supervised groups (the general behaviour the
  queries without traffic rely on) plus the click groups: logged feature rows of the served
  list (cascade labels, position-debiased with `position_eta`) and of the sampled unserved
  candidates (label 0).
* XR-Linear = the cold start's pseudo-query pairs plus every positive (query, track) pair.

Exactly one process trains at a time (a Redis lease, like the bandit learner's).
"""

from __future__ import annotations

import contextlib
import json
import logging
import multiprocessing
import os
import signal
import socket
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np
import redis

from logged.rewards import RewardConfig, event_weight
from ranker import labels as ranker_labels
from ranker import model as ranker_model
from ranker.features import FeatureRegistry
from retrievers.base import Document
from services import metrics
from services.artifacts import ArtifactStore
from services.config import Settings
from services.keys import Keys
from services.learning.gate import GateResult, RankerGate, XRGate

log = logging.getLogger("ltrr.trainer")

HOLDOUT_SHARE = 0.2
MAX_RECORDS = 50_000  # labelled searches kept in memory for retraining
COLDSTART_DATA = "ranker-data/coldstart.npz"


class JoinedLogTail:
    """Reads the joined log (logs/joined-*.jsonl) incrementally, across files and restarts of
    the writer; a torn last line is read again on the next call."""

    def __init__(self, directory: Path):
        self.dir = Path(directory)
        self.offsets: dict[Path, int] = {}

    def read(self) -> list[dict[str, object]]:
        out: list[dict[str, object]] = []
        for f in sorted(self.dir.glob("joined-*.jsonl")):
            start = self.offsets.get(f, 0)
            try:
                with open(f, "rb") as fh:
                    fh.seek(start)
                    data = fh.read()
            except OSError:
                continue
            end = data.rfind(b"\n") + 1
            for line in data[:end].splitlines():
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    log.warning("skipping an unreadable line in %s", f)
            self.offsets[f] = start + end
        return out


def save_coldstart_data(models_dir: Path, train: ranker_model.RankData, valid: ranker_model.RankData,
                        valid_ndcg10: float, max_groups: int = 1500) -> Path:
    """Keeps (a sample of) the cold start's training groups, its held-out groups and the cold-start
    model's nDCG@10 on them beside the models, so retraining keeps the general behaviour and the
    gate can hold every later model to it."""
    path = Path(models_dir) / COLDSTART_DATA
    path.parent.mkdir(parents=True, exist_ok=True)
    tx, ty, tg = _head_groups(train, max_groups)
    tmp = path.with_suffix(".tmp.npz")
    np.savez_compressed(tmp, train_X=tx, train_y=ty, train_group=tg, valid_X=valid.X, valid_y=valid.y,
                        valid_group=valid.group, valid_ndcg10=np.array(valid_ndcg10))
    os.replace(tmp, path)
    return path


def load_coldstart_data(models_dir: Path
                        ) -> tuple[ranker_model.RankData, ranker_model.RankData, float | None] | None:
    """(training groups, held-out groups, the cold-start model's nDCG@10 on them)."""
    path = Path(models_dir) / COLDSTART_DATA
    if not path.exists():
        return None
    try:
        z = np.load(path)
        baseline = float(z["valid_ndcg10"]) if "valid_ndcg10" in z.files else None
        return (ranker_model.RankData(z["train_X"], z["train_y"], z["train_group"]),
                ranker_model.RankData(z["valid_X"], z["valid_y"], z["valid_group"]), baseline)
    except (OSError, KeyError, ValueError) as exc:
        log.error("cold-start training data %s unreadable (%s); retraining from clicks only", path, exc)
        return None


def _head_groups(d: ranker_model.RankData, n: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    g = np.asarray(d.group)[:n]
    rows = int(g.sum())
    return np.asarray(d.X)[:rows], np.asarray(d.y)[:rows], g


def _concat(parts: Sequence[ranker_model.RankData]) -> ranker_model.RankData:
    parts = [p for p in parts if p.group.size]
    if not parts:
        raise ValueError("no training groups")
    weights = None
    if any(p.weights is not None for p in parts):
        weights = np.concatenate([p.weights if p.weights is not None else np.ones(len(p.y), dtype=np.float32)
                                  for p in parts])
    return ranker_model.RankData(np.vstack([p.X for p in parts]), np.concatenate([p.y for p in parts]),
                                 np.concatenate([p.group for p in parts]), weights)


def split_recent(records: Sequence[Mapping[str, object]], share: float = HOLDOUT_SHARE
                 ) -> tuple[list[Mapping[str, object]], list[Mapping[str, object]]]:
    """(older, most recent `share`) by search time."""
    ordered = sorted(records, key=lambda r: float(r.get("ts") or 0.0))  # type: ignore[arg-type]
    cut = round(len(ordered) * (1 - share))
    return ordered[:cut], ordered[cut:]


def click_pairs(records: Sequence[Mapping[str, object]], known: set[str], cfg: RewardConfig
                ) -> list[tuple[str, str, float]]:
    """(query, track, 1.0) for every positive event of the records, on tracks of the catalog."""
    out = []
    for rec in records:
        for e in rec.get("events") or []:  # type: ignore[union-attr]
            if event_weight(e["type"], cfg) > 0 and e["track_id"] in known:
                out.append((str(rec["query_norm"]), str(e["track_id"]), 1.0))
    return out


class TrainerProcess:
    """Runs the ModelTrainer in its own process at a lower CPU priority: PECOS and LightGBM
    training would otherwise hold the serving process's GIL and cores for tens of seconds, and
    searches meanwhile lose their retrievers to the timeout."""

    def __init__(self, settings: Settings, redis_url: str):
        ctx = multiprocessing.get_context("spawn")  # no fork of a process with threads and sockets
        self.proc = ctx.Process(target=run_trainer_process, args=(settings.model_dump_json(), redis_url),
                                name="ltrr-trainer", daemon=True)

    def start(self) -> TrainerProcess:
        self.proc.start()
        return self

    def alive(self) -> bool:
        return self.proc.is_alive()

    def stop(self) -> None:
        if self.proc.is_alive():
            self.proc.terminate()  # SIGTERM: the loop finishes its current step's bookkeeping
            self.proc.join(30)
            if self.proc.is_alive():
                self.proc.kill()
                self.proc.join(5)


def run_trainer_process(settings_json: str, redis_url: str) -> None:
    """Entry point of the trainer process."""
    from services.catalog import Catalog
    from services.logging_setup import setup_logging

    with contextlib.suppress(OSError):
        os.nice(10)
    settings = Settings.model_validate_json(settings_json)
    setup_logging(settings.log_level, json_logs=settings.log_json)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    client = redis.Redis.from_url(redis_url, socket_timeout=5.0, socket_connect_timeout=2.0)
    trainer = ModelTrainer(settings, client, Keys(), Catalog.load(settings.catalog).documents())
    parent = os.getppid()
    while not stop.wait(settings.retrain_check_s):
        if os.getppid() != parent:  # the serving process died (even by SIGKILL): do not outlive it
            break
        try:
            trainer.run_once()
        except (redis.RedisError, OSError) as exc:
            log.warning("trainer: %s; retrying", exc)
        except Exception:
            log.exception("trainer loop error")
    trainer.stop()


class ModelTrainer:
    """The retraining loop's steps; `run_once()` does one check (the trainer process calls it, and
    so do tests and benchmarks directly)."""

    LEASE_S = 60

    def __init__(self, settings: Settings, client: redis.Redis | None, keys: Keys, docs: Sequence[Document]):
        self.settings = settings
        self.redis = client
        self.keys = keys
        self.docs = docs
        self.known = {d.doc_id for d in docs}
        self.registry = FeatureRegistry(settings.retrievers)
        self.ranker_store = ArtifactStore(settings.models_dir / "ranker", "ranker")
        self.xr_store = ArtifactStore(settings.models_dir / "xr", "xr")
        self.tail = JoinedLogTail(settings.logs_dir)
        self.records: deque[Mapping[str, object]] = deque(maxlen=MAX_RECORDS)
        self.seen: set[str] = set()
        self.new_labelled = 0
        self.new_pairs = 0
        self.owner = f"{socket.gethostname()}-{os.getpid()}-{id(self)}"
        self.lease_key = f"{keys.prefix}:trainer:lease"
        self.general_baseline: float | None = None

    # --- lease ----------------------------------------------------------------------------
    def stop(self) -> None:
        """Gives the lease back (the trainer process calls this on SIGTERM)."""
        try:
            if self.redis is not None and self.redis.get(self.lease_key) == self.owner.encode():
                self.redis.delete(self.lease_key)
        except (redis.RedisError, OSError):
            pass

    def _lease(self) -> bool:
        if self.redis is None:
            return True
        ok = self.redis.set(self.lease_key, self.owner, nx=True, ex=self.LEASE_S)
        if not ok and self.redis.get(self.lease_key) == self.owner.encode():
            self.redis.expire(self.lease_key, self.LEASE_S)
            ok = True
        return bool(ok)

    def ingest(self) -> int:
        """Takes new joined records (deduplicated by search id: the learner may append one twice
        after a crash); only labelled ones are kept."""
        return sum(self._add(rec) for rec in self.tail.read())

    def _add(self, rec: Mapping[str, object]) -> int:
        sid = str(rec.get("search_id"))
        events = rec.get("events")
        if sid in self.seen or not events or not isinstance(events, list):
            return 0
        self.seen.add(sid)
        self.records.append(rec)
        self.new_labelled += 1
        self.new_pairs += sum(1 for e in events if event_weight(e["type"], self.settings.reward) > 0)
        return 1

    def run_once(self, *, force: bool = False) -> dict[str, GateResult]:
        if not self._lease():
            return {}
        self.ingest()
        out: dict[str, GateResult] = {}
        every = self.settings.retrain_ranker_every
        if (every and self.new_labelled >= every) or (force and self.records):
            out["ranker"] = self.retrain_ranker()
            self.new_labelled = 0
        every = self.settings.retrain_xr_every
        if (every and self.new_pairs >= every) or (force and self.records):
            out["xr"] = self.retrain_xr()
            self.new_pairs = 0
        return out

    # --- ranker ---------------------------------------------------------------------------
    def ranker_data(self, *, eta: float | None) -> tuple[ranker_model.RankData, ranker_model.RankData,
                                                         ranker_model.RankData | None]:
        """(training set, recent held-out clicks, cold-start held-out groups); the cold start's own
        figure on the latter is left in self.general_baseline."""
        older, recent = split_recent(list(self.records))
        clicks, _ = ranker_labels.build_training_set(older, self.registry.names, eta=eta)
        held, _ = ranker_labels.build_training_set(recent, self.registry.names, eta=None)
        cold = load_coldstart_data(self.settings.models_dir)
        parts = [clicks]
        general = None
        if cold is not None:
            parts.insert(0, cold[0])
            general, self.general_baseline = cold[1], cold[2]
        return _concat(parts), held, general

    def retrain_ranker(self) -> GateResult:
        t = time.perf_counter()
        train, _, _ = self.ranker_data(eta=self.settings.position_eta)
        model = ranker_model.train(train.X, train.y, train.group, train.weights, registry=self.registry,
                                   num_boost_round=120)
        model.meta.update({"source": "cold start + click log", "click_searches": len(self.records)})
        _, result = self.gate_ranker(model, train_seconds=round(time.perf_counter() - t, 2))
        return result

    def gate_ranker(self, model: ranker_model.LTRModel, *, force: bool = False,
                    **report: object) -> tuple[str, GateResult]:
        """Publishes `model` and promotes it if the gate passes (or `force`); the one way a ranker
        reaches serving after the cold start (automatic retraining and `ltrr train ranker`)."""
        _, held, general = self.ranker_data(eta=None)
        result = RankerGate(self.settings.gate_tolerance).evaluate(model, self._serving_ranker(), held, general,
                                                            self.general_baseline)
        result.report.update(report)
        if force and not result.promote:
            result = GateResult(True, {**result.report, "forced": True})
        return self._publish(self.ranker_store, "ranker", model.write, model.meta, result), result

    def _serving_ranker(self) -> ranker_model.LTRModel | None:
        for version in self.ranker_store.fallbacks():
            try:
                self.ranker_store.verify(version)
                return ranker_model.load(self.ranker_store.path(version), self.registry)
            except Exception as exc:
                log.warning("serving ranker %s unusable for the gate: %s", version, exc)
        return None

    # --- XR-Linear ------------------------------------------------------------------------
    def retrain_xr(self) -> GateResult:
        from retrievers.xr_linear import XRConfig, XRLinearRetriever

        t = time.perf_counter()
        older, recent = split_recent(list(self.records))
        train_pairs = click_pairs(older, self.known, self.settings.reward)
        holdout = sorted({(q, tid) for q, tid, _ in click_pairs(recent, self.known, self.settings.reward)})
        xr = XRLinearRetriever(XRConfig())
        xr.train(train_pairs, self.docs)
        serving = None
        for version in self.xr_store.fallbacks():
            try:
                self.xr_store.verify(version)  # before PECOS reads a byte: a corrupt file aborts in C++
                serving = XRLinearRetriever.load(self.xr_store.path(version))
                break
            except Exception as exc:
                log.warning("serving XR %s unusable for the gate: %s", version, exc)

        def ranked(model: XRLinearRetriever) -> Callable[[list[str]], list[list[str]]]:
            return lambda qs: [[c.track_id for c in cands] for cands in model.retrieve_batch(qs, 100)]

        gate = XRGate(self.settings.gate_tolerance)
        result = gate.evaluate(ranked(xr), ranked(serving) if serving else None, holdout)
        result.report["train_seconds"] = round(time.perf_counter() - t, 2)
        result.report["train_pairs"] = len(train_pairs)
        self._publish(self.xr_store, "xr", xr.write, {"source": "cold start + click pairs",
                                                      "click_pairs": len(train_pairs)}, result)
        return result

    def load_log(self, path: Path) -> int:
        """Adds the labelled searches of a joined log file or directory (`ltrr train ranker --log`)."""
        files = sorted(Path(path).glob("joined-*.jsonl")) if Path(path).is_dir() else [Path(path)]
        n = 0
        for f in files:
            for i, line in enumerate(f.read_text(encoding="utf-8").splitlines(), start=1):
                if line.strip():
                    try:
                        n += self._add(json.loads(line))
                    except json.JSONDecodeError:
                        raise ValueError(f"{f}:{i}: not a joined log record") from None
        return n

    # --- publishing -----------------------------------------------------------------------
    @staticmethod
    def _publish(store: ArtifactStore, kind: str, write: Callable[[Path], object], meta: Mapping[str, object],
                 result: GateResult) -> str:
        version = store.publish(write, meta, promote=False)
        if result.promote:
            store.promote(version, result.report)
        else:
            store.refuse(version, result.report)
        store.prune()
        decision = "promoted" if result.promote else "refused"
        metrics.GATE_DECISIONS.labels(kind=kind, decision=decision).inc()
        for name, value in result.report.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                metrics.GATE_METRIC.labels(kind=kind, metric=name).set(float(value))
        log.info("%s %s %s: %s", kind, version, decision, result.report)
        return version
