"""Ranker latency on a built data dir: featurize + predict for 300 real candidates per query.

For each query (the dev topic queries and the spearfish set of bench/relevance_sets.py) every
retriever of the data dir runs with a budget deep enough that their union holds at least 300
tracks; the first 300 are ranked by the production code:

- `featurize`: `SearchPipeline.featurize`, what /search runs (the registry's vectorized features
  over the TrackTable, the pseudo-relevance profile, query-understanding intent, the dense
  cosines of every candidate, the click memory's lookup when it knows the query);
- `table_features`: the registry's part of it alone (`FeatureRegistry.featurize`, inputs ready);
- `predict`: the served model on those rows: its trees compiled to machine code (ranker.compiled,
  the default) when they compile faithfully; `lightgbm_predict` times LightGBM's own predictor on
  the same rows in the same run, for the ratio.

Wall time and thread CPU time are both reported: on a shared 2-core machine wall time includes
waiting for the CPU. Target: featurize + predict <= 2 ms p50 for 300 candidates.

    python -m bench.bench_ranker [--data-dir var] [--quick]   -> bench/results/ranker.json
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

from bench.common import latency_summary, write_result
from bench.relevance_sets import spearfish_set, topic_set

os.environ.setdefault("HF_HUB_OFFLINE", "1")
N_CANDIDATES = 300


def run(data_dir: Path, *, quick: bool = False) -> dict[str, object]:
    from ranker.features import Candidates, QueryInput
    from retrievers.text import normalize
    from services.config import Settings
    from services.serving.runtime import Runtime

    rt = Runtime(Settings(data_dir=data_dir, redis_url=None, embedded_worker=False), start_worker=False)
    try:
        pipe = rt.pipeline
        model = rt.ranker.current()
        if model is None:
            raise SystemExit(f"{data_dir} has no loadable ranker: build it the README's way first")
        queries = [q.text for q in topic_set()] + [q.text for q in spearfish_set(rt.catalog, 40 if quick else 120)]
        if quick:
            queries = queries[::3]
        arms = tuple(pipe.parts.retrievers)
        feat_wall, feat_cpu, table_wall, pred_wall, pred_cpu, total_wall, sizes = [], [], [], [], [], [], []
        lgb_wall: list[float] = []
        for i, q in enumerate(queries):
            qnorm = normalize(q)
            results = {a: pipe.parts.retrievers[a].retrieve(q, 200) for a in arms}
            union = list(dict.fromkeys(c.track_id for a in arms for c in results[a]))[:N_CANDIDATES]
            # As /search decides it: the memory's scores are looked up only for a query it knows
            # (pipeline._lookup_state, part of the context stage, outside this timing).
            store = pipe.parts.q2e_store
            known = store is None or store.stats(qnorm).query is not None
            w0, c0 = time.perf_counter(), time.thread_time()
            ids, x = pipe.featurize(qnorm, q, union, results, None, arms, keep=set(union), q2e_known=known)
            w1, c1 = time.perf_counter(), time.thread_time()
            model.predict(x)
            w2, c2 = time.perf_counter(), time.thread_time()
            rows = pipe.table.rows(ids)
            w3 = time.perf_counter()
            pipe.registry.featurize(QueryInput(qnorm), Candidates(rows=rows), pipe.table)
            w4 = time.perf_counter()
            model.booster.predict(x, num_threads=1)
            w5 = time.perf_counter()
            if i < 10:
                continue  # warm-up: first calls pay for lazy loading
            sizes.append(len(ids))
            feat_wall.append(w1 - w0)
            feat_cpu.append(c1 - c0)
            pred_wall.append(w2 - w1)
            pred_cpu.append(c2 - c1)
            total_wall.append(w2 - w0)
            table_wall.append(w4 - w3)
            lgb_wall.append(w5 - w4)
        return {
            "data_dir": str(data_dir), "quick": quick, "queries": len(sizes),
            "candidates_median": float(np.median(sizes)), "n_features": pipe.registry.dim,
            "ranker_version": rt.ranker.version, "trees": model.booster.num_trees(),
            "load_avg_1m_at_end": os.getloadavg()[0],
            "featurize_wall": latency_summary(feat_wall), "featurize_cpu": latency_summary(feat_cpu),
            "table_features_wall": latency_summary(table_wall),
            "predict_wall": latency_summary(pred_wall), "predict_cpu": latency_summary(pred_cpu),
            "compiled": model.compiled is not None, "lightgbm_predict_wall": latency_summary(lgb_wall),
            "featurize_plus_predict_wall": latency_summary(total_wall),
            "target_ms": 2.0,
        }
    finally:
        rt.close()


def main() -> None:
    from services.config import Settings

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=Settings().data_dir, help="a built data dir (default ./var)")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    result = {"command": "python -m bench.bench_ranker " + " ".join(os.sys.argv[1:]),
              **run(args.data_dir.resolve(), quick=args.quick)}
    print(json.dumps(result, indent=2, default=float))
    print(write_result("ranker", result))


if __name__ == "__main__":
    main()
