"""Q2E memory index: cold start from the real catalog, learning from feedback, idempotency,
time decay, durability across a redis-server restart, and parity of the two stores."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import pytest
import redis

from retrievers.base import Retriever
from retrievers.pseudo_queries import generate_all
from retrievers.q2e import (
    MemoryQ2EStore,
    Q2EConfig,
    Q2EEvent,
    Q2ERetriever,
    Q2EStore,
    RedisQ2EStore,
    posterior,
    seed_fingerprint,
)
from services.redis_server import RedisServer

WEEKND_BLINDING_LIGHTS = "0sf12qNH5qcw8qpgymFOqD"
SEEDED_DB = 1  # the per-test `redis_client` fixture flushes db 0; the shared seeded store lives in db 1
HOUR = 3600.0


@pytest.fixture(scope="module")
def pairs(documents) -> list[tuple[str, str, float]]:
    return [(p.query, p.doc_id, p.score) for p in generate_all(documents)]


@pytest.fixture(scope="module")
def seeded_redis(redis_server: RedisServer, documents, pairs) -> Q2ERetriever:
    """Cold-start Q2E on the real catalog in Redis, order-insensitive lookups on. Seeded once;
    tests that write to it use query strings of their own."""
    client = redis.Redis(host="127.0.0.1", port=redis_server.port, db=SEEDED_DB)
    client.flushdb()
    store = RedisQ2EStore(client, Q2EConfig(order_insensitive=True), prefix="t")
    store.seed(pairs, version=seed_fingerprint(documents, store.config))
    yield Q2ERetriever(store)
    client.flushdb()
    client.close()


@pytest.fixture(scope="module")
def seeded_memory(documents) -> Q2ERetriever:
    r = Q2ERetriever(MemoryQ2EStore(Q2EConfig(order_insensitive=False)))
    r.build(documents)
    return r


@pytest.fixture(params=["memory", "redis"])
def empty_store(request: pytest.FixtureRequest) -> Q2EStore:
    """An unseeded store of each kind, for the feedback logic."""
    if request.param == "memory":
        return MemoryQ2EStore()
    client = request.getfixturevalue("redis_client")
    return RedisQ2EStore(client, prefix="q2e")


def ids(cands) -> list[str]:
    return [c.track_id for c in cands]


def same(a, b) -> bool:
    """Same ranking and scores up to the decay of the seconds between the two lookups."""
    return ids(a) == ids(b) and [c.score for c in a] == pytest.approx([c.score for c in b], rel=1e-5)


# --- cold start ---------------------------------------------------------------------------


def test_implements_retriever_protocol(seeded_memory: Q2ERetriever) -> None:
    assert isinstance(seeded_memory, Retriever)
    assert seeded_memory.name == "q2e"


@pytest.mark.parametrize("which", ["seeded_memory", "seeded_redis"])
@pytest.mark.parametrize("query", ["Blinding Lights", "the weeknd blinding lights", "Blinding Lights - The Weeknd",
                                   "THE WEEKND — BLINDING LIGHTS"])
def test_cold_start_finds_the_track(request: pytest.FixtureRequest, which: str, query: str) -> None:
    r: Q2ERetriever = request.getfixturevalue(which)
    got = r.retrieve(query, 10)
    assert got and got[0].track_id == WEEKND_BLINDING_LIGHTS
    assert got[0].rank == 1 and 0 < got[0].score <= 1
    assert [c.score for c in got] == sorted((c.score for c in got), reverse=True)


def test_order_swapped_needs_order_insensitive(seeded_memory: Q2ERetriever, seeded_redis: Q2ERetriever) -> None:
    swapped = "lights weeknd blinding the"
    assert seeded_memory.retrieve(swapped, 10) == []  # exact-key memory does not guess
    assert ids(seeded_redis.retrieve(swapped, 10))[0] == WEEKND_BLINDING_LIGHTS
    st = seeded_redis.stats(swapped)
    assert st.hit and st.query in {"the weeknd blinding lights", "blinding lights the weeknd"}


def test_cold_start_sample_of_catalog(seeded_redis: Q2ERetriever, documents) -> None:
    """For a random sample of real tracks, "artist title" puts the track among the tracks that
    share the same normalized artist + title (duplicates across albums are real)."""
    pseudo = {}
    for p in generate_all(documents):
        if p.template == "artist_title":
            pseudo.setdefault(p.query, set()).add(p.doc_id)
    rng = random.Random(7)
    sample = rng.sample(sorted(pseudo), 200)
    got = seeded_redis.retrieve_batch(sample, 20)
    for q, cands in zip(sample, got, strict=True):
        top = ids(cands)[: len(pseudo[q])]
        assert set(top) == pseudo[q], q


def test_broad_query_prefers_popular_tracks(seeded_redis: Q2ERetriever, documents) -> None:
    pop = {d.doc_id: d.popularity for d in documents}
    got = seeded_redis.retrieve("the weeknd", 20)
    assert len(got) == 20
    assert pop[got[0].track_id] >= max(pop[c.track_id] for c in got)


def test_hostile_queries_never_raise(seeded_redis: Q2ERetriever, seeded_memory: Q2ERetriever) -> None:
    hostile = ["", "   ", "x" * 10_000, "a " * 5000, "\x00\x01\t\n", "' OR 1=1 --", "*", "[", "%s%n", "🎵🎵",
               "t:z:pop", "\\", "naïve café ß", "..", "end\nlocal x"]
    for r in (seeded_redis, seeded_memory):
        for q in hostile:
            assert isinstance(r.retrieve(q, 10), list)
            assert isinstance(r.stats(q).hit, bool)
        assert r.retrieve("blinding lights", 0) == []
        assert r.retrieve_batch([*hostile, "blinding lights"], 5)[-1][0].track_id == WEEKND_BLINDING_LIGHTS


def test_build_skips_identical_reseed_and_keeps_evidence(redis_client: redis.Redis, documents) -> None:
    docs = documents[:300]
    r = Q2ERetriever(RedisQ2EStore(redis_client, prefix="b"))
    assert r.build(docs) > 0
    assert r.build(docs) == 0  # same catalog: a restarted service does not reseed
    q = "the weeknd blinding lights"
    tid = r.retrieve(generate_all(docs)[0].query, 1)[0].track_id
    r.apply_events([Q2EEvent(f"b{i}", q, tid, "click", time.time()) for i in range(5)])
    before = r.scores(q, [tid])[tid]
    assert r.build(docs, force=True) > 0
    assert r.scores(q, [tid])[tid] == pytest.approx(before, rel=1e-6)  # reseeding kept the evidence


# --- learning ---------------------------------------------------------------------------


def test_clicks_make_track_rank_one_immediately(seeded_redis: Q2ERetriever, documents) -> None:
    target = next(d for d in documents if d.fields["artist"] == "The Weeknd" and d.doc_id != WEEKND_BLINDING_LIGHTS)
    q = "gym hype 2019"
    assert seeded_redis.retrieve(q, 10) == []
    n = seeded_redis.apply_events([Q2EEvent("gym-1", q, target.doc_id, "click", time.time())])
    assert n == 1
    got = seeded_redis.retrieve(q, 10)
    assert ids(got) == [target.doc_id]
    st = seeded_redis.stats(q)
    assert st.hit and st.events == 1 and st.tracks_with_evidence == 1 and st.evidence == pytest.approx(1, rel=1e-3)

    # At a seeded broad query the prediction is overridden by enough evidence.
    broad = "the weeknd"
    before = ids(seeded_redis.retrieve(broad, 50))
    assert before[0] != target.doc_id
    now = time.time()
    seeded_redis.apply_events([Q2EEvent(f"tw-{i}", broad, target.doc_id, t, now)
                               for i, t in enumerate(["click", "play", "like", "click", "play"])])
    assert ids(seeded_redis.retrieve(broad, 50))[0] == target.doc_id


def test_skips_and_unclicked_impressions_lower_a_score(empty_store: Q2EStore) -> None:
    r = Q2ERetriever(empty_store)
    empty_store.seed([("dua lipa levitating", "lev", 0.9), ("dua lipa levitating", "lev-remix", 0.5)])
    q, now = "Dua Lipa Levitating", time.time()
    s0 = r.scores(q, ["lev"])["lev"]
    assert s0 == pytest.approx(0.9)
    r.apply_events([Q2EEvent("s1", q, "lev", "skip", now)])
    s1 = r.scores(q, ["lev"])["lev"]
    assert s1 < s0
    assert r.impressions(q, ["lev", "lev-remix"], "search-1", ts=now)
    s2 = r.scores(q, ["lev"])["lev"]
    assert s2 < s1
    assert r.scores(q, ["lev-remix"])["lev-remix"] < 0.5
    for i in range(20):
        r.apply_events([Q2EEvent(f"s-more-{i}", q, "lev", "skip", now)])
    assert ids(r.retrieve(q, 2)) == ["lev-remix", "lev"]


def test_time_decay_returns_to_the_prior(empty_store: Q2EStore) -> None:
    cfg = empty_store.config
    q, t0 = "decay test", 1_700_000_000.0
    empty_store.seed([(q, "a", 0.2), (q, "b", 0.3)])
    empty_store.apply_events([Q2EEvent(f"d{i}", q, "a", "click", t0) for i in range(10)], now=t0)
    fresh = dict(empty_store.lookup(q, 2, now=t0))
    assert fresh["a"] > fresh["b"]
    later = dict(empty_store.lookup(q, 2, now=t0 + 3 * cfg.half_life_s))
    assert fresh["a"] > later["a"] > 0.2
    much_later = empty_store.lookup(q, 2, now=t0 + 40 * cfg.half_life_s)
    assert much_later[0][0] == "b"  # the evidence is gone; predictions rank again
    assert dict(much_later)["a"] == pytest.approx(0.2, abs=1e-6)
    assert empty_store.stats(q, now=t0 + cfg.half_life_s).evidence == pytest.approx(5.0, rel=1e-6)
    assert empty_store.stats(q, now=t0 + cfg.half_life_s).events == 10  # raw count does not decay


def test_old_events_count_less_and_order_does_not_matter(empty_store: Q2EStore) -> None:
    hl = empty_store.config.half_life_s
    t = 1_700_000_000.0
    events = [Q2EEvent("o1", "order", "x", "click", t), Q2EEvent("o2", "order", "x", "click", t - hl),
              Q2EEvent("o3", "order", "x", "skip", t - 2 * hl)]
    empty_store.apply_events(list(reversed(events)), now=t)
    st = empty_store.track_stats("order", "x")
    assert st is not None
    assert st.clicks == pytest.approx(1.5) and st.skips == pytest.approx(0.25)
    other = MemoryQ2EStore(empty_store.config)
    other.apply_events(events, now=t)
    assert other.track_stats("order", "x").clicks == pytest.approx(st.clicks)


def test_future_timestamps_are_clamped(empty_store: Q2EStore) -> None:
    now = time.time()
    empty_store.apply_events([Q2EEvent("f1", "future", "x", "click", now + 10 * 365 * 86400)], now=now)
    assert empty_store.track_stats("future", "x").ts <= now + 61


def test_unknown_event_type_rejects_the_whole_batch(empty_store: Q2EStore) -> None:
    good = Q2EEvent("g1", "q", "x", "click", time.time())
    with pytest.raises(ValueError, match="unknown Q2E event type"):
        empty_store.apply_events([good, Q2EEvent("g2", "q", "x", "purchase", time.time())])
    assert empty_store.stats("q").events == 0


# --- idempotency --------------------------------------------------------------------------


def test_redelivered_event_is_not_double_counted(empty_store: Q2EStore) -> None:
    now = time.time()
    batch = [Q2EEvent("e1", "gym hype 2019", "t1", "click", now), Q2EEvent("e2", "gym hype 2019", "t1", "play", now),
             Q2EEvent("e1", "gym hype 2019", "t1", "click", now)]  # duplicate inside the batch too
    assert empty_store.apply_events(batch) == 2
    assert empty_store.apply_events(batch) == 0
    assert empty_store.apply_events(batch[:1]) == 0
    st = empty_store.track_stats("gym hype 2019", "t1")
    assert st.clicks == pytest.approx(1, rel=1e-6) and st.plays == pytest.approx(1, rel=1e-6)
    assert empty_store.stats("gym hype 2019").events == 2
    assert empty_store.impressions("gym hype 2019", ["t1", "t2"], "sid-1")
    assert not empty_store.impressions("gym hype 2019", ["t1", "t2"], "sid-1")
    assert empty_store.track_stats("gym hype 2019", "t1").impressions == pytest.approx(1, rel=1e-6)
    assert empty_store.stats("gym hype 2019").impressions == 1


def test_concurrent_redelivery_applies_once(redis_client: redis.Redis) -> None:
    now = time.time()
    events = [Q2EEvent(f"c{i}", "concurrent", f"t{i % 5}", "click", now) for i in range(200)]
    applied: list[int] = []

    def worker() -> None:
        store = RedisQ2EStore(redis.Redis(connection_pool=redis_client.connection_pool))
        applied.append(sum(store.apply_events(events[i:i + 10]) for i in range(0, len(events), 10)))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(applied) == 200
    store = RedisQ2EStore(redis_client)
    assert store.stats("concurrent").events == 200
    assert sum(store.track_stats("concurrent", f"t{i}").clicks for i in range(5)) == pytest.approx(200, rel=1e-6)


# --- parity and persistence -----------------------------------------------------------------


def test_memory_and_redis_stores_agree(redis_client: redis.Redis) -> None:
    cfg = Q2EConfig(order_insensitive=True, half_life_s=HOUR)
    mem, red = MemoryQ2EStore(cfg), RedisQ2EStore(redis_client, cfg, prefix="par")
    rng = random.Random(3)
    queries = ["rock anthems", "anthems rock", "chill beats", "road trip", "late night drive"]
    tracks = [f"t{i:02d}" for i in range(30)]
    seed = [(q, t, round(rng.random(), 3)) for q in queries[:3] for t in rng.sample(tracks, 12)]
    for s in (mem, red):
        s.seed(seed)
    t0 = 1_700_000_000.0
    for step in range(300):
        now = t0 + step * 60.0
        q, t = rng.choice(queries), rng.choice(tracks)
        if rng.random() < 0.3:
            shown = rng.sample(tracks, 5)
            assert mem.impressions(q, shown, f"s{step}", ts=now) == red.impressions(q, shown, f"s{step}", ts=now)
        else:
            ev = [Q2EEvent(f"e{step}", q, t, rng.choice(["click", "play", "like", "add_to_favorites", "skip"]),
                           now - rng.random() * HOUR)]
            assert mem.apply_events(ev, now=now) == red.apply_events(ev, now=now) == 1
    now = t0 + 400 * 60.0
    for q in [*queries, "road night", "missing"]:
        a, b = mem.lookup(q, 20, now=now), red.lookup(q, 20, now=now)
        assert [x[0] for x in a] == [x[0] for x in b], q
        assert [x[1] for x in a] == pytest.approx([x[1] for x in b], rel=1e-7)
        sa, sb = mem.stats(q, now=now), red.stats(q, now=now)
        assert (sa.hit, sa.query, sa.tracks, sa.tracks_with_evidence, sa.events, sa.impressions) == \
               (sb.hit, sb.query, sb.tracks, sb.tracks_with_evidence, sb.events, sb.impressions)
        assert sa.evidence == pytest.approx(sb.evidence, rel=1e-9)
    st = red.track_stats("road trip", tracks[0]) or red.track_stats("chill beats", tracks[0])
    if st is not None:
        assert 0 < posterior(st, cfg) < 1


def test_lookup_with_many_evidence_pairs_uses_window(redis_client: redis.Redis) -> None:
    cfg = Q2EConfig(max_exact_evidence=8)
    red, mem = RedisQ2EStore(redis_client, cfg, prefix="win"), MemoryQ2EStore(cfg)
    now = time.time()
    for s in (red, mem):
        s.seed([("big", f"t{i:03d}", i / 1000) for i in range(200)])
        s.apply_events([Q2EEvent(f"w{i}", "big", f"t{i:03d}", "click", now) for i in range(0, 200, 10)], now=now)
    assert [x[0] for x in red.lookup("big", 10, now=now)] == [x[0] for x in mem.lookup("big", 10, now=now)]


def test_memory_retriever_save_load(tmp_path: Path) -> None:
    r = Q2ERetriever(MemoryQ2EStore(Q2EConfig(order_insensitive=True)))
    r.store.seed([("the weeknd blinding lights", "bl", 0.9)], version="v1")
    r.apply_events([Q2EEvent("m1", "gym hype 2019", "bl", "click", time.time())])
    r.save(tmp_path / "q2e")
    back = Q2ERetriever.load(tmp_path / "q2e")
    assert back.config == r.config and back.store.seed_version() == "v1"
    for q in ["blinding lights the weeknd", "gym hype 2019"]:
        assert same(back.retrieve(q, 5), r.retrieve(q, 5))
    # Seen event ids are not part of a memory snapshot: the in-memory store is not the durable one.
    assert back.apply_events([Q2EEvent("m1", "gym hype 2019", "bl", "click", time.time())]) == 1


def test_redis_q2e_survives_redis_restart(tmp_path: Path, documents) -> None:
    data = tmp_path / "redis"
    cfg = Q2EConfig(order_insensitive=True)
    server = RedisServer(data, appendfsync="always").start()
    try:
        client = redis.Redis.from_url(server.url)
        r = Q2ERetriever(RedisQ2EStore(client, cfg, prefix="dur"))
        r.build(documents[:500])
        now = time.time()
        target = documents[123].doc_id
        assert r.apply_events([Q2EEvent(f"r{i}", "gym hype 2019", target, "click", now) for i in range(3)]) == 3
        assert r.impressions("gym hype 2019", [target, documents[7].doc_id], "sid-dur")
        before = r.retrieve("gym hype 2019", 5), r.stats("gym hype 2019"), r.retrieve("blinding lights", 5)
        r.save(tmp_path / "manifest")
        client.close()
    finally:
        server.stop()

    server = RedisServer(data, appendfsync="always").start()  # a new process, new port, same AOF
    try:
        client = redis.Redis.from_url(server.url)
        back = Q2ERetriever.load(tmp_path / "manifest", client=client)
        after = back.retrieve("gym hype 2019", 5), back.stats("gym hype 2019"), back.retrieve("blinding lights", 5)
        assert same(after[0], before[0]) and same(after[2], before[2])
        assert after[1].events == 3 and after[1].impressions == 1
        assert back.build(documents[:500]) == 0  # seeding version survived: no reseed after restart
        # Idempotency markers survived too: a redelivery after the restart is still a duplicate.
        assert back.apply_events([Q2EEvent("r0", "gym hype 2019", target, "click", now)]) == 0
        client.close()
    finally:
        server.stop()
