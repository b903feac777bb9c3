"""Feedback path: worker throughput (events/s applied from the stream) and the lag from the 202
to "bandit updated" (the learner applied the rewarded decision), on the embedded stack.

HTTP acceptance throughput (batches of 100 over wrk) is measured in bench_search.

    python -m bench.bench_feedback [--quick]
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from bench.bench_search import bench_settings, ensure_built, query_mix
from bench.common import latency_summary, write_result


def run(quick: bool = False) -> dict[str, object]:
    from services.learning.worker import BanditLearner, FeedbackWorker
    from services.redis_server import RedisServer
    from services.serving.feedback import FeedbackEventIn
    from services.serving.runtime import Runtime

    ensure_built(2000 if quick else 6000)
    base = bench_settings()
    tmp = Path(tempfile.mkdtemp())
    server = RedisServer(tmp / "redis").start()
    # Copy the seeded Q2E state: the worker's Q2E updates are part of what is measured.
    src = RedisServer(base.redis_dir).start()
    try:
        import redis

        a, b = redis.Redis.from_url(src.url), redis.Redis.from_url(server.url)
        pipe = b.pipeline(transaction=False)
        for n, key in enumerate(a.scan_iter(match="ltrr:q2e:*", count=5000)):
            pipe.restore(key, 0, a.dump(key), replace=True)
            if n % 5000 == 0:
                pipe.execute()
        pipe.execute()
    finally:
        src.stop()
    settings = base.model_copy(update={"redis_url": server.url, "data_dir": tmp / "data"})
    (tmp / "data").mkdir()
    (tmp / "data" / "indexes").symlink_to(base.index_dir)
    shutil.copytree(base.models_dir, tmp / "data" / "models")
    rt = Runtime(settings, start_worker=False)
    res: dict[str, object] = {}
    try:
        rng = random.Random(0)
        qs = query_mix(200 if quick else 1000)
        served = []
        for q in qs:
            out = rt.pipeline.search(q, 20)
            if out.record.served:
                served.append(out.record)
        # 1) Throughput: a backlog of events, drained by one worker.
        n_events = 5000 if quick else 20000
        events = []
        for i in range(n_events):
            rec = served[i % len(served)]
            pos = rng.randrange(len(rec.served))
            events.append(FeedbackEventIn(event_id=uuid.uuid4().hex, search_id=rec.search_id,
                                          track_id=rec.served[pos], position=pos + 1,
                                          type=rng.choice(["click", "play", "like", "skip"]), user_id=f"u{i % 50}"))
        t = time.perf_counter()
        for i in range(0, n_events, 1000):
            rt.ingest.ingest(events[i:i + 1000])
        ingest_s = time.perf_counter() - t
        worker = FeedbackWorker(settings, rt.redis, rt.keys, q2e_store=rt.q2e_store, catalog=rt.catalog,
                                bandit_store=rt.bandit_store, consumer="bench")
        worker.learner = BanditLearner(settings, rt.redis, rt.keys, rt.bandit_store, worker.training_log)
        t = time.perf_counter()
        while worker.run_once(block_ms=10):
            pass
        drain_s = time.perf_counter() - t
        applied = int(rt.redis.hget(rt.keys.counts, "events") or 0)
        res["ingest_events_per_s_in_process"] = n_events / ingest_s
        res["worker_events_per_s"] = applied / drain_s
        res["worker_events_applied"] = applied
        res["bandit_updates_applied"] = worker.learner.applied
        # 2) Lag: one positive event at a time, from the 202 (XADD returned) to the learner
        # having applied the rewarded decision. The worker runs on its own thread, as in `serve`.
        worker.start()
        lags = []
        for q in qs[: 100 if quick else 300]:
            out = rt.pipeline.search(q, 10)
            if not out.record.served:
                continue
            before = worker.learner.applied
            rt.ingest.ingest([FeedbackEventIn(search_id=out.record.search_id, track_id=out.record.served[0],
                                              position=1, type="play")])
            t = time.perf_counter()
            deadline = t + 10
            while worker.learner.applied == before and time.perf_counter() < deadline:
                time.sleep(0.0005)
            lags.append(time.perf_counter() - t)
        worker.stop()
        res["lag_202_to_bandit_updated"] = latency_summary(lags)
        res["lag_note"] = ("includes the worker's XREADGROUP wake-up, event effects (Q2E, affinity, counts), "
                           "finalize (reward, aggregation 'first') and the VW update")
    finally:
        rt.close()
        server.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    write_result("feedback", res)
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    print(json.dumps(run(ap.parse_args().quick), indent=2, default=float))
