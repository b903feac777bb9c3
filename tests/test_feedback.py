"""The feedback loop through Redis (issue: feedback): exactly-once effects, crash safety, 4xx on
bad input, 503 when Redis is down, and the bandit learning from clicks. Real Redis throughout."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from services.decision_store import DecisionStore, served_value
from services.keys import Keys
from services.learning.worker import FeedbackWorker
from services.redis_server import RedisServer
from services.serving.api import create_app
from services.serving.feedback import FeedbackEventIn, FeedbackIngest
from services.serving.runtime import Runtime

TYPES = ["click", "play", "like", "add_to_favorites", "skip"]
QUERIES = ["shape of you", "taylor swift", "sad love songs", "gym rap", "latin summer", "bad guy", "chill acoustic",
           "queen", "dance monkey", "old town road", "rock classics", "edm festival"]


@pytest.fixture()
def service(built_settings, fresh_redis_state):
    settings, _ = built_settings
    rt = Runtime(settings, start_worker=False)
    client = TestClient(create_app(rt))  # no lifespan: the tests drive the worker themselves
    yield rt, client
    rt.close()


def make_worker(rt: Runtime, consumer: str = "test-worker") -> FeedbackWorker:
    w = FeedbackWorker(rt.settings, rt.redis, rt.keys, q2e_store=rt.q2e_store, catalog=rt.catalog,
                       bandit_store=rt.bandit_store, consumer=consumer)
    from services.learning.worker import BanditLearner

    w.learner = BanditLearner(rt.settings, rt.redis, rt.keys, rt.bandit_store, w.training_log)
    return w


def drain(worker: FeedbackWorker, rt: Runtime, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        n = worker.run_once(block_ms=50)
        pending = rt.redis.xpending(rt.keys.feedback_stream, rt.keys.group)["pending"]
        if n == 0 and pending == 0:
            return
    raise AssertionError("worker did not drain the stream")


def hit_ref(hit: dict) -> dict:
    """What a feedback event names of a hit: its track, or its artist / album, and its position."""
    key = "track_id" if hit["type"] == "track" else "entity_id"
    return {key: hit[key], "position": hit["position"]}


def searches(client: TestClient, n: int, limit: int = 20) -> list[tuple[str, str, list[dict]]]:
    """(search_id, query, hit_ref of each hit) of n searches; "taylor swift" and "queen" get their
    artist first, so the events below include events on artists."""
    out = []
    for i in range(n):
        q = QUERIES[i % len(QUERIES)]
        r = client.get("/search", params={"q": q, "limit": limit})
        assert r.status_code == 200, r.text
        body = r.json()
        out.append((body["search_id"], q, [hit_ref(h) for h in body["results"]]))
    return out


def events_for(searched: list[tuple[str, str, list[dict]]], n: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    evs = []
    for i in range(n):
        sid, _, served = searched[i % len(searched)]
        evs.append({"event_id": uuid.uuid4().hex, "search_id": sid, **rng.choice(served),
                    "type": rng.choice(TYPES), "user_id": f"u{i % 7}"})
    return evs


def post(client: TestClient, events: list[dict]) -> None:
    for i in range(0, len(events), 1000):
        r = client.post("/feedback", json={"events": events[i:i + 1000]})
        assert r.status_code == 202, r.text
        assert r.json()["accepted"] == len(events[i:i + 1000])


def test_10k_events_over_http_are_each_applied_exactly_once(service) -> None:
    rt, client = service
    searched = searches(client, 60)
    events = events_for(searched, 10_000)
    assert sum("entity_id" in e for e in events) > 40  # events on artist hits count once too
    post(client, events)
    post(client, events[:2000])  # a client retrying: same event ids again
    worker = make_worker(rt)
    drain(worker, rt)
    counts = {k.decode(): int(v) for k, v in rt.redis.hgetall(rt.keys.counts).items()}
    assert counts["events"] == 10_000
    for t in TYPES:
        assert counts.get(t, 0) == sum(e["type"] == t for e in events)
    # Q2E saw every event once too: its raw per-query event counters add up to 10,000.
    from retrievers.text import normalize

    assert sum(rt.q2e_store.stats(normalize(q)).events for q in {q for _, q, _ in searched}) == 10_000
    # Redelivery of already-applied messages changes nothing.
    worker.process(rt.redis.xrange(rt.keys.feedback_stream, count=500))
    assert int(rt.redis.hget(rt.keys.counts, "events")) == 10_000
    worker.training_log.close()


def test_worker_killed_mid_batch_loses_nothing_and_double_counts_nothing(service, built_settings,
                                                                        redis_server: RedisServer) -> None:
    rt, client = service
    settings, _ = built_settings
    searched = searches(client, 30)
    events = events_for(searched, 6000, seed=1)
    post(client, events)
    env = {**os.environ, "REDIS_URL": redis_server.url, "LTRR_DATA_DIR": str(settings.data_dir),
           "LTRR_CATALOG": str(settings.catalog), "HF_HUB_OFFLINE": "1", "LTRR_LOG_LEVEL": "WARNING"}
    cmd = [sys.executable, "-m", "services.cli", "worker", "--consumer", "crashy"]
    proc = subprocess.Popen(cmd, env=env, cwd=Path(__file__).resolve().parents[1])
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            done = int(rt.redis.hget(rt.keys.counts, "events") or 0)
            if done > 0:
                break
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        at_kill = int(rt.redis.hget(rt.keys.counts, "events") or 0)
        assert 0 < at_kill < 6000, f"kill landed outside the batch work ({at_kill})"
        proc = subprocess.Popen(cmd, env=env, cwd=Path(__file__).resolve().parents[1])
        while time.time() < deadline:
            if int(rt.redis.hget(rt.keys.counts, "events") or 0) >= 6000 and \
                    rt.redis.xpending(rt.keys.feedback_stream, rt.keys.group)["pending"] == 0:
                break
            time.sleep(0.1)
        time.sleep(0.5)
        assert int(rt.redis.hget(rt.keys.counts, "events")) == 6000
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)


def test_acknowledged_events_survive_a_redis_crash(tmp_path: Path) -> None:
    server = RedisServer(tmp_path / "r").start()
    try:
        r = redis.Redis.from_url(server.url)
        keys = Keys()
        r.set(keys.served("s1"), served_value(time.time(), "q", ["a", "b", "c"]))
        ingest = FeedbackIngest(r, keys, DecisionStore(r, keys, feedback_window_s=3600, reward_wait_s=30,
                                                       grace_s=600, updates_maxlen=100_000))
        acked = []
        for i in range(200):
            res = ingest.ingest([FeedbackEventIn(search_id="s1", track_id="b", position=2, type="click",
                                                 event_id=f"e{i}")])
            acked += res.accepted
        server.stop(kill=True)  # SIGKILL: no shutdown save, only the AOF
        server.start()
        r = redis.Redis.from_url(server.url)
        stored = [f[b"e"] for _, f in r.xrange(keys.feedback_stream)]
        assert len(stored) == len(acked) == 200
        assert all(f'"event_id":"e{i}"'.encode() in stored[i] for i in range(200))
    finally:
        server.stop()


def test_redis_down_feedback_503_search_still_answers_and_both_recover(built_settings, tmp_path: Path) -> None:
    settings, _ = built_settings
    server = RedisServer(tmp_path / "r").start()
    rt = Runtime(settings.model_copy(update={"redis_url": server.url}), start_worker=False)
    client = TestClient(create_app(rt))
    try:
        r = client.get("/search", params={"q": "shape of you"})
        assert r.status_code == 200
        sid, tid = r.json()["search_id"], r.json()["results"][0]["track_id"]
        server.stop(kill=True)
        down = client.get("/search", params={"q": "shape of you"})
        assert down.status_code == 200 and down.json()["results"]
        fb = client.post("/feedback", json={"search_id": sid, "track_id": tid, "position": 1, "type": "click"})
        assert fb.status_code == 503 and fb.headers["retry-after"] == "1"
        assert fb.json()["error"]["code"] == "unavailable"
        health = client.get("/health")
        assert health.status_code == 503 and health.json()["status"] == "degraded"
        assert health.json()["redis"] is False
        server.start()
        r = client.get("/search", params={"q": "bad guy"})
        sid, tid = r.json()["search_id"], r.json()["results"][0]["track_id"]
        fb = client.post("/feedback", json={"search_id": sid, "track_id": tid, "position": 1, "type": "play"})
        assert fb.status_code == 202, fb.text
        health = client.get("/health")
        assert health.status_code == 200 and health.json()["status"] == "ok"
    finally:
        rt.close()
        server.stop()


def test_malformed_oversized_and_hostile_feedback_gets_4xx_and_writes_nothing(service) -> None:
    rt, client = service
    (sid, _, served), = searches(client, 1)
    assert "track_id" in served[0] and served[0]["position"] == 1
    good = {"search_id": sid, **served[0], "type": "click"}
    cases = [
        ("not json", 422), ("[1, 2]", 422), ('{"events": []}', 422), ('{"events": "x"}', 422),
        ({"events": [good] * 1001}, 422),
        ({**good, "type": "purchase"}, 422), ({**good, "search_id": "nope"}, 422),
        ({**good, "search_id": "../../etc/passwd"}, 422), ({**good, "track_id": "notserved"}, 422),
        ({**good, "position": 2}, 422), ({**good, "position": 0}, 422), ({**good, "timestamp": 4e9}, 422),
        ({**good, "timestamp": "yesterday"}, 422), ({**good, "admin": True}, 422),
        ({**good, "event_id": "a b; DROP"}, 422), ({**good, "dwell_ms": -5}, 422),
        ({"events": [good, {**good, "track_id": "zzz"}, {**good, "type": "x"}]}, 422),
    ]
    before = rt.redis.xlen(rt.keys.feedback_stream)
    for body, status in cases:
        kw = {"content": body, "headers": {"content-type": "application/json"}} if isinstance(body, str) \
            else {"json": body}
        r = client.post("/feedback", **kw)
        assert r.status_code == status, (body, r.text)
        err = r.json()["error"]
        assert err["message"] and isinstance(err["details"], list)
    mixed = client.post("/feedback", json={"events": [good, {**good, "track_id": "zzz"}, {**good, "type": "x"}]})
    assert {d["index"] for d in mixed.json()["error"]["details"]} == {1, 2}
    huge = client.post("/feedback", content=b"{" + b" " * 2_000_000 + b"}",
                       headers={"content-type": "application/json"})
    assert huge.status_code == 413
    assert rt.redis.xlen(rt.keys.feedback_stream) == before
    assert client.post("/feedback", json=good).status_code == 202
    assert rt.redis.xlen(rt.keys.feedback_stream) == before + 1


def _mass(rt: Runtime, queries: list[str], arm: str) -> float:
    pipe = rt.pipeline
    policy = rt.policy.current()
    total = 0.0
    for q in queries:
        _, ctx = pipe.context(q, q)
        probs = policy.probabilities(ctx, pipe.actions)
        total += sum(p for a, p in zip(pipe.actions, probs, strict=True) if arm in a.arms)
    return total / len(queries)


def test_bandit_learns_from_clicks_that_one_retriever_alone_finds(built_settings, fresh_redis_state) -> None:
    settings, _ = built_settings
    cfg = settings.model_copy(update={"exploration": "epsilon", "epsilon": 0.5, "checkpoint_every": 10,
                                      "retriever_timeout_ms": 2000,
                                      "reward": settings.reward.model_copy(update={"wait_s": 0.05})})
    rt = Runtime(cfg, start_worker=False)
    # Start from an untrained policy of this test's configuration: the cold-start model was
    # trained with the service default (SquareCB) and would make "before" depend on it.
    from bandit.policy import VWPolicy
    from services.serving.runtime import vw_config

    rt.bandit_store.publish(VWPolicy(vw_config(cfg)), "0-0")
    assert rt.policy.refresh()
    client = TestClient(create_app(rt))
    worker = make_worker(rt)
    try:
        pattern = [f"{w} vibes" for w in ("midnight", "sunday", "summer", "rainy", "road", "study", "winter",
                                          "morning", "beach", "city")]
        # The retriever the cold-start policy likes least for this pattern becomes the only one
        # that finds what users click.
        arm = min(("dense", "xr"), key=lambda a: _mass(rt, pattern, a))
        target = {}
        for q in pattern:
            others = {c.track_id for name, r in rt.pipeline.parts.retrievers.items() if name != arm
                      for c in r.retrieve(q, 100)}
            target[q] = next(c.track_id for c in rt.pipeline.parts.retrievers[arm].retrieve(q, 100)
                             if c.track_id not in others)
        before = _mass(rt, pattern, arm)
        rng = random.Random(0)
        for _ in range(500):
            q = rng.choice(pattern)
            body = client.get("/search", params={"q": q, "limit": 100}).json()
            served = [h["track_id"] for h in body["results"]]
            if target[q] in served:
                r = client.post("/feedback", json={"search_id": body["search_id"], "track_id": target[q],
                                                   "position": served.index(target[q]) + 1, "type": "play"})
                assert r.status_code == 202
            worker.run_once(block_ms=1)
            rt.pipeline.flush()  # the decision and its reward deadline are written after the response
            worker.sweep(time.time() + 1)
            worker.learner.step()
            rt.policy.refresh()
        worker.learner.checkpoint(force=True)
        rt.policy.refresh()
        after = _mass(rt, pattern, arm)
        assert after > before + 0.05, (arm, before, after)
    finally:
        worker.training_log.close()
        rt.close()


def test_feedback_on_another_version_of_a_served_hit_counts_for_that_hit(redis_client) -> None:
    """A page shows one hit per recording and lists the other releases in `versions`: a client
    playing one of those names it, at the hit's position, and the event is recorded on the hit."""
    keys = Keys(prefix=f"ltrr-versions-{uuid.uuid4().hex[:8]}")
    redis_client.set(keys.served("s1"), served_value(time.time(), "q", ["a", "b", "c"]))
    ingest = FeedbackIngest(redis_client, keys, DecisionStore(redis_client, keys, feedback_window_s=3600,
                                                              reward_wait_s=30, grace_s=600,
                                                              updates_maxlen=1000),
                            recording_of={"a": "r1", "b": "r2", "b-live": "r2", "x": "r9"})
    ok = ingest.ingest([FeedbackEventIn(search_id="s1", track_id="b-live", position=2, type="play", event_id="v1")])
    assert ok.accepted == ["v1"]
    stored = [f[b"e"] for _, f in redis_client.xrange(keys.feedback_stream)]
    assert len(stored) == 1 and b'"track_id":"b"' in stored[0]
    # Another recording, or the version at another hit's position, is still refused, and nothing is written.
    for tid, pos in (("x", 2), ("b-live", 1), ("b-live", 9)):
        bad = ingest.ingest([FeedbackEventIn(search_id="s1", track_id=tid, position=pos, type="play")])
        assert bad.errors and not bad.accepted, (tid, pos)
    assert redis_client.xlen(keys.feedback_stream) == 1
