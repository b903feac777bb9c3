"""Artists and albums as results through the real API, real indexes, real Redis and the real
worker: the entity first for an artist or album query, `types`, feedback on an entity (validated
against what was served, exactly once, teaching the reward, the click memory and the ranker's
labels), the decision record, pages and filters."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from bandit.policy import FixedPolicy
from logged.records import JoinedRecord
from logged.rewards import action_reward, found_by
from ranker.labels import build_training_set, cascade_labels
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


def _search(c: TestClient, **params: object) -> dict:
    r = c.get("/search", params=params)
    assert r.status_code == 200, r.text
    return r.json()


def test_an_artist_query_shows_the_artist_first_with_its_top_tracks(served) -> None:
    rt, _, c = served
    for q, match in (("taylor swift", "name"), ("tayler swift", "typo"), ("taylor swift songs", "name")):
        body = _search(c, q=q, limit=10)
        hits = body["results"]
        assert [h["position"] for h in hits] == list(range(1, 11)), q
        first = hits[0]
        assert first["type"] == "artist" and first["entity_id"] == "artist:taylor-swift", q
        assert first["name"] == "Taylor Swift" and first["match"] == match and first["recordings"] > 5
        top = first["top_tracks"]
        assert len(top) == 5 and all(t["artist"].startswith("Taylor Swift") for t in top)
        pops = [rt.catalog.by_id[t["track_id"]].popularity for t in top]
        assert pops == sorted(pops, reverse=True)
        # the rest of the page are tracks, numbered on after the artist
        assert all(h["type"] == "track" for h in hits[1:]), q
    # types=track: today's behaviour, tracks only from position 1
    hits = _search(c, q="taylor swift", types="track", limit=10)["results"]
    assert [h["type"] for h in hits] == ["track"] * 10 and hits[0]["position"] == 1
    # an album by its name, by "<artist> <album>", and with the word "album"
    for q in ("1989", "taylor swift 1989", "1989 album"):
        first = _search(c, q=q, limit=5)["results"][0]
        assert first["type"] == "album" and first["name"] == "1989" and first["artist"] == "Taylor Swift", q
        assert first["year"] and first["top_tracks"], q
    # POST takes types as a list; without track, the hits are artists only
    r = c.post("/search", json={"q": "sad love songs", "types": ["artist"], "limit": 6})
    assert r.status_code == 200, r.text
    hits = r.json()["results"]
    assert len(hits) == 6 and {h["type"] for h in hits} == {"artist"} and {h["match"] for h in hits} == {"tracks"}


def test_a_track_query_gets_no_entity_hit(served) -> None:
    _, _, c = served
    for q in ("sad love songs", "shape of you", "taylor swift love story", "gym rap", "greatest hits"):
        hits = _search(c, q=q, limit=10)["results"]
        assert [h["type"] for h in hits] == ["track"] * 10, q


def test_unknown_types_are_a_422_naming_the_field(served) -> None:
    _, _, c = served
    for params in ({"q": "x", "types": "track,song"}, {"q": "x", "types": ""}, {"q": "x", "types": "artist;album"}):
        r = c.get("/search", params=params)
        assert r.status_code == 422, params
        assert [d["field"] for d in r.json()["error"]["details"]] == ["types"], r.text
    for types in (["podcast"], [], "artist", ["track"] * 4):
        r = c.post("/search", json={"q": "x", "types": types})
        assert r.status_code == 422, types
        assert r.json()["error"]["details"][0]["field"] == "types", r.text
    # The GET parameter's published pattern names the kinds; the body's message names the bad one.
    message = c.get("/search", params={"q": "x", "types": "song"}).json()["error"]["message"]
    assert all(k in message for k in ("track", "artist", "album")), message
    assert "podcast" in c.post("/search", json={"q": "x", "types": ["podcast"]}).json()["error"]["message"]
    # A repeated kind is allowed by the schema and asks for nothing more.
    for got in (c.get("/search", params={"q": "taylor swift", "types": "artist, artist"}),
                c.post("/search", json={"q": "taylor swift", "types": ["artist", "artist"]})):
        assert got.status_code == 200, got.text
        assert {h["type"] for h in got.json()["results"]} == {"artist"}


def test_feedback_on_an_entity_counts_like_a_play_of_its_top_track(served) -> None:
    rt, worker, c = served
    # A fixed action, so the reward's expectation does not depend on the bandit's draw.
    rt.policy.set(FixedPolicy(("lexical",)), "fixed")
    query = "tayler swift"
    body = _search(c, q=query, limit=10, user_id="fan")
    sid, artist = body["search_id"], body["results"][0]
    assert artist["entity_id"] == "artist:taylor-swift"
    top = [t["track_id"] for t in artist["top_tracks"]]
    base = {"search_id": sid, "entity_id": artist["entity_id"], "position": 1, "user_id": "fan"}

    bad = [({**base, "position": 2}, "position"), ({**base, "track_id": body["results"][1]["track_id"]}, "track_id"),
           ({**base, "entity_id": "artist:queen"}, "entity_id"), ({**base, "entity_id": "artist"}, "entity_id"),
           ({"search_id": sid, "position": 1}, "track_id")]
    before = rt.redis.xlen(rt.keys.feedback_stream)
    for event, field in bad:
        r = c.post("/feedback", json={**event, "type": "play"})
        assert r.status_code == 422, event
        assert r.json()["error"]["details"][0]["field"] == field, r.text
    assert rt.redis.xlen(rt.keys.feedback_stream) == before  # nothing written

    play = {**base, "event_id": "ent-play-1", "type": "play"}
    assert c.post("/feedback", json=play).status_code == 202
    assert c.post("/feedback", json=play).status_code == 202  # a client's retry: same event id
    like = {**base, "event_id": "ent-like-1", "type": "like", "track_id": top[2]}
    assert c.post("/feedback", json=like).status_code == 202
    stream = [json.loads(f[b"e"]) for _, f in rt.redis.xrange(rt.keys.feedback_stream)][before:]
    assert [(e["entity_id"], e["track_id"], e["position"]) for e in stream] == \
        [("artist:taylor-swift", top[0], 1)] * 2 + [("artist:taylor-swift", top[2], 1)]

    drain(worker, rt)
    counts = {k.decode(): int(v) for k, v in rt.redis.hgetall(rt.keys.counts).items()}
    assert counts["play"] == 1 and counts["like"] == 1 and counts["events"] == 2  # the retry counted once
    learned = {m.track_id: m for m in rt.q2e_store.learned(query, now=time.time())}
    assert {top[0], top[2]} <= set(learned)  # the click memory: this query -> those tracks
    assert learned[top[0]].positives == pytest.approx(1.0, abs=0.05)
    assert rt.redis.hgetall(rt.keys.user_genres("fan"))  # the user's affinity, from the track's genres

    # The reward (logged.rewards, the one definition): the played top track among what the
    # chosen retriever found.
    assert worker.sweep(time.time() + rt.settings.reward.wait_s + 1) >= 1
    updates = [json.loads(f[b"u"])["record"] for _, f in rt.redis.xrange(rt.keys.bandit_updates)]
    joined = JoinedRecord.model_validate(next(u for u in updates if u["search_id"] == sid))
    assert top[0] in found_by(joined, ("lexical",), joined.actions[joined.chosen].budget)
    assert joined.reward == 1.0 == action_reward(joined, joined.actions[joined.chosen], joined.events,
                                                 rt.settings.reward)
    assert joined.entities[0].entity_id == "artist:taylor-swift" and joined.entities[0].tracks == top
    assert joined.page()[0] == "artist:taylor-swift" and joined.page()[1:] == joined.served
    assert {e.entity_id for e in joined.events} == {"artist:taylor-swift"}

    # The ranker's labels: the played top track's row is a positive wherever it was ranked, and the
    # tracks the user was not seen to read stay unlabelled (the entity sits above them).
    data, stats = build_training_set([joined.model_dump()], joined.feature_names)
    assert stats.groups == 1 and data.y.max() == 3
    labels = cascade_labels(joined.served, joined.events)
    for i, tid in enumerate(joined.served):
        assert labels[i] == {top[0]: 3, top[2]: 2}.get(tid), (i, tid)
    ranked = set(joined.served) | set(joined.sampled)
    assert sorted(data.y.tolist(), reverse=True)[:2] == [3, 2][: len({top[0], top[2]} & ranked)]


def test_the_decision_record_says_what_was_served_entities_included(served) -> None:
    rt, _, c = served
    body = _search(c, q="taylor swift", limit=5)
    raw = rt.redis.get(rt.keys.decision(body["search_id"]))
    rec = JoinedRecord.model_validate_json(raw)
    assert rec.types == ["track", "artist", "album"]
    assert [(e.entity_id, e.kind, e.position, e.match) for e in rec.entities] == \
        [("artist:taylor-swift", "artist", 1, "name")]
    assert rec.entities[0].tracks == [t["track_id"] for t in body["results"][0]["top_tracks"]]
    assert rec.served == [h["track_id"] for h in body["results"][1:]]
    assert len(rec.features) == len(rec.served) == 4
    assert rec.page() == [body["results"][0]["entity_id"], *rec.served]
    # A search asking for tracks only logs them so.
    body = _search(c, q="taylor swift", limit=5, types="track")
    rec = JoinedRecord.model_validate_json(rt.redis.get(rt.keys.decision(body["search_id"])))
    assert rec.types == ["track"] and rec.entities == [] and len(rec.served) == 5


def test_pages_keep_absolute_positions_with_entities(served) -> None:
    rt, worker, c = served
    first = _search(c, q="taylor swift", limit=4)
    sid = first["search_id"]
    assert [h["type"] for h in first["results"]] == ["artist", "track", "track", "track"]
    page = c.get(f"/search/{sid}", params={"offset": 4, "limit": 4}).json()
    assert [h["position"] for h in page["results"]] == [5, 6, 7, 8]
    seen = {h.get("track_id") for h in first["results"]}
    assert not seen & {h["track_id"] for h in page["results"]}
    again = c.get(f"/search/{sid}", params={"offset": 0, "limit": 2}).json()["results"]
    assert again[0]["entity_id"] == "artist:taylor-swift"
    assert again[0]["top_tracks"] == first["results"][0]["top_tracks"]
    assert again[1]["track_id"] == first["results"][1]["track_id"]

    # Artists only: every page is artists, numbered on; feedback on the 7th names position 7.
    body = c.post("/search", json={"q": "summer dance hits", "types": ["artist"], "limit": 5}).json()
    sid = body["search_id"]
    page = c.get(f"/search/{sid}", params={"offset": 5, "limit": 5}).json()["results"]
    assert [h["position"] for h in page] == [6, 7, 8, 9, 10] and {h["type"] for h in page} == {"artist"}
    names = {h["entity_id"] for h in body["results"]}
    assert not names & {h["entity_id"] for h in page}
    pick = page[1]
    wrong = c.post("/feedback", json={"search_id": sid, "entity_id": pick["entity_id"], "position": 2, "type": "play"})
    assert wrong.status_code == 422 and "position 7" in wrong.text
    unseen = c.post("/feedback", json={"search_id": sid, "entity_id": body["results"][0]["entity_id"],
                                       "position": 1, "type": "play"})
    assert unseen.status_code == 202
    ok = c.post("/feedback", json={"search_id": sid, "entity_id": pick["entity_id"], "position": 7, "type": "play",
                                   "track_id": pick["top_tracks"][-1]["track_id"]})
    assert ok.status_code == 202, ok.text
    drain(worker, rt)
    learned = {m.track_id for m in rt.q2e_store.learned("summer dance hits", now=time.time())}
    assert {pick["top_tracks"][-1]["track_id"], body["results"][0]["top_tracks"][0]["track_id"]} <= learned


def test_a_filter_narrows_an_entity_hit_to_the_tracks_it_allows(served) -> None:
    rt, _, c = served
    hits = _search(c, q="taylor swift", year_from=2019, limit=5)["results"]
    assert hits[0]["type"] == "artist"
    assert all((rt.catalog.by_id[t["track_id"]].year or 0) >= 2019 for t in hits[0]["top_tracks"])
    assert all(h["year"] >= 2019 for h in hits[1:])


def test_openapi_documents_types_and_entity_hits(served) -> None:
    _, _, c = served
    spec = c.get("/openapi.json").json()
    params = {p["name"] for p in spec["paths"]["/search"]["get"]["parameters"]}
    assert "types" in params
    schemas = spec["components"]["schemas"]
    assert {"EntityHit", "TopTrack"} <= set(schemas)
    assert "entity_id" in schemas["FeedbackEventIn"]["properties"]
    assert "types" in schemas["SearchRequest"]["properties"]
