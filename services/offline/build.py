"""Building indexes and training models from the catalog and the logs (what the CLI runs)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import redis

from services.artifacts import ArtifactStore
from services.catalog import Catalog
from services.config import Settings
from services.keys import Keys

if TYPE_CHECKING:
    from retrievers.q2e import RedisQ2EStore
    from services.serving.runtime import Runtime  # annotations only (runtime imports this module lazily)

log = logging.getLogger("ltrr.build")
ALL_INDEXES = ("lexical", "dense", "structured", "q2e", "xr", "suggest")


@dataclass
class BuildRow:
    name: str
    seconds: float
    size_mb: float | None
    items: int
    note: str = ""


def dir_size_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in Path(path).rglob("*") if f.is_file()) / 2**20


def q2e_store(client: redis.Redis) -> RedisQ2EStore:
    from retrievers.q2e import RedisQ2EStore

    return RedisQ2EStore(client, prefix=f"{Keys().prefix}:q2e")


def build_indexes(settings: Settings, catalog: Catalog, client: redis.Redis | None, *,
                  only: Iterable[str] = ALL_INDEXES, progress: bool = True) -> list[BuildRow]:
    docs = catalog.documents()
    rows: list[BuildRow] = []
    only = set(only)
    settings.index_dir.mkdir(parents=True, exist_ok=True)
    if settings.backend == "opensearch":
        rows += build_opensearch(settings, docs, only, progress=progress)
        only -= {"lexical", "dense"}
    if "lexical" in only:
        from retrievers.lexical import LexicalConfig, TantivyRetriever

        t = time.perf_counter()
        lex = TantivyRetriever(LexicalConfig())
        lex.build(docs, progress=progress)
        lex.save(settings.index_dir / "lexical")
        rows.append(BuildRow("lexical (tantivy)", time.perf_counter() - t, dir_size_mb(settings.index_dir / "lexical"),
                             len(docs)))
    if "dense" in only:
        from retrievers.dense import DenseConfig, DenseRetriever

        t = time.perf_counter()
        dense = DenseRetriever(DenseConfig(cache_dir=str(settings.data_dir / "embeddings")))
        dense.build(docs, progress=progress)
        dense.save(settings.index_dir / "dense")
        rows.append(BuildRow("dense (MiniLM + faiss)", time.perf_counter() - t,
                             dir_size_mb(settings.index_dir / "dense"), len(docs),
                             "index: " + ("HNSW" if dense.is_hnsw else "Flat")))
    if "structured" in only:
        from retrievers.structured import StructuredRetriever

        t = time.perf_counter()
        structured = StructuredRetriever()
        structured.build(docs)
        structured.save(settings.index_dir / "structured")
        rows.append(BuildRow("query understanding", time.perf_counter() - t,
                             dir_size_mb(settings.index_dir / "structured"), len(docs),
                             f"{len(structured.tag_columns)} tags, {len(structured.concept_columns)} moods"))
    if "q2e" in only:
        if client is None:
            raise RuntimeError("Q2E lives in Redis: no Redis connection")
        from retrievers.q2e import Q2ERetriever

        t = time.perf_counter()
        n = Q2ERetriever(q2e_store(client)).build(docs, progress=progress)
        used = client.info("memory").get("used_memory", 0) / 2**20
        rows.append(BuildRow("q2e memory (redis)", time.perf_counter() - t, used, n,
                             "seeded pairs" if n else "already seeded"))
    if "xr" in only:
        rows.append(train_xr(settings, catalog, None, progress=progress))
    if "suggest" in only:
        rows.append(build_suggest(settings, catalog, progress=progress))
    return rows


def build_suggest(settings: Settings, catalog: Catalog, progress: bool = True) -> BuildRow:
    """Trains on the catalog plus whatever decision logs exist and publishes the next version."""
    from services.serving.suggest_service import SESSION_TRACKS, build_model, read_logged, save_model, suggest_store

    t = time.perf_counter()
    logged = read_logged(settings.logs_dir)
    model = build_model(catalog, logged=logged, max_session_tracks=SESSION_TRACKS)
    store = suggest_store(settings)
    version = save_model(model, store)
    if progress:
        log.info("suggest: %s, %d labels, %s", version, len(model), model.meta.get("seconds"))
    return BuildRow(f"suggest {version}", time.perf_counter() - t, dir_size_mb(store.path(version)), len(model),
                    f"{len(logged.query_counts)} logged queries, {len(logged.pairs)} session pairs")


def build_opensearch(settings: Settings, docs: list, only: set[str], *, progress: bool) -> list[BuildRow]:
    from retrievers.dense import DenseConfig, document_text
    from retrievers.descriptors import Descriptors
    from retrievers.encoder import torch_text_encoder
    from retrievers.opensearch_common import OpenSearchSettings
    from retrievers.opensearch_dense import OpenSearchDenseRetriever
    from retrievers.opensearch_lexical import OpenSearchLexicalRetriever

    os_settings = OpenSearchSettings.from_env()
    rows = []
    target = settings.index_dir / "opensearch"
    if "lexical" in only:
        t = time.perf_counter()
        lex = OpenSearchLexicalRetriever(os_settings)
        lex.build(docs, progress=progress)
        lex.save(target)
        rows.append(BuildRow(f"lexical (opensearch {lex.index_name})", time.perf_counter() - t, None, len(docs)))
    if "dense" in only:
        t = time.perf_counter()
        cfg = DenseConfig()
        descriptors = Descriptors.fit(docs)
        dense = OpenSearchDenseRetriever(os_settings, encode=torch_text_encoder(), model_name=cfg.model_id,
                                         text_of=lambda d: document_text(d, cfg, descriptors))
        dense.build(docs, progress=progress)
        dense.save(target)
        rows.append(BuildRow(f"dense (opensearch {dense.index_name})", time.perf_counter() - t, None, len(docs)))
    return rows


def read_click_pairs(path: Path, catalog: Catalog) -> list[tuple[str, str, float]]:
    """(query, track_id, weight) from a joined log (JSONL of JoinedRecord) or a TSV
    query<TAB>track_id[<TAB>weight]. Positive events only; unknown tracks are skipped."""
    pairs: list[tuple[str, str, float]] = []
    path = Path(path)
    weights = {"play": 1.0, "like": 1.5, "add_to_favorites": 1.5, "click": 1.0}
    if path.suffix == ".jsonl" or path.is_dir():
        files = sorted(path.glob("joined-*.jsonl")) if path.is_dir() else [path]
        for f in files:
            for i, line in enumerate(open(f, encoding="utf-8"), start=1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                    for e in rec.get("events", []):
                        if e["type"] in weights and e["track_id"] in catalog.by_id:
                            pairs.append((rec["query_norm"], e["track_id"], weights[e["type"]]))
                except (json.JSONDecodeError, KeyError, TypeError) as exc:
                    raise ValueError(f"{f}:{i}: not a joined log record ({exc})") from None
    else:
        for i, line in enumerate(open(path, encoding="utf-8"), start=1):
            parts = line.rstrip("\n").split("\t")
            if len(parts) < 2 or (i == 1 and parts[0] == "query"):
                continue
            try:
                w = float(parts[2]) if len(parts) > 2 else 1.0
            except ValueError:
                raise ValueError(f"{path}:{i}: weight '{parts[2]}' is not a number") from None
            if parts[1] in catalog.by_id:
                pairs.append((parts[0], parts[1], w))
    return pairs


def train_xr(settings: Settings, catalog: Catalog, clicks: Path | None, *, progress: bool = True) -> BuildRow:
    from retrievers.xr_linear import XRConfig, XRLinearRetriever

    t = time.perf_counter()
    docs = catalog.documents()
    xr = XRLinearRetriever(XRConfig())
    pairs = read_click_pairs(clicks, catalog) if clicks else []
    if pairs:
        xr.train(pairs, docs, progress=progress)
    else:
        xr.build(docs, progress=progress)
    store = ArtifactStore(settings.models_dir / "xr", "xr")
    reason = f"xr retrained on {len(pairs)} logged pairs" if pairs else "cold start"
    version = store.publish(xr.write, {"n_logged_pairs": len(pairs), "n_labels": len(docs)}, promote=True,
                            report={"reason": reason})
    xr.version = version
    return BuildRow(f"xr-linear {version}", time.perf_counter() - t, dir_size_mb(store.path(version)), len(docs),
                    f"{len(pairs)} logged pairs" if pairs else "cold start")


def train_coldstart(settings: Settings, runtime: Runtime, *, n_queries: int = 10000, seed: int = 0,
                    progress: bool = True) -> list[BuildRow]:
    """Trains the cold-start ranker and bandit (see services.offline.coldstart) and publishes both."""
    from ranker import model as ranker_model
    from services.learning.gate import mean_ndcg
    from services.learning.trainer import save_coldstart_data
    from services.offline.coldstart import arm_prices, collect, sample_queries, train_bandit

    rows = []
    t = time.perf_counter()
    pipe = runtime.pipeline
    queries = sample_queries(runtime.catalog, n_queries, seed=seed)
    data = collect(pipe, queries, seed=seed, progress=progress)
    rows.append(BuildRow("cold-start queries", time.perf_counter() - t, None, len(queries),
                         "per-arm median ms " + ", ".join(f"{k} {v:.2f}" for k, v in data.latencies.items())))
    t = time.perf_counter()
    n_groups = len(data.group)
    cut = int(n_groups * 0.85)
    rows_cut = int(data.group[:cut].sum())
    valid = ranker_model.RankData(data.x[rows_cut:], data.y[rows_cut:], data.group[cut:])
    model = ranker_model.train(data.x[:rows_cut], data.y[:rows_cut], data.group[:cut], valid=valid,
                               registry=pipe.registry)
    model.meta.update({"source": "cold-start self-supervised", "n_queries": n_groups})
    # Kept for retraining (the general behaviour) and for the gate's check of queries without traffic.
    valid_ndcg = mean_ndcg(model.predict, valid)
    save_coldstart_data(settings.models_dir,
                        ranker_model.RankData(data.x[:rows_cut], data.y[:rows_cut], data.group[:cut]), valid,
                        valid_ndcg)
    store = ArtifactStore(settings.models_dir / "ranker", "ranker")
    version = store.publish(model.write, {"source": "cold-start self-supervised", "n_queries": n_groups},
                            promote=True, report={"reason": "cold start", **_numbers(model.meta.get("metrics"))})
    model.meta["version"] = version
    rows.append(BuildRow(f"ranker {version}", time.perf_counter() - t, dir_size_mb(store.path(version)), n_groups,
                         f"held-out cold-start nDCG@10 {valid_ndcg:.3f}"))
    t = time.perf_counter()
    policy = runtime.bandit_store.fresh()
    runtime.ranker.refresh()  # the prices include ranking with the model just published, as serving will
    prices = arm_prices(pipe, queries)
    train_bandit(policy, data, pipe.actions, seed=seed, progress=progress, arm_ms=prices)
    version = runtime.bandit_store.publish(
        policy, "0-0", promote=True, report={"reason": "cold start"},
        meta={"source": "cold-start full information", "arm_prices_ms": prices})
    best = max(data.recall_by_action.items(), key=lambda kv: kv[1])
    rows.append(BuildRow(f"bandit {version}", time.perf_counter() - t, None, len(data.contexts),
                         f"recall of source track, best action {best[0]} {best[1]:.2f}; arm prices ms "
                         + ", ".join(f"{k} {v:.2f}" for k, v in prices.items())))
    return rows


def train_ranker_from_log(settings: Settings, log_path: Path | None, *, min_queries: int = 50,
                          position_eta: float | None = None, force: bool = False) -> BuildRow:
    """Retrains the ranker from a joined log (file or directory) exactly as the automatic
    retraining does (services.learning.trainer: cold-start groups + click groups with sampled negatives),
    and promotes it only if the gate passes, unless `force`."""
    from ranker import model as ranker_model
    from services.learning.trainer import ModelTrainer

    t = time.perf_counter()
    source = Path(log_path) if log_path else settings.logs_dir
    trainer = ModelTrainer(settings, None, Keys(), ())
    n = trainer.load_log(source)
    if n < min_queries:
        raise ValueError(f"only {n} labelled searches in {source}; need {min_queries}")
    train, _, _ = trainer.ranker_data(eta=position_eta if position_eta is not None else settings.position_eta)
    model = ranker_model.train(train.X, train.y, train.group, train.weights, registry=trainer.registry,
                               num_boost_round=120)
    model.meta.update({"source": f"click log {source}", "click_searches": n})
    version, result = trainer.gate_ranker(model, force=force)
    verdict = "promoted" if result.promote else "refused by the gate (use --force to serve it anyway)"
    numbers = ", ".join(f"{k} {v:.4f}" for k, v in result.report.items() if isinstance(v, float))
    return BuildRow(f"ranker {version}", time.perf_counter() - t, dir_size_mb(trainer.ranker_store.path(version)),
                    n, f"{verdict}; {numbers}")


def _numbers(values: object) -> dict[str, float]:
    """The numeric entries of a metrics dict, for a promotion report."""
    if not isinstance(values, dict):
        return {}
    return {str(k): float(v) for k, v in values.items() if isinstance(v, int | float) and not isinstance(v, bool)}


def format_rows(rows: list[BuildRow]) -> str:
    head = f"{'artifact':<28} {'time':>8} {'size':>10} {'items':>9}  note"
    lines = [head, "-" * len(head)]
    for r in rows:
        size = f"{r.size_mb:.1f} MB" if r.size_mb is not None else "-"
        lines.append(f"{r.name:<28} {r.seconds:>7.1f}s {size:>10} {r.items:>9}  {r.note}")
    return "\n".join(lines)
