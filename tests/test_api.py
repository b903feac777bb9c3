"""HTTP contract: typed errors, validation messages, auth, docs, metrics (issues: pipeline, hardening)."""

from __future__ import annotations

import pytest


@pytest.fixture()
def api(keyed_service):
    return keyed_service


def test_get_and_post_search(api) -> None:
    _, c = api
    r = c.get("/search", params={"q": "Billie Eilish bad guy", "limit": 5})
    assert r.status_code == 200
    body = r.json()
    assert len(body["search_id"]) == 32 and len(body["results"]) == 5 and body["debug"] is None
    hit = body["results"][0]
    assert {"track_id", "title", "artist", "album", "genres", "score", "retrievers"} <= set(hit)
    assert hit["retrievers"]
    r = c.post("/search", json={"q": "sad love songs", "limit": 3, "user_id": "u1", "debug": True,
                                "context": {"locale": "en-US", "device": "mobile", "timestamp": 1.7e9}})
    assert r.status_code == 200
    dbg = r.json()["debug"]
    assert dbg["propensity"] == pytest.approx(dbg["probabilities"]["+".join(dbg["action"]) + f"@{dbg['budget']}"])
    assert {"context", "bandit", "retrieve", "rank", "total"} <= set(dbg["timings_ms"])
    assert r.json()["results"][0]["features"]["popularity"] is not None


def test_lean_search_answers_the_documented_model(api) -> None:
    """GET /search's lean route and POST /search build the response without pydantic models
    (services.serving.search_http): their documents must be exactly what SearchResponse says,
    debug and facets included, and a request the lean route leaves to FastAPI answers the same."""
    from services.serving.api_models import SearchResponse
    from services.serving.search_http import lean_request

    _, c = api
    for r in (c.get("/search", params={"q": "tayler swift love story", "limit": 4}),
              c.get("/search", params={"q": "gym rap", "debug": "true", "user_id": "u-lean", "device": "mobile",
                                       "locale": "en-US", "collapse": "0"}),
              c.get("/search", params={"q": "sad songs", "facets": "genre,decade", "year_from": 1990}),
              c.post("/search", json={"q": "latin summer", "debug": True, "facets": ["decade"]})):
        assert r.status_code == 200, r.text
        assert r.headers["content-type"] == "application/json"
        assert r.json() == SearchResponse.model_validate(r.json()).model_dump(mode="json")
    assert lean_request(b"q=gym+rap&limit=5&debug=1") is not None
    # Left to the FastAPI route: filters, a repeated or unknown parameter, lax spellings.
    for qs in (b"q=x&genre=pop", b"q=x&q=y", b"q=x&limit=+5", b"q=x&debug=yes", b"q=", b"limit=5", b"q=x&boost=1"):
        assert lean_request(qs) is None, qs
    assert c.get("/search?q=x&limit=+5").status_code == 200  # pydantic's lax int, as before
    m = c.get("/metrics").text
    assert 'ltrr_http_requests_total{route="/search",status="200"}' in m


@pytest.mark.parametrize(("params", "field", "words"), [
    ({"q": ""}, "q", "empty"),
    ({"q": "   "}, "q", "empty"),
    ({"q": "x" * 513}, "q", "512"),
    ({"q": "ok", "limit": 0}, "limit", "greater than or equal to 1"),
    ({"q": "ok", "limit": 101}, "limit", "less than or equal to 100"),
    ({"q": "ok", "limit": "ten"}, "limit", "integer"),
    ({}, "q", "required"),
    # GET names the query parameter the client sent; POST names the JSON path (context.device).
    ({"q": "ok", "device": "toaster"}, "device", "mobile"),
    ({"q": "ok", "locale": "<script>"}, "locale", "pattern"),
])
def test_search_validation_errors_are_422_naming_the_field(api, params, field, words) -> None:
    _, c = api
    r = c.get("/search", params=params)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "validation_error"
    assert any(d["field"] == field for d in err["details"]), err
    assert words in err["message"]


def test_post_search_rejects_unknown_fields_and_bad_json(api) -> None:
    _, c = api
    r = c.post("/search", json={"q": "x", "boost": 5})
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "boost"
    r = c.post("/search", json={"q": "x", "context": {"device": "toaster"}})
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "context.device"
    r = c.post("/search", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422


@pytest.mark.parametrize("q", ['" OR 1=1 --', "title:foo AND artist:*", "(((", "🎵🔥" * 50, "\\u0000x",
                               "a" * 512, "<script>alert(1)</script>", "ＡＢＣ", "%00%ff"])
def test_hostile_queries_answer_200(api, q) -> None:
    _, c = api
    r = c.get("/search", params={"q": q})
    assert r.status_code == 200, r.text


def test_feedback_and_admin_need_a_key_401_vs_403(api) -> None:
    rt, c = api
    # The API fixture sets keys; requests without the header are 401, with a wrong one 403.
    r = c.post("/feedback", json={})
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    assert c.post("/feedback", json={}, headers={"X-API-Key": "nope"}).status_code == 403
    assert c.post("/admin/reload", headers={"Authorization": "Bearer nope"}).status_code == 403
    ok = c.post("/admin/reload", headers={"Authorization": "Bearer k-456"})
    assert ok.status_code == 200 and ok.json()["ranker_version"] == rt.ranker.version
    assert c.get("/search", params={"q": "x"}).status_code == 200  # search is open by default


def test_docs_openapi_health_metrics(api) -> None:
    _, c = api
    assert c.get("/docs").status_code == 200
    spec = c.get("/openapi.json").json()
    assert {"/search", "/feedback", "/health", "/metrics"} <= set(spec["paths"])
    assert "422" in spec["paths"]["/search"]["get"]["responses"]
    h = c.get("/health").json()
    assert h["status"] == "ok" and h["catalog_tracks"] == 28356 and set(h["retrievers"]) == {
        "lexical", "dense", "xr", "q2e"}
    c.get("/search", params={"q": "metrics please"})
    m = c.get("/metrics").text
    assert "ltrr_search_stage_seconds_bucket" in m and "ltrr_bandit_actions_total" in m


def test_errors_never_leak_internals(api, monkeypatch) -> None:
    rt, c = api

    def boom(*a, **k):
        raise RuntimeError("secret path /work/main/var/indexes")

    monkeypatch.setattr(rt.pipeline, "search", boom)
    r = c.get("/search", params={"q": "x"})
    assert r.status_code == 500
    assert "secret" not in r.text and "Traceback" not in r.text
    assert r.json()["error"]["code"] == "internal_error"


def test_query_string_and_body_size_limits(api) -> None:
    _, c = api
    assert c.get("/search?q=" + "a" * 13_000).status_code == 414
    # A valid query of 512 four-byte characters fits: 6 KiB percent-encoded.
    assert c.get("/search", params={"q": "🎵" * 512}).status_code == 200
    r = c.post("/search", content=b'{"q": "' + b"a" * 1_100_000 + b'"}', headers={"content-type": "application/json"})
    assert r.status_code == 413


@pytest.mark.parametrize(("path", "body", "status", "code"), [
    ("/feedback", b"[" * 2000 + b"]" * 2000, 422, "invalid_json"),
    ("/feedback", b'{"events": ' + b"[" * 40 + b"]" * 40 + b"}", 422, "invalid_json"),
    ("/feedback", b'{"search_id": "\\ud800", "track_id": "t", "position": 1, "type": "click"}', 422, "invalid_json"),
    ("/feedback", b'{"user_id": "a\\udfffb", "search_id": "s", "track_id": "t", "position": 1, "type": "click"}',
     422, "invalid_json"),
    ("/search", b'{"q": "\\ud800 x"}', 422, "validation_error"),
    ("/search", b'{"q": "ok", "user_id": "\\ud800"}', 422, "validation_error"),
    ("/search", b'{"\\ud800": 1, "q": "ok"}', 422, "validation_error"),
    ("/search", b"[" * 2000 + b"]" * 2000, 400, "invalid_body"),
    ("/search", b'{"q": "ok", "debug": "yes"}', 422, "validation_error"),
    ("/search", b'{"q": "ok", "limit": true}', 422, "validation_error"),
    ("/search", b'{"q": "ok", "limit": "5"}', 422, "validation_error"),
    ("/search", b'{"q": "ok", "context": {"timestamp": "1700000000"}}', 422, "validation_error"),
])
def test_hostile_bodies_get_4xx_not_500(api, path, body, status, code) -> None:
    _, c = api
    r = c.post(path, content=body, headers={"content-type": "application/json", "X-API-Key": "k-123"})
    assert r.status_code == status, r.text
    assert r.json()["error"]["code"] == code


def test_strict_types_accept_what_the_schema_says(api) -> None:
    _, c = api
    ok = c.post("/search", json={"q": "ok", "limit": 3, "debug": False, "context": {"timestamp": 1700000000}})
    assert ok.status_code == 200 and len(ok.json()["results"]) == 3
    assert c.get("/search", params={"q": "ok", "debug": "yes"}).status_code == 422
    assert c.get("/search", params={"q": "ok", "debug": "1", "limit": 2}).json()["debug"] is not None


def test_feedback_needs_json_content_type_415(api) -> None:
    _, c = api
    good = b'{"search_id": "s", "track_id": "t", "position": 1, "type": "click"}'
    for ctype in ("text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", None):
        headers = {"X-API-Key": "k-123"} | ({"content-type": ctype} if ctype else {})
        r = c.post("/feedback", content=good, headers=headers)
        assert r.status_code == 415, (ctype, r.text)
        assert r.json()["error"]["code"] == "unsupported_media_type"
    # application/json with a charset is fine (422 here: the search id is unknown).
    r = c.post("/feedback", content=good, headers={"X-API-Key": "k-123",
                                                   "content-type": "application/json; charset=utf-8"})
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "search_id"


def test_405_names_the_allowed_methods(api) -> None:
    _, c = api
    r = c.delete("/search")
    assert r.status_code == 405 and set(r.headers["allow"].replace(" ", "").split(",")) == {"GET", "POST"}
    assert r.json()["error"]["code"] == "method_not_allowed"
