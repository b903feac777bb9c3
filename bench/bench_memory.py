"""Redis memory per search (issue: reliability, item 9), on a private copy of a README-built data
dir with default settings: `used_memory` before and after N searches (the live decisions), then
after their reward, then after the learner's checkpoints (which trim the bandit's updates stream);
plus MEMORY USAGE of sampled decision and served keys and of the stream. What stays per search for
the feedback window is the served key and the click memory's impressions of the search (Q2E
statistics for each shown (query, track) pair, permanent and decayed); the stream is bounded by
checkpoints, not by searches. docs/capacity.md quotes these.

    python -m bench.bench_memory [--searches 2000] [--quick]
"""

from __future__ import annotations

import argparse
import json
import shutil
import tempfile
import time
from pathlib import Path

from bench.bench_clicks import base_data_dir
from bench.bench_search import query_mix
from bench.common import write_result


def run(n: int) -> dict[str, object]:
    from services.config import Settings
    from services.learning.worker import BanditLearner, FeedbackWorker
    from services.serving.runtime import Runtime

    tmp = Path(tempfile.mkdtemp(prefix="ltrr-mem-"))
    data = tmp / "var"
    shutil.copytree(base_data_dir(), data, symlinks=True, ignore=shutil.ignore_patterns("*.lock", "*.pid", "logs"))
    settings = Settings.from_env(data_dir=data, embedded_worker=False)
    rt = Runtime(settings, start_worker=False)
    try:
        r = rt.redis
        worker = FeedbackWorker(settings, r, rt.keys, q2e_store=rt.q2e_store, catalog=rt.catalog,
                                bandit_store=rt.bandit_store)
        worker.learner = BanditLearner(settings, r, rt.keys, rt.bandit_store, worker.training_log)

        def used() -> int:
            return int(r.info("memory")["used_memory"])

        def sampled(pattern: str, k: int = 200) -> float:
            keys = [key for _, key in zip(range(k), r.scan_iter(match=pattern, count=1000), strict=False)]
            return sum(int(r.memory_usage(key) or 0) for key in keys) / len(keys) if keys else float("nan")

        queries = query_mix(n, seed=3)
        base = used()
        for q in queries:
            rt.pipeline.search(q, 20)
        rt.pipeline.flush()  # decisions are written after each search returns
        live = used() - base
        decision_key = sampled(f"{rt.keys.prefix}:decision:*")
        served_key = sampled(f"{rt.keys.prefix}:served:*")
        ranked_key = sampled(f"{rt.keys.prefix}:ranked:*")
        swept = 0
        while swept < n:
            got = worker.sweep(time.time() + settings.reward.wait_s + 1)
            swept += got
            if not got:
                break
        rewarded = used() - base
        # Checkpoints every 200 updates (the service's default is every 500 or 30 s).
        while worker.learner.step(count=200):
            worker.learner.checkpoint(force=True)
        learned = used() - base
        stream = int(r.memory_usage(rt.keys.bandit_updates) or 0)
        worker.training_log.close()
        return {"searches": n, "limit": 20, "rewarded": swept,
                "bytes_per_search_live": live / n, "bytes_per_search_after_reward": rewarded / n,
                "bytes_per_search_after_checkpoints": learned / n,
                "decision_key_bytes": decision_key, "served_key_bytes": served_key,
                "ranked_key_bytes": ranked_key,
                "updates_stream_len": int(r.xlen(rt.keys.bandit_updates)), "updates_stream_bytes": stream,
                "bytes_per_search_after_checkpoints_without_stream": (learned - stream) / n,
                "settings": {"reward_wait_s": settings.reward.wait_s, "decision_grace_s": settings.decision_grace_s,
                             "decision_ttl_s": settings.decision_ttl_s, "page_depth": settings.page_depth,
                             "page_ttl_s": settings.page_ttl_s}}
    finally:
        rt.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--searches", type=int, default=2000)
    ap.add_argument("--quick", action="store_true", help="500 searches")
    args = ap.parse_args()
    res = run(500 if args.quick else args.searches)
    write_result("memory", res)
    print(json.dumps(res, indent=2))
