"""Lexical (tantivy) retriever benchmark: BEIR SciFact quality, playlist dev-set quality, and
in-process latency / build time / index size on the real 28k catalog and a synthetic large one.

    python -m bench.bench_lexical [--quick]   -> bench/results/lexical.json
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import time
from collections.abc import Sequence
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
from retrievers.lexical import LexicalConfig, TantivyRetriever
from services.catalog import Catalog

CATALOG = ROOT / "data" / "tracks.csv.gz"


def _quality(r: TantivyRetriever, queries: dict[str, str], qrels: dict[str, dict[str, int]]) -> dict[str, float]:
    nd, rc = [], []
    for qid, text in queries.items():
        ids = [c.track_id for c in r.retrieve(text, 100)]
        nd.append(ndcg_at_k(ids, qrels[qid], 10))
        rc.append(recall_at_k(ids, qrels[qid], 100))
    return {"ndcg@10": float(np.mean(nd)), "recall@100": float(np.mean(rc)), "queries": len(nd)}


def _build(cfg: LexicalConfig, docs: Sequence[Document], where: Path) -> tuple[TantivyRetriever, dict[str, float]]:
    if where.exists():
        shutil.rmtree(where)
    r = TantivyRetriever(cfg, index_dir=where)
    t = time.perf_counter()
    r.build(docs, progress=True)
    return r, {"build_s": time.perf_counter() - t, "index_mb": dir_size_mb(where), "docs": len(docs)}


def scifact(work: Path) -> dict[str, object]:
    corpus, queries, qrels = load_scifact("test")
    docs = [Document(doc_id=d["_id"], fields={"title": d.get("title", ""), "text": d.get("text", "")})
            for d in corpus]
    cfg = LexicalConfig.scifact()
    r, build = _build(cfg, docs, work / "scifact")
    return {"config": json.loads(cfg.model_dump_json()), **build, **_quality(r, queries, qrels),
            "reference": {"BEIR BM25 ndcg@10": 0.665}}


def spearfish_queries(catalog: Catalog, n: int, seed: int = 0) -> tuple[list[str], dict[str, list[str]]]:
    """Queries people type to find one track: the title, "artist title", and a misspelled variant
    (one adjacent swap in the longest word) to exercise the fuzzy path."""
    rng = random.Random(seed)
    tracks = rng.sample(catalog.tracks, min(n, len(catalog.tracks)))

    def typo(text: str) -> str:
        words = text.split()
        if not words:
            return text
        i = max(range(len(words)), key=lambda j: len(words[j]))
        w = words[i]
        if len(w) >= 4:
            p = rng.randrange(1, len(w) - 2)
            words[i] = w[:p] + w[p + 1] + w[p] + w[p + 2:]
        return " ".join(words)

    sets = {"title": [t.title for t in tracks], "artist_title": [f"{t.artist} {t.title}" for t in tracks],
            "artist_title_typo": [typo(f"{t.artist} {t.title}") for t in tracks]}
    return [t.track_id for t in tracks], sets


def latency(r: TantivyRetriever, catalog: Catalog, topics: list[str], n: int) -> dict[str, object]:
    sets = {**spearfish_queries(catalog, n)[1], "topic": topics}
    out: dict[str, object] = {name: time_each(lambda q: r.retrieve(q, 100), qs) for name, qs in sets.items()}
    everything = [q for qs in sets.values() for q in qs]
    out["all"] = time_each(lambda q: r.retrieve(q, 100), everything)
    return out


def music(work: Path, n_latency: int) -> tuple[dict[str, object], Catalog, list[str]]:
    catalog = Catalog.load(CATALOG)
    queries, qrels = load_playlists()
    cfg = LexicalConfig()
    r, build = _build(cfg, catalog.documents(), work / "music")
    topics = list(queries.values())
    # Spearfishing quality: does "artist title" (and a misspelling of it) find that very track?
    ids, spear = spearfish_queries(catalog, n_latency, seed=1)
    hit = {}
    for name in ("artist_title", "artist_title_typo"):
        ranks = []
        for tid, q in zip(ids, spear[name], strict=True):
            found = [c.track_id for c in r.retrieve(q, 10)]
            ranks.append(found.index(tid) + 1 if tid in found else 0)
        hit[name] = {"hit@1": float(np.mean([k == 1 for k in ranks])),
                     "hit@10": float(np.mean([k > 0 for k in ranks]))}
    return ({"config": json.loads(cfg.model_dump_json()), **build, "playlists_dev": _quality(r, queries, qrels),
             "spearfishing_exact_track": hit, "latency_k100": latency(r, catalog, topics, n_latency)},
            catalog, topics)


def scale(work: Path, real: Catalog, topics: list[str], n_tracks: int, n_latency: int) -> dict[str, object]:
    csv_path = synthetic_catalog(n_tracks)
    t = time.perf_counter()
    big = Catalog.load(csv_path)
    load_s = time.perf_counter() - t
    docs = big.documents()
    r, build = _build(LexicalConfig(), docs, work / f"synthetic_{n_tracks}")
    del docs
    return {"catalog_load_s": load_s, **build, "latency_k100": latency(r, big, topics, n_latency)}


def run(quick: bool = False) -> dict[str, object]:
    work = CACHE / "lexical"
    work.mkdir(parents=True, exist_ok=True)
    n_latency = 200 if quick else 1000
    result: dict[str, object] = {"quick": quick, "scifact": scifact(work)}
    music_res, catalog, topics = music(work, n_latency)
    result["music_28k"] = music_res
    n_big = 100_000 if quick else 1_000_000
    result[f"synthetic_{n_big}"] = scale(work, catalog, topics, n_big, n_latency)
    result["peak_rss_mb"] = peak_rss_mb()
    out = write_result("lexical", result)
    print(f"wrote {out}")
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer latency queries, 100k instead of 1M synthetic")
    args = ap.parse_args()
    res = run(quick=args.quick)
    print(json.dumps({k: v for k, v in res.items() if k != "quick"}, indent=1, default=float)[:6000])


if __name__ == "__main__":
    main()
