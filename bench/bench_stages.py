"""Where a new deployment's search time goes (issue: speed): in-process /search on a data dir
built exactly as the README's first command builds it (bench_clicks' base: cold-start models,
default settings), one search at a time.

Per stage (context, bandit, retrieve, rank, record, log) the median and p99 over the query mix
of bench_search (half titles/artists with typos, half dev playlist names); each retriever alone on
the same queries; the query encoder without its cache; the bandit's choices (which subsets a cold
start runs); and what the ASGI app adds on top of the pipeline (FastAPI routing, validation,
serialization; no socket). Several repetitions, medians of their medians. The per-arm retrieval
cache is off here (the repetitions repeat the queries); bench_search measures it.

    python -m bench.bench_stages [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

from bench.bench_clicks import base_data_dir
from bench.bench_search import query_mix
from bench.common import write_result


def _pct(samples: list[float]) -> dict[str, float]:
    a = np.asarray(samples)
    return {"p50_ms": round(float(np.percentile(a, 50)), 3), "p99_ms": round(float(np.percentile(a, 99)), 3)}


def run(quick: bool = False) -> dict[str, object]:
    import httpx

    from services.config import Settings
    from services.serving.api import create_app
    from services.serving.runtime import Runtime

    n = 100 if quick else 300
    reps = 1 if quick else 3
    tmp = Path(tempfile.mkdtemp(prefix="ltrr-stages-"))
    data = tmp / "var"
    shutil.copytree(base_data_dir(), data, symlinks=True, ignore=shutil.ignore_patterns("*.lock", "*.pid", "logs"))
    os.environ["LTRR_DATA_DIR"] = str(data)
    rt = Runtime(Settings.from_env(), start_worker=False)
    try:
        pipe = rt.pipeline
        # The repetitions send the same queries again: with the retrieval cache on, repetitions 2
        # and 3 would measure cache hits. Stage costs are measured without it; what the cache
        # saves on repeated (Zipfian) traffic is bench_search's zipf vs distinct phases.
        pipe.retrieval_cache.max_entries = 0
        qs = query_mix(n + 50, seed=7)
        for q in qs[:50]:  # warm caches, JIT-free but lazy loads
            pipe.search(q, 10)
        stage_runs: list[dict[str, dict[str, float]]] = []
        totals: list[float] = []
        actions: Counter[str] = Counter()
        union: list[int] = []
        for _ in range(reps):
            stages: dict[str, list[float]] = {}
            for q in qs[50:]:
                out = pipe.search(q, 10)
                actions[out.decision.action.key] += 1
                union.append(sum(len(v) for v in out.record.candidates.values()))
                for k, v in out.timings_ms.items():
                    stages.setdefault(k, []).append(v)
            stage_runs.append({k: _pct(v) for k, v in stages.items()})
            totals.append(stage_runs[-1]["total"]["p50_ms"])
        stage = {k: {m: round(statistics.median(r[k][m] for r in stage_runs), 3) for m in ("p50_ms", "p99_ms")}
                 for k in stage_runs[0]}

        arms: dict[str, dict[str, float]] = {}
        for name, r in pipe.parts.retrievers.items():
            ts = []
            for q in qs[50:]:
                t = time.perf_counter()
                r.retrieve(q, 100)
                ts.append((time.perf_counter() - t) * 1000)
            arms[name] = _pct(ts)
        encoder: dict[str, float] | None = None
        dense = pipe.parts.dense
        if dense is not None and hasattr(dense, "_qcache"):
            ts = []
            for q in qs[50:]:
                dense._qcache.clear()  # the encoder itself, not its LRU cache
                t = time.perf_counter()
                dense.encode_query(q)
                ts.append((time.perf_counter() - t) * 1000)
            encoder = _pct(ts)

        app = create_app(rt)

        async def over_asgi() -> tuple[list[float], list[float]]:
            pipe_ms, asgi_ms = [], []
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://ltrr") as c:
                for q in qs[50:]:
                    t = time.perf_counter()
                    pipe.search(q, 10)
                    pipe_ms.append((time.perf_counter() - t) * 1000)
                    t = time.perf_counter()
                    r = await c.get("/search", params={"q": q})
                    asgi_ms.append((time.perf_counter() - t) * 1000)
                    assert r.status_code == 200, r.text
            return pipe_ms, asgi_ms

        pipe_ms, asgi_ms = asyncio.run(over_asgi())
        res = {
            "data_dir": "README-built, default settings (bench_clicks base), private copy",
            "queries": n, "repetitions": reps,
            "stages": stage, "total_p50_per_repetition_ms": totals,
            "retrievers_alone_top100": arms, "query_encoder_uncached": encoder,
            "actions": dict(actions.most_common()), "all_retrievers_share":
                sum(v for k, v in actions.items() if k.count("+") == len(pipe.parts.retrievers) - 1)
                / max(1, sum(actions.values())),
            "candidates_per_search_p50": float(np.median(union)),
            "asgi_overhead": {"pipeline_p50_ms": round(float(np.median(pipe_ms)), 3),
                              "asgi_p50_ms": round(float(np.median(asgi_ms)), 3),
                              "added_p50_ms": round(float(np.median(asgi_ms) - np.median(pipe_ms)), 3)},
        }
    finally:
        rt.close()
        shutil.rmtree(tmp, ignore_errors=True)
    write_result("stages", res)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    res = run(args.quick)
    for k, v in res["stages"].items():  # type: ignore[union-attr]
        print(f"{k:10s} p50 {v['p50_ms']:7.2f} ms   p99 {v['p99_ms']:7.2f} ms")
    print("retrievers alone:", res["retrievers_alone_top100"])
    print("ASGI adds:", res["asgi_overhead"])


if __name__ == "__main__":
    main()
