"""Pages of one search (services.serving.routes_pages): later pages come from the ranking the first
page was cut from, keep its search_id, carry absolute positions, and their feedback teaches the
bandit's reward and the click memory. Real indexes, real cold-start models, real Redis, the real
API and worker."""

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
def served(built_settings, fresh_redis_state) -> Iterator[tuple[Runtime, FeedbackWorker, TestClient]]:
    rt = Runtime(built_settings[0], start_worker=False)
    worker = make_worker(rt)
    yield rt, worker, TestClient(create_app(rt), raise_server_exceptions=False)
    worker.training_log.close()
    rt.close()


def test_later_pages_continue_the_same_ranking_without_repeats(served) -> None:
    rt, _, c = served
    first = c.get("/search", params={"q": "summer dance hits", "limit": 10}).json()
    sid = first["search_id"]
    assert first["offset"] == 0 and first["total"] == rt.settings.page_depth
    assert [h["position"] for h in first["results"]] == list(range(1, 11))
    second = c.get(f"/search/{sid}", params={"offset": 10, "limit": 10})
    assert second.status_code == 200, second.text
    body = second.json()
    assert body["search_id"] == sid and body["query"] == "summer dance hits" and body["offset"] == 10
    assert [h["position"] for h in body["results"]] == list(range(11, 21))
    ids1 = [h["track_id"] for h in first["results"]]
    ids2 = [h["track_id"] for h in body["results"]]
    assert not set(ids1) & set(ids2)
    # the same ranking: its scores keep falling across the page boundary
    scores = [h["score"] for h in first["results"] + body["results"]]
    assert scores == sorted(scores, reverse=True)
    # offset 0 of the kept ranking is the first page itself
    again = c.get(f"/search/{sid}", params={"offset": 0, "limit": 10}).json()
    assert [h["track_id"] for h in again["results"]] == ids1
    # one recording per page across pages as well
    recs = {rt.pipeline.recording_of[t] for t in ids1 + ids2}
    assert len(recs) == 20
    # beyond the kept depth: an empty page, not an error
    tail = c.get(f"/search/{sid}", params={"offset": rt.settings.page_depth, "limit": 10}).json()
    assert tail["results"] == [] and tail["total"] == rt.settings.page_depth


def test_feedback_on_a_later_page_names_absolute_positions_and_teaches(served) -> None:
    rt, worker, c = served
    query = "late night jazz piano"
    sid = c.get("/search", params={"q": query}).json()["search_id"]
    hits = c.get(f"/search/{sid}", params={"offset": 10}).json()["results"]
    pick = hits[3]
    assert pick["position"] == 14
    wrong = c.post("/feedback", json={"search_id": sid, "track_id": pick["track_id"], "position": 4, "type": "play"})
    assert wrong.status_code == 422 and "position 14" in wrong.text
    ok = c.post("/feedback", json={"search_id": sid, "track_id": pick["track_id"], "position": 14, "type": "play"})
    assert ok.status_code == 202, ok.text
    unseen = c.get(f"/search/{sid}", params={"offset": 20, "limit": 1}).json()["results"]
    drain(worker, rt)
    learned = {m.track_id for m in rt.q2e_store.learned(query, now=time.time())}
    assert pick["track_id"] in learned
    # the bandit's reward counts it: the play is on a track its chosen retrievers found
    before = int(rt.redis.hget(rt.keys.counts, "rewarded_searches") or 0)
    rt.pipeline.flush()
    assert worker.sweep(time.time() + rt.settings.reward.wait_s + 1) >= 1
    assert int(rt.redis.hget(rt.keys.counts, "rewarded_searches")) > before
    assert unseen  # page 3 exists, but was fetched only now: positions 21.. are served from here on
    late = c.post("/feedback", json={"search_id": sid, "track_id": unseen[0]["track_id"], "position": 21,
                                     "type": "click"})
    assert late.status_code == 202, late.text


def test_a_page_of_a_track_not_shown_refuses_its_feedback(served) -> None:
    rt, _, c = served
    sid = c.get("/search", params={"q": "acoustic covers"}).json()["search_id"]
    ranked = rt.decisions.ranked(sid)
    assert ranked is not None
    never_shown = ranked.ids[30]  # on page 4, which nobody fetched
    r = c.post("/feedback", json={"search_id": sid, "track_id": never_shown, "position": 31, "type": "play"})
    assert r.status_code == 422 and "was not returned" in r.text


@pytest.mark.parametrize(("path", "params", "status"), [
    ("/search/0123456789abcdef0123456789abcdef", {}, 404),  # unknown search
    ("/search/not%20an%20id", {}, 422),
    ("/search/" + "a" * 65, {}, 422),
    ("/search/abc", {"offset": -1}, 422),
    ("/search/abc", {"offset": 100}, 422),
    ("/search/abc", {"limit": 0}, 422),
    ("/search/abc", {"limit": "ten"}, 422),
])
def test_bad_page_requests_are_4xx_and_change_nothing(served, path, params, status) -> None:
    rt, _, c = served
    keys_before = set(rt.redis.keys("*"))
    r = c.get(path, params=params)
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"]
    assert set(rt.redis.keys("*")) == keys_before


def test_a_search_that_logs_nothing_has_no_pages(served) -> None:
    _, _, c = served
    body = c.get("/search", params={"q": "piano", "analytics": "false"}).json()
    assert body["total"] == 0
    assert c.get(f"/search/{body['search_id']}").status_code == 404
