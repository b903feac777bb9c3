"""/search end to end on a 1M-track synthetic catalog (target p99 <= 50 ms), in process.

The synthetic catalog comes from `ltrr catalog synth` (real field distributions). Lexical is a
real tantivy index of all 1M tracks; Q2E is seeded with title and artist+title pseudo-queries.
Dense vectors: encoding 1M synthetic texts with MiniLM would take hours on 2 CPU cores, so the
HNSW index holds real track embeddings resampled with small noise (the faiss search cost is what
is measured; query encoding is the real ONNX path). XR-Linear is the 1M-label model bench_xr
trains on the same catalog (title and artist+title pseudo-queries), reused when bench_xr ran
first, trained here otherwise. The ranker and bandit are the 28k cold-start models (same feature
registry).

    python -m bench.bench_scale [--quick]    # --quick: 100k tracks
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import numpy as np

from bench.bench_search import bench_settings, ensure_built
from bench.common import CACHE, dir_size_mb, latency_summary, peak_rss_mb, synthetic_catalog, write_result


def build(n: int) -> tuple[object, dict[str, float]]:
    from retrievers.dense import DenseRetriever
    from retrievers.lexical import LexicalConfig, TantivyRetriever
    from retrievers.q2e import Q2EConfig, RedisQ2EStore
    from services.catalog import Catalog
    from services.config import Settings
    from services.serving.runtime import connect_redis

    base = bench_settings()
    csv = synthetic_catalog(n)
    settings = Settings(data_dir=CACHE / f"var_{n}", catalog=csv, embedded_worker=False)
    times: dict[str, float] = {}
    done = settings.data_dir / "BUILT"
    if done.exists():
        return settings, json.loads(done.read_text())
    t = time.perf_counter()
    catalog = Catalog.load(csv)
    docs = catalog.documents()
    times["catalog_load_s"] = time.perf_counter() - t

    t = time.perf_counter()
    lex = TantivyRetriever(LexicalConfig())
    lex.build(docs, progress=True)
    lex.save(settings.index_dir / "lexical")
    times["lexical_build_s"] = time.perf_counter() - t

    t = time.perf_counter()
    real = DenseRetriever.load(base.index_dir / "dense")
    rng = np.random.default_rng(0)
    src = real._vectors[rng.integers(0, len(real.ids), size=n)]
    vecs = src + rng.normal(0, 0.02, size=src.shape).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    dense = DenseRetriever(real.config)
    dense._encoder_dir = real._encoder_dir
    dense.build_from_vectors([d.doc_id for d in docs], vecs.astype(np.float32))
    dense.save(settings.index_dir / "dense")
    times["dense_build_s"] = time.perf_counter() - t
    times["dense_index"] = "hnsw" if dense.is_hnsw else "flat"  # type: ignore[assignment]
    del real, dense, src, vecs

    templates = ("title", "artist_title")
    t = time.perf_counter()
    times["xr"] = _xr_model(n, docs, settings.models_dir / "xr")  # type: ignore[assignment]
    times["xr_s"] = time.perf_counter() - t

    t = time.perf_counter()
    client, server = connect_redis(settings)
    try:
        from retrievers.pseudo_queries import generate_all

        store = RedisQ2EStore(client, Q2EConfig(moods=False), prefix="ltrr:q2e")
        pairs = [(p.query, p.doc_id, p.score) for p in generate_all(docs, moods=False) if p.template in templates]
        store.seed(pairs, version="bench-scale", progress=True, total=len(pairs))
        times["q2e_seed_s"] = time.perf_counter() - t
        times["redis_used_mb"] = client.info("memory")["used_memory"] / 2**20
    finally:
        if server:
            server.stop()
    for kind in ("ranker", "bandit"):
        shutil.copytree(base.models_dir / kind, settings.models_dir / kind, dirs_exist_ok=True)
    times["index_mb"] = dir_size_mb(settings.index_dir)
    done.write_text(json.dumps(times))
    return settings, times


def _xr_model(n: int, docs: list, dest: Path) -> str:
    """Puts a 1M-label XR-Linear model under dest: bench_xr's, if it was trained on this catalog."""
    from bench.bench_xr import SCALE_CONFIG, scale_model_dir
    from retrievers.xr_linear import XRLinearRetriever
    from services.artifacts import MANIFEST, ArtifactStore

    cache, store = ArtifactStore(scale_model_dir(n), "xr"), ArtifactStore(dest, "xr")
    found = cache.latest()
    if found is not None and json.loads((cache.path(found) / "meta.json").read_text()).get("n_labels") == len(docs):
        cache.verify(found)
        src = cache.path(found)
        store.publish(lambda d: shutil.copytree(src, d, dirs_exist_ok=True, ignore=shutil.ignore_patterns(MANIFEST)),
                      {"copied_from": str(src)}, promote=True, report={"reason": "bench: reused bench_xr model"})
        return f"reused bench_xr model {src}"
    xr = XRLinearRetriever(SCALE_CONFIG)
    xr.train((), docs, progress=True)
    store.publish(xr.write, {"n_labels": len(docs)}, promote=True, report={"reason": "bench: cold start"})
    return "trained here"


def run(quick: bool = False) -> dict[str, object]:
    from services.offline.typos import add_typos
    from services.serving.runtime import Runtime

    ensure_built(2000 if quick else 6000)
    n = 100_000 if quick else 1_000_000
    settings, times = build(n)
    rt = Runtime(settings, start_worker=False)
    try:
        import random

        rng = random.Random(0)
        from bench.common import load_playlists

        topics = list(load_playlists()[0].values())
        qs = []
        for i in range(300 if quick else 1500):
            if i % 2:
                qs.append(rng.choice(topics))
            else:
                tr = rng.choice(rt.catalog.tracks)
                q = rng.choice([tr.title, f"{tr.artist} {tr.title}"])
                qs.append(add_typos(q, rng) if rng.random() < 0.3 else q)
        for q in qs[:50]:
            rt.pipeline.search(q, 10)
        totals, stages = [], {}
        for q in qs:
            out = rt.pipeline.search(q, 10)
            totals.append(out.timings_ms["total"] / 1000)
            for k, v in out.timings_ms.items():
                stages.setdefault(k, []).append(v)
            for arm, ms in out.record.retriever_ms.items():
                stages.setdefault(f"retriever:{arm}", []).append(ms)
        res = {"tracks": n, "build": times, "learned_policy": latency_summary(totals),
               "stage_p50_ms": {k: float(np.median(v)) for k, v in stages.items()},
               "stage_p99_ms": {k: float(np.percentile(v, 99)) for k, v in stages.items()},
               "peak_rss_mb": peak_rss_mb()}
    finally:
        rt.close()
    write_result("scale", res)
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    print(json.dumps(run(ap.parse_args().quick), indent=2, default=float))
