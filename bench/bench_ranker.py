"""Ranker micro-benchmark on the shipped catalog: featurize + predict latency for 300 candidates,
LambdaMART training time for 2,000 queries x 100 candidates, and cold-start quality.

Candidates come from a simple in-benchmark token-overlap retriever (so this benchmark measures the
ranker alone, independent of the real retrievers); training data is the self-supervised cold-start
set built from the metadata pseudo-queries (artist+title, title, artist, ...). Latency is reported
both as wall time and as thread CPU time, because on a shared 2-core machine wall time includes
waiting for the CPU.

`python -m bench.bench_ranker [--quick]` writes bench/results/ranker.json.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from collections import defaultdict

import numpy as np

from bench.common import ROOT, latency_summary, write_result
from ranker import selfsupervised
from ranker.features import DEFAULT_REGISTRY, CandidateInput, QueryInput, TrackFeatureCache, featurize
from ranker.model import train
from retrievers.pseudo_queries import generate_all
from retrievers.text import normalize
from services.catalog import Catalog


class TokenRetriever:
    """Token-overlap retriever with a popularity tie-break, plus a few random 'dense' neighbours so
    candidates carry more than one retriever's score."""

    def __init__(self, catalog: Catalog, seed: int = 0) -> None:
        self.tracks = catalog.tracks
        self.norm = [(normalize(t.title), normalize(t.artist), normalize(t.album)) for t in self.tracks]
        self.genres = [tuple(normalize(g) for g in t.genres) for t in self.tracks]
        self.index: dict[str, list[int]] = defaultdict(list)
        for i, (ti, ar, al) in enumerate(self.norm):
            for tok in set(f"{ti} {ar} {al}".split()):
                self.index[tok].append(i)
        self.rng = random.Random(seed)

    def candidates(self, query: str, k: int) -> list[CandidateInput]:
        counts: dict[int, int] = defaultdict(int)
        for tok in set(query.split()):
            for i in self.index.get(tok, ()):
                counts[i] += 1
        lex = sorted(counts, key=lambda i: (-counts[i], -self.tracks[i].popularity))[:k]
        chosen = list(dict.fromkeys(lex + self.rng.sample(range(len(self.tracks)), max(10, k - len(lex)))))[:k]
        lex_rank = {i: r for r, i in enumerate(lex, start=1)}
        out = []
        for r, i in enumerate(chosen, start=1):
            t = self.tracks[i]
            scores: dict[str, tuple[float, int]] = {}
            if i in lex_rank:
                scores["lexical"] = (counts[i] + t.popularity / 100.0, lex_rank[i])
            if i not in lex_rank or r % 7 == 0:
                scores["dense"] = (self.rng.uniform(0.2, 0.8), r)
            ti, ar, al = self.norm[i]
            out.append(CandidateInput(t.track_id, ti, ar, al, self.genres[i], t.popularity / 100.0, t.year, scores,
                                      dense_cos=self.rng.uniform(0.0, 0.8)))
        return out


def _mrr(scores: np.ndarray, ids: list[str], target: str) -> float:
    if target not in ids:
        return 0.0
    order = np.argsort(-scores, kind="stable")
    pos = int(np.nonzero(order == ids.index(target))[0][0])
    return 1.0 / (pos + 1)


def run(quick: bool = False) -> dict:
    catalog = Catalog.load(ROOT / "data" / "tracks.csv.gz")
    retr = TokenRetriever(catalog)
    pseudo = generate_all(catalog.documents())
    pairs = [selfsupervised.PseudoPair(p.query, p.doc_id, p.template) for p in pseudo
             if p.template in ("artist_title", "title_artist", "title", "artist", "album")]
    n_train, n_timed = (200, 100) if quick else (2000, 300)
    groups = selfsupervised.sample_queries(pairs, n_train + n_timed, seed=1)
    queries = list(groups)
    train_groups = {q: groups[q] for q in queries[:n_train]}
    test_queries = queries[n_train:]

    cache = TrackFeatureCache()
    t = time.perf_counter()
    cache.warm(CandidateInput(t.track_id, *retr.norm[i]) for i, t in enumerate(catalog.tracks))
    warm_s = time.perf_counter() - t

    def cands100(q: str) -> tuple[list[str], np.ndarray]:
        cs = retr.candidates(q, 100)
        return [c.track_id for c in cs], featurize(QueryInput(q), cs, cache)

    t = time.perf_counter()
    data, stats = selfsupervised.build_training_set(train_groups, cands100)
    build_s = time.perf_counter() - t
    t = time.perf_counter()
    model = train(data.X, data.y, data.group, num_threads=1)
    train_s = time.perf_counter() - t

    # Serving path: 300 candidates per query, warm cache (serving keeps one for the process).
    batches = [(q, retr.candidates(q, 300)) for q in test_queries]
    for q, cs in batches[:20]:
        model.predict(featurize(QueryInput(q, {"pop": 0.5, "rock": 0.2}), cs, cache))
    cold_cache = TrackFeatureCache()
    cold = []
    for q, cs in batches[: min(50, len(batches))]:
        s = time.perf_counter()
        featurize(QueryInput(q), cs, cold_cache)
        cold.append(time.perf_counter() - s)
        cold_cache = TrackFeatureCache()
    f_wall, f_cpu, p_wall, p_cpu, tot_wall = [], [], [], [], []
    mrr_model, mrr_lex = [], []
    for q, cs in batches:
        qi = QueryInput(q, {"pop": 0.5, "rock": 0.2})
        w0, c0 = time.perf_counter(), time.thread_time()
        x = featurize(qi, cs, cache)
        w1, c1 = time.perf_counter(), time.thread_time()
        scores = model.predict(x)
        w2, c2 = time.perf_counter(), time.thread_time()
        f_wall.append(w1 - w0)
        f_cpu.append(c1 - c0)
        p_wall.append(w2 - w1)
        p_cpu.append(c2 - c1)
        tot_wall.append(w2 - w0)
        ids = [c.track_id for c in cs]
        target = max(groups[q], key=groups[q].get)
        lex_scores = -x[:, DEFAULT_REGISTRY.index["ret_lexical_rank"]]
        mrr_model.append(_mrr(scores, ids, target))
        mrr_lex.append(_mrr(np.nan_to_num(lex_scores, nan=-1e9), ids, target))

    return {
        "n_features": DEFAULT_REGISTRY.dim,
        "registry_version": DEFAULT_REGISTRY.version,
        "load_average_1m": os.getloadavg()[0],
        "featurize_300_wall": latency_summary(f_wall),
        "featurize_300_cpu": latency_summary(f_cpu),
        "featurize_300_cold_cache_wall": latency_summary(cold),
        "cache_warm_whole_catalog_s": warm_s,
        "predict_300_wall": latency_summary(p_wall),
        "predict_300_cpu": latency_summary(p_cpu),
        "featurize_plus_predict_300_wall": latency_summary(tot_wall),
        "target_ms": 2.0,
        "train": {"queries": int(data.group.size), "rows": int(data.X.shape[0]), "build_candidates_s": build_s,
                  "train_s": train_s, "trees": model.booster.num_trees(), "num_threads": 1, **stats},
        "cold_start_quality": {
            "held_out_queries": len(batches),
            "mrr_source_track_model": float(np.mean(mrr_model)),
            "mrr_source_track_lexical_order": float(np.mean(mrr_lex)),
            "note": "pseudo-query -> source track on held-out pseudo queries; synthetic, not user judgments",
        },
        "quick": quick,
    }


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    result = run(quick=ap.parse_args().quick)
    print(json.dumps(result, indent=2, default=float))
    print(write_result("ranker", result))
