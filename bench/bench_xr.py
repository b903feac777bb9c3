"""XR-Linear benchmark: quality on dev playlists and SciFact, latency and training cost at scale.

    python -m bench.bench_xr [--quick]

- playlists: cold-start model (metadata pseudo-queries only) on the shipped catalog.
- SciFact: trained on the train-split queries plus corpus pseudo-queries (each doc's title and
  first sentence), evaluated on the test split.
- latency: single-query retrieve(k=100) on the predict-only model loaded from disk, at 28k labels
  and at 1M synthetic labels (100k with --quick). The synthetic catalogs train on the title and
  artist+title templates only, to keep pair generation and memory bounded.
- scale runs happen in a spawned child process so their peak RSS is their own.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing as mp
import random
import re
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import (
    CACHE,
    ROOT,
    dir_size_mb,
    load_playlists,
    load_scifact,
    ndcg_at_k,
    peak_rss_mb,
    recall_at_k,
    synthetic_catalog,
    time_each,
    write_result,
)
from retrievers.base import Document
from retrievers.pseudo_queries import generate_all
from retrievers.xr_linear import XRConfig, XRLinearRetriever
from services.artifacts import ArtifactStore

CATALOG = ROOT / "data" / "tracks.csv.gz"
SCALE_TEMPLATES = ("title", "artist_title")
# The synthetic-catalog model (bench_scale serves the same one): two templates keep pair
# generation and memory bounded at 1M tracks.
SCALE_CONFIG = XRConfig(pseudo_templates=SCALE_TEMPLATES, pseudo_moods=False)


def _evaluate(xr: XRLinearRetriever, queries: dict[str, str], qrels: dict[str, dict[str, int]]) -> dict[str, float]:
    qids = [q for q in queries if q in qrels]
    results = xr.retrieve_batch([queries[q] for q in qids], 100)
    ranked = {q: [c.track_id for c in r] for q, r in zip(qids, results, strict=True)}
    return {"ndcg@10": float(np.mean([ndcg_at_k(ranked[q], qrels[q], 10) for q in qids])),
            "recall@100": float(np.mean([recall_at_k(ranked[q], qrels[q], 100) for q in qids])),
            "n_queries": len(qids)}


def _typo(text: str, rng: random.Random) -> str:
    """One random adjacent swap or drop in a word longer than 3 chars: the searcher's typo."""
    words = text.split()
    long = [i for i, w in enumerate(words) if len(w) > 3]
    if not long:
        return text
    i = rng.choice(long)
    w = words[i]
    j = rng.randrange(1, len(w) - 1)
    words[i] = w[:j] + w[j + 1] + w[j] + w[j + 2:] if rng.random() < 0.5 else w[:j] + w[j + 1:]
    return " ".join(words)


def _latency_queries(docs: list[Document], n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    out = []
    for d in rng.sample(docs, min(n, len(docs))):
        q = f"{d.fields.get('artist', '')} {d.fields.get('title', '')}".strip()
        out.append(_typo(q.lower(), rng) if rng.random() < 0.5 else q)
    return out


def _shipped(tmp: Path) -> dict[str, object]:
    from services.catalog import Catalog

    docs = Catalog.load(CATALOG).documents()
    t = time.perf_counter()
    xr = XRLinearRetriever(XRConfig())
    xr.build(docs)
    train_s = time.perf_counter() - t
    store = ArtifactStore(tmp / "xr", "xr")
    version = store.publish(xr.write, {"bench": "xr28k"}, promote=True, report={"reason": "bench"})
    version_dir = store.path(version)
    del xr
    t = time.perf_counter()
    store.verify(version)  # what `ltrr serve` does before PECOS reads the files
    served = XRLinearRetriever.load(version_dir, version=version)
    load_s = time.perf_counter() - t
    queries, qrels = load_playlists()
    quality = _evaluate(served, queries, qrels)
    lat_queries = _latency_queries(docs, 1000) + list(queries.values())
    latency = time_each(lambda q: served.retrieve(q, 100), lat_queries)
    beam_sweep = {}
    for beam in (5, 10, 20):
        served.config = dataclasses.replace(served.config, beam_size=beam)
        beam_sweep[f"beam{beam}"] = {**_evaluate(served, queries, qrels),
                                     **{k: v for k, v in time_each(lambda q: served.retrieve(q, 100),
                                                                   lat_queries[:500]).items() if k != "n"}}
    return {"n_labels": len(docs), "train_s": train_s, "load_s": load_s, "model_mb": dir_size_mb(version_dir),
            "stats": served.meta, "playlists_dev": quality, "latency_k100": latency, "beam_sweep": beam_sweep}


_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def _scifact() -> dict[str, object]:
    corpus, _, train_qrels_q = load_scifact("train")
    _, test_queries, test_qrels = load_scifact("test")
    _, train_queries, _ = load_scifact("train")
    docs = [Document(doc_id=d["_id"], fields={"title": d.get("title", ""), "text": d.get("text", "")})
            for d in corpus]
    pairs: list[tuple[str, str, float]] = []
    for qid, rels in train_qrels_q.items():
        pairs.extend((train_queries[qid], did, 1.0) for did, r in rels.items() if r > 0)
    # Corpus pseudo-queries: the first sentence of each abstract says what the doc claims.
    # (Titles come in through the cold-start "title" template.)
    for d in corpus:
        first = _SENTENCE.split(d.get("text", "").strip(), maxsplit=1)[0]
        if first:
            pairs.append((first, d["_id"], 0.5))
    t = time.perf_counter()
    xr = XRLinearRetriever(XRConfig(pseudo_templates=("title",), logged_weight_scale=1.0))
    xr.train(pairs, docs)
    train_s = time.perf_counter() - t
    return {"n_docs": len(docs), "n_train_pairs": xr.stats.n_pairs, "train_s": train_s,
            "test": _evaluate(xr, test_queries, test_qrels),
            "reference": "BEIR BM25 nDCG@10 0.665 (XR-Linear only knows docs through the pseudo-queries)"}


def scale_model_dir(n: int) -> Path:
    """Where the n-label scale model is kept after the run: bench_scale serves it at 1M."""
    return CACHE / f"xr_{n}"


def _scale_child(n: int, out: mp.Queue) -> None:
    from services.catalog import Catalog

    t = time.perf_counter()
    path = synthetic_catalog(n)
    synth_s = time.perf_counter() - t
    t = time.perf_counter()
    docs = Catalog.load(path).documents()
    load_catalog_s = time.perf_counter() - t
    n_pairs = len([p for p in generate_all(docs[:1000], moods=False) if p.template in SCALE_TEMPLATES])
    rss_before = peak_rss_mb()
    t = time.perf_counter()
    xr = XRLinearRetriever(SCALE_CONFIG)
    xr.train((), docs)
    train_s = time.perf_counter() - t
    rss_train = peak_rss_mb()
    keep = scale_model_dir(n)
    shutil.rmtree(keep, ignore_errors=True)
    store = ArtifactStore(keep, "xr")
    version = store.publish(xr.write, {"n_labels": len(docs), "bench": "scale"}, promote=True,
                            report={"reason": "bench"})
    vdir = store.path(version)
    model_mb = dir_size_mb(vdir)
    stats = dict(xr.meta)
    seconds = dict(xr.stats.seconds)
    del xr
    # The served model: predict-only, loaded from disk the way `ltrr serve` loads it.
    t = time.perf_counter()
    store.verify(version)
    served = XRLinearRetriever.load(vdir, version=version)
    load_s = time.perf_counter() - t
    queries = _latency_queries(docs, 2000, seed=1)
    latency = time_each(lambda q: served.retrieve(q, 100), queries)
    # Self-retrieval sanity: a typo'd "artist title" finds its own track.
    sample = random.Random(2).sample(docs, 300)
    rng = random.Random(3)
    hit = np.mean([d.doc_id in [c.track_id for c in served.retrieve(
        _typo(f"{d.fields['artist']} {d.fields['title']}".lower(), rng), 10)] for d in sample])
    out.put({"n_labels": n, "templates": list(SCALE_TEMPLATES), "pairs_per_1k_docs": n_pairs,
             "synthesize_s": synth_s, "catalog_load_s": load_catalog_s, "train_s": train_s,
             "train_breakdown_s": seconds, "load_s": load_s, "model_mb": model_mb,
             "peak_rss_mb_before_train": rss_before, "peak_rss_mb_after_train": rss_train,
             "peak_rss_mb": peak_rss_mb(), "meta": stats, "latency_k100": latency,
             "typo_artist_title_hit@10": float(hit)})


def _scale(n: int) -> dict[str, object]:
    ctx = mp.get_context("spawn")
    q: mp.Queue = ctx.Queue()
    p = ctx.Process(target=_scale_child, args=(n, q))
    p.start()
    result = q.get()
    p.join()
    return result


def run(quick: bool = False) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        shipped = _shipped(Path(tmp))
    result: dict[str, object] = {"quick": quick, "shipped_28k": shipped, "scifact": _scifact()}
    n = 100_000 if quick else 1_000_000
    result[f"synthetic_{n // 1000}k"] = _scale(n)
    result["target"] = {"latency_ms": 1.25, "source": "PECOS product-search paper"}
    write_result("xr", result)
    return result


if __name__ == "__main__":
    import json

    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="100k synthetic labels instead of 1M")
    args = ap.parse_args()
    print(json.dumps(run(args.quick), indent=2, default=float))
