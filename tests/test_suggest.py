"""GET /suggest through a real FastAPI app with the real router, a real Redis (session lists) and
a real PECOS model trained here on the catalog's 1,500 most popular tracks."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import redis
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.testclient import TestClient

from retrievers.text import normalize
from services.catalog import Catalog
from services.config import Settings
from services.keys import Keys
from services.serving.api import _error, _loc
from services.serving.routes_suggest import suggest_router
from services.serving.suggest_service import (
    SuggestService,
    build_model,
    load_suggest,
    read_logged,
    save_model,
    suggest_store,
    title_text,
)
from suggest import PopularityTrie, SuggestModel, clean_prefix
from suggest.prefix import prefix_match

pytestmark = pytest.mark.slow


class Runtime:
    def __init__(self, service: SuggestService | None, client: redis.Redis | None) -> None:
        self.suggest, self.redis, self.keys = service, client, Keys()


def make_app(runtime: Runtime) -> FastAPI:
    app = FastAPI()

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        # The project's handler (services/serving/api.py create_app), built from the same helpers.
        details = [{"field": _loc(tuple(e["loc"])), "message": e["msg"].removeprefix("Value error, ")}
                   for e in exc.errors()]
        return _error(422, "validation_error", "; ".join(f"{d['field']}: {d['message']}" for d in details), details)

    app.include_router(suggest_router(runtime))
    return app


@pytest.fixture(scope="module")
def small_catalog(catalog: Catalog) -> Catalog:
    return Catalog(sorted(catalog.tracks, key=lambda t: -t.popularity)[:1500])


@pytest.fixture(scope="module")
def model(small_catalog: Catalog) -> SuggestModel:
    return build_model(small_catalog)


@pytest.fixture()
def client(model: SuggestModel, redis_client: redis.Redis) -> TestClient:
    return TestClient(make_app(Runtime(SuggestService(model, "v0001"), redis_client)))


def top_artist(cat: Catalog) -> str:
    counts: dict[str, int] = {}
    for t in cat.tracks:
        counts[normalize(t.artist)] = counts.get(normalize(t.artist), 0) + 1
    return max(sorted(counts), key=counts.__getitem__)


def get(client: TestClient, **params: object) -> dict:
    r = client.get("/suggest", params=params)
    assert r.status_code == 200, r.text
    return r.json()


def test_artist_prefix_returns_the_artist(client: TestClient, small_catalog: Catalog) -> None:
    artist = top_artist(small_catalog)
    body = get(client, prefix=artist[:4].upper(), limit=5)  # case and accents fold like /search
    hits = [s for s in body["suggestions"] if s["text"] == artist]
    assert hits, body
    assert hits[0]["kind"] == "artist" and hits[0]["entity_id"] is None


def test_suggestions_extend_the_prefix(client: TestClient, small_catalog: Catalog) -> None:
    rng = random.Random(0)
    titles = [title_text(t) for t in rng.sample(small_catalog.tracks, 30)]
    for title in titles:
        for n in (1, 2, 3):
            prefix = title[:n]
            body = get(client, prefix=prefix, limit=10)
            assert body["suggestions"], prefix
            assert all(s["text"].startswith(normalize(prefix)) for s in body["suggestions"]), (prefix, body)
            scores = [s["score"] for s in body["suggestions"]]
            assert scores == sorted(scores, reverse=True)


def test_track_suggestion_leads_to_its_track(client: TestClient, small_catalog: Catalog) -> None:
    t = small_catalog.tracks[0]
    text = f"{normalize(t.artist)} {title_text(t)}"
    body = get(client, prefix=text[: len(text) - 1], limit=5)
    hit = next(s for s in body["suggestions"] if s["text"] == text)
    track = small_catalog.get(hit["entity_id"])
    assert hit["kind"] == "track" and track is not None and normalize(track.artist) == normalize(t.artist)


def test_first_word_typo_still_completes(client: TestClient, small_catalog: Catalog) -> None:
    artist = top_artist(small_catalog)
    first = artist.split()[0]
    assert len(first) >= 4
    typo = first[:2] + ("x" if first[2] != "x" else "y") + first[3:]  # one substitution, not at the start
    rest = artist[len(first):]
    body = get(client, prefix=typo + rest + " ", limit=10)
    assert any(s["text"].startswith(artist) for s in body["suggestions"]), body
    assert prefix_match(artist + " x", typo + rest + " ") == 0.5
    assert prefix_match("zz" + artist, typo) == 0.0


def test_session_previous_query_moves_its_artist_up(client: TestClient, redis_client: redis.Redis,
                                                     model: SuggestModel, small_catalog: Catalog) -> None:
    artist = top_artist(small_catalog)
    titles = [title_text(t) for t in sorted(small_catalog.tracks, key=lambda t: -t.popularity)
              if normalize(t.artist) == artist]

    def rank(body: dict, text: str) -> int:
        texts = [s["text"] for s in body["suggestions"]]
        return texts.index(text) + 1 if text in texts else 99

    # A title of the artist that, typed from one letter without context, is not the first guess.
    title = next(t for t in titles if rank(get(client, prefix=t[0], limit=20), t) > 1)
    before = rank(get(client, prefix=title[0], limit=20), title)
    sid = "sess-1"
    redis_client.lpush(Keys().session_queries(sid), "some older query")
    redis_client.lpush(Keys().session_queries(sid), artist)  # newest first
    body = get(client, prefix=title[0], limit=20, session_id=sid)
    assert body["previous_query"] == artist
    after = rank(body, title)
    assert after < before, (title, before, after)
    # The artist's other titles with that first letter move up too: they fill the top 5.
    theirs = {t for t in titles if t.startswith(title[0])}
    assert sum(s["text"] in theirs for s in body["suggestions"][:5]) >= min(3, len(theirs))
    # An unknown session is the same as no session.
    assert get(client, prefix=title[0], limit=20, session_id="nobody")["suggestions"] == \
        get(client, prefix=title[0], limit=20)["suggestions"]


@pytest.mark.parametrize("params, field", [
    ({}, "prefix"),
    ({"prefix": "   "}, "prefix"),
    ({"prefix": "a" * 101}, "prefix"),
    ({"prefix": "a" * 99 + " "}, None),  # 100 with the meaningful trailing space: fine
    ({"prefix": " " + "a" * 100}, "prefix"),  # the limit counts what was sent, as the schema says
    ({"prefix": "ab", "limit": 0}, "limit"),
    ({"prefix": "ab", "limit": 21}, "limit"),
    ({"prefix": "ab", "limit": "x"}, "limit"),
    ({"prefix": "ab", "session_id": ""}, "session_id"),
    ({"prefix": "a\x00b"}, "prefix"),
])
def test_bad_input_is_422_and_writes_nothing(client: TestClient, redis_client: redis.Redis, params: dict,
                                              field: str | None) -> None:
    redis_client.lpush(Keys().session_queries("s"), "x")
    before = {k: redis_client.dump(k) for k in redis_client.keys("*")}
    r = client.get("/suggest", params=params)
    if field is None:
        assert r.status_code == 200
        return
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "validation_error"
    assert [d["field"] for d in err["details"]] == [field]
    assert {k: redis_client.dump(k) for k in redis_client.keys("*")} == before


def test_no_model_is_503_and_redis_down_degrades(model: SuggestModel) -> None:
    r = TestClient(make_app(Runtime(None, None))).get("/suggest", params={"prefix": "ab"})
    assert r.status_code == 503 and r.json()["error"]["code"] == "unavailable"
    dead = redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.2)
    c = TestClient(make_app(Runtime(SuggestService(model, "v1"), dead)))
    body = c.get("/suggest", params={"prefix": "ab", "session_id": "s"}).json()
    assert body["previous_query"] is None and body["suggestions"]


def test_write_load_roundtrip_and_logged_queries(tmp_path: Path, small_catalog: Catalog) -> None:
    settings = Settings(data_dir=tmp_path)
    assert load_suggest(settings) is None
    logs = settings.logs_dir
    logs.mkdir(parents=True)
    lines = []
    for i in range(4):  # four sessions typed "zebra mix" after the same artist
        lines.append({"search_id": f"a{i}", "ts": 100.0 * i, "query": "Muse", "query_norm": "muse",
                      "session_id": f"s{i}"})
        lines.append({"search_id": f"b{i}", "ts": 100.0 * i + 3, "query": "Zebra  Mix", "query_norm": "zebra mix",
                      "session_id": f"s{i}"})
    (logs / "decisions-2024-01-01.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\nnot json\n")
    logged = read_logged(logs)
    assert logged.query_counts == {"muse": 4, "zebra mix": 4} and logged.bad_lines == 1
    assert [(p.prev, p.next, p.count) for p in logged.pairs] == [("muse", "zebra mix", 4.0)]
    small = Catalog(small_catalog.tracks[:300])
    model = build_model(small, logged=logged)
    version = save_model(model, suggest_store(settings))
    assert version == "v0001"
    service = load_suggest(settings)
    assert service is not None and service.version == "v0001"
    for prefix, prev in (("z", "muse"), ("ze", ""), ("a", ""), ("the ", "muse")):
        assert [(s.text, s.score) for s in service.model.suggest(prefix, prev, 10)] == \
               [(s.text, s.score) for s in model.suggest(prefix, prev, 10)]
    hit = next(s for s in service.suggest("ZE", "Muse", 5) if s.text == "zebra mix")
    assert hit.kind == "query" and hit.entity_id is None


def test_popularity_trie_matches_brute_force() -> None:
    rng = random.Random(1)
    texts = sorted({"".join(rng.choice("abc ") for _ in range(rng.randint(1, 6))).strip() or "a"
                    for _ in range(3000)})
    weights = np.array([rng.random() for _ in texts])
    trie = PopularityTrie(texts, weights, top_k=10, wide=20)
    for prefix in ["", "a", "ab", "b c", "cc", "abca", "zz"]:
        want = sorted((i for i, t in enumerate(texts) if t.startswith(prefix)), key=lambda i: (-weights[i], i))[:7]
        assert trie.complete(prefix, 7) == want
    assert clean_prefix("abc   ") == "abc " and clean_prefix("abc") == "abc"
