"""Redis memory per search is bounded (issue: reliability, item 9): a search's full decision lives
until its reward, its ~0.7 kB served record for the feedback window, the bandit's updates stream
only until the learner has checkpointed them — and feedback still works across all of it.
Real Redis, the real API and worker."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from services.learning.worker import FeedbackWorker
from services.serving.api import create_app
from services.serving.runtime import Runtime
from tests.test_feedback import drain, make_worker


@pytest.fixture()
def served(built_settings, fresh_redis_state) -> Iterator[tuple[Runtime, FeedbackWorker]]:
    """A runtime on the built data dir and a worker the test drives itself."""
    rt = Runtime(built_settings[0], start_worker=False)
    worker = make_worker(rt)
    yield rt, worker
    worker.training_log.close()
    rt.close()


def test_a_search_keeps_its_full_decision_only_until_its_reward(served) -> None:
    rt, worker = served
    settings, r, keys = rt.settings, rt.redis, rt.keys
    client = TestClient(create_app(rt))
    body = client.get("/search", params={"q": "sad love songs", "limit": 10}).json()
    sid, shown = body["search_id"], [h["track_id"] for h in body["results"]]
    assert r.exists(keys.served(sid))  # what /feedback validates against is there when the response is
    rt.pipeline.flush()  # the full decision follows on the writer's thread
    decision_ttl = r.ttl(keys.decision(sid))
    assert 0 < decision_ttl <= settings.reward.wait_s + settings.decision_grace_s
    assert settings.decision_ttl_s - 5 <= r.ttl(keys.served(sid)) <= settings.decision_ttl_s
    full, small = r.strlen(keys.decision(sid)), r.strlen(keys.served(sid))
    assert small * 5 < full, (small, full)  # the served record is what stays for an hour

    ok = client.post("/feedback", json={"search_id": sid, "track_id": shown[3], "position": 4, "type": "play"})
    assert ok.status_code == 202
    drain(worker, rt)
    assert r.exists(keys.decision(sid))  # its reward wait is not over yet
    before = int(r.hget(keys.counts, "rewarded_searches") or 0)
    assert worker.sweep(time.time() + settings.reward.wait_s + 1) == 1
    assert worker.sweep(time.time() + settings.reward.wait_s + 1) == 0  # rewarded once
    assert int(r.hget(keys.counts, "rewarded_searches")) == before + 1
    assert not r.exists(keys.decision(sid)) and not r.exists(keys.search_events(sid))
    assert r.exists(keys.served(sid))

    # A play after the reward: still accepted, still taught to the click memory (which only
    # needs what was served for which query), and the reward is not paid twice.
    late = client.post("/feedback", json={"search_id": sid, "track_id": shown[5], "position": 6, "type": "play"})
    assert late.status_code == 202
    drain(worker, rt)
    learned = {m.track_id for m in rt.q2e_store.learned("sad love songs", now=time.time())}
    assert {shown[3], shown[5]} <= learned
    assert worker.sweep(time.time() + settings.reward.wait_s + 1) == 0
    assert int(r.hget(keys.counts, "rewarded_searches")) == before + 1


def test_a_due_search_whose_decision_expired_is_dropped(served) -> None:
    rt, worker = served
    out = rt.pipeline.search("gym rap", 10)
    rt.pipeline.flush()
    rt.redis.delete(rt.keys.decision(out.record.search_id))  # as if it outlived reward wait + grace
    assert worker.sweep(time.time() + rt.settings.reward.wait_s + 1) == 0
    assert rt.redis.zscore(rt.keys.pending, out.record.search_id) is None


def test_the_updates_stream_is_trimmed_to_what_a_restart_could_need(served) -> None:
    rt, worker = served
    settings, learner = rt.settings, worker.learner
    stream = rt.keys.bandit_updates
    for i in range(5):
        for q in ("rainy day", "road trip", "workout"):
            rt.pipeline.search(f"{q} {i}", 10)
        rt.pipeline.flush()
        assert worker.sweep(time.time() + settings.reward.wait_s + 1) == 3
        learner.step()
        learner.checkpoint(force=True)
    # The last three checkpoints stay resumable: everything from the oldest of them on is
    # still in the stream, everything before it is gone.
    kept = list(learner.checkpointed)
    assert len(kept) == 3
    ids = [eid.decode() for eid, _ in rt.redis.xrange(stream)]
    assert ids[0] == kept[0] and ids[-1] == learner.last_id
    assert len(ids) == 1 + 2 * 3


def test_the_full_decision_follows_the_response_and_a_closing_writer_writes_what_is_queued(served) -> None:
    """services.serving.decision_writer: what /feedback and later pages need is in Redis when the
    search returns; the full record and its reward deadline follow (a search is never pending
    without its decision); close() writes every queued record; a submit after close writes at once."""
    from services.serving.decision_writer import DecisionWriter

    rt, _ = served
    r, keys = rt.redis, rt.keys
    out = rt.pipeline.search("writer test query", 10)
    sid = out.record.search_id
    assert r.exists(keys.served(sid)) and r.exists(keys.ranked(sid))
    assert rt.pipeline.flush()
    assert r.exists(keys.decision(sid)) and r.zscore(keys.pending, sid) is not None
    writer = DecisionWriter(r, rt.pipeline.decisions, None, None, max_pending=16)
    records = [out.record.model_copy(update={"search_id": f"writer-{i}"}) for i in range(200)]
    for rec in records:  # more than max_pending: submit waits for room, nothing is dropped
        writer.submit(rec, {}, time.time())
    writer.close()
    assert all(r.exists(keys.decision(rec.search_id)) and r.zscore(keys.pending, rec.search_id) is not None
               for rec in records)
    late = out.record.model_copy(update={"search_id": "writer-late"})
    writer.submit(late, {}, time.time())
    assert r.exists(keys.decision("writer-late"))
    for rec in [*records, late]:
        r.zrem(keys.pending, rec.search_id)
        r.delete(keys.decision(rec.search_id))
