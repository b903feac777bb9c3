"""Property-based fuzzing of the API contract (issue: hardening): whatever arrives, no 5xx, and
every error is the documented JSON shape."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

FUZZ = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-2**70, 2**70) | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda children: st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=6),
    max_leaves=25,
)


@pytest.fixture(scope="module")
def client(keyed_service):
    return keyed_service


def assert_well_formed(r) -> None:  # type: ignore[no-untyped-def]
    assert r.status_code < 500, r.text
    body = r.json()
    if r.status_code >= 400:
        assert set(body) == {"error"} and {"code", "message", "details"} <= set(body["error"])
        assert isinstance(body["error"]["message"], str) and body["error"]["message"]


@FUZZ
@given(q=st.text(max_size=700), limit=st.one_of(st.integers(-5, 200), st.text(max_size=5)),
       user=st.one_of(st.none(), st.text(max_size=200)), debug=st.booleans())
def test_search_get_never_5xx(client, q, limit, user, debug) -> None:
    _, c = client
    params = {"q": q, "limit": limit, "debug": debug}
    if user is not None:
        params["user_id"] = user
    assert_well_formed(c.get("/search", params=params))


@FUZZ
@given(body=json_values)
def test_search_post_never_5xx(client, body) -> None:
    _, c = client
    assert_well_formed(c.post("/search", content=json.dumps(body), headers={"content-type": "application/json"}))


@FUZZ
@given(body=json_values)
def test_feedback_never_5xx_and_writes_nothing_invalid(client, body) -> None:
    rt, c = client
    before = rt.redis.xlen(rt.keys.feedback_stream)
    r = c.post("/feedback", content=json.dumps(body), headers={"content-type": "application/json",
                                                                "X-API-Key": "k-123"})
    assert_well_formed(r)
    if r.status_code != 202:
        assert rt.redis.xlen(rt.keys.feedback_stream) == before


@FUZZ
@given(event=st.fixed_dictionaries({
    "search_id": st.text(max_size=80), "track_id": st.text(max_size=80),
    "type": st.sampled_from(["click", "play", "like", "add_to_favorites", "skip", "buy", ""]),
    "position": st.integers(-3, 2000)},
    optional={"timestamp": st.floats(allow_nan=False, allow_infinity=False), "event_id": st.text()}))
def test_feedback_events_never_5xx(client, event) -> None:
    _, c = client
    assert_well_formed(c.post("/feedback", json=event, headers={"X-API-Key": "k-123"}))
