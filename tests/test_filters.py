"""Filters and facets on /search (services.serving.filters) through the real API: real indexes,
real cold-start models, real Redis."""

from __future__ import annotations

import pytest

from services.serving.filters import SearchFilters
from services.serving.runtime import Runtime


@pytest.fixture()
def api(keyed_service):
    return keyed_service


def _tracks(rt: Runtime, body: dict) -> list:
    return [rt.catalog.by_id[h["track_id"]] for h in body["results"]]


def test_a_genre_and_decade_filter_returns_only_matching_tracks(api) -> None:
    rt, c = api
    r = c.get("/search", params={"q": "love", "genre": "rock", "year_from": 1980, "year_to": 1989, "limit": 20})
    assert r.status_code == 200, r.text
    tracks = _tracks(rt, r.json())
    assert len(tracks) == 20
    assert all("rock" in t.genres and 1980 <= t.year <= 1989 for t in tracks)


def test_audio_feature_ranges_and_popularity_hold_on_post(api) -> None:
    rt, c = api
    r = c.post("/search", json={"q": "dance party", "limit": 10, "filters": {
        "energy_min": 0.8, "valence_min": 0.6, "min_popularity": 40, "tempo_min": 110, "tempo_max": 140}})
    assert r.status_code == 200, r.text
    tracks = _tracks(rt, r.json())
    assert tracks
    assert all(t.energy >= 0.8 and t.valence >= 0.6 and t.popularity >= 40 and 110 <= t.tempo <= 140
               for t in tracks)


def test_a_narrow_filter_never_gives_an_empty_page_while_tracks_match(api) -> None:
    rt, c = api
    # Few tracks match (1950s); the query's words match none of them, so every retriever's
    # candidates are filtered away: the exact scan of the allowed tracks fills the page.
    matching = [t for t in rt.catalog.tracks if t.year and 1950 <= t.year <= 1959]
    assert 0 < len(matching) < 10
    r = c.get("/search", params={"q": "billie eilish bad guy", "year_from": 1950, "year_to": 1959,
                                 "debug": "true"})
    assert r.status_code == 200, r.text
    body = r.json()
    # every matching track is on the page, as a hit or as another version of one
    shown = {h["track_id"] for h in body["results"]} | {v for h in body["results"] for v in h["versions"]}
    assert shown == {t.track_id for t in matching}
    assert "filter" in body["debug"]["candidates_per_retriever"]


def test_the_filters_are_logged_with_the_decision(api) -> None:
    rt, _ = api
    out = rt.pipeline.search("love songs", 10, analytics=False, filters=SearchFilters(genre="pop", year_from=2010))
    assert out.record.filters == {"genre": "pop", "year_from": 2010}
    assert out.record.context["filtered"] == 1.0 and 0 < out.record.context["filter_share"] < 1  # the bandit sees it
    for cands in out.record.candidates.values():
        assert all("pop" in rt.catalog.by_id[t].genres and rt.catalog.by_id[t].year >= 2010 for t in cands)
    plain = rt.pipeline.search("love songs", 10, analytics=False).record
    assert plain.filters is None and "filtered" not in plain.context


def test_facets_count_the_ranked_candidates(api) -> None:
    _, c = api
    r = c.get("/search", params={"q": "summer hits", "facets": "genre,decade"})
    assert r.status_code == 200, r.text
    facets = r.json()["facets"]
    assert set(facets) == {"genre", "decade"}
    assert facets["genre"] and all(isinstance(v, int) and v > 0 for v in facets["genre"].values())
    assert all(k.endswith("0s") for k in facets["decade"])
    filtered = c.get("/search", params={"q": "summer hits", "facets": "genre", "genre": "latin"}).json()["facets"]
    assert "latin" in filtered["genre"] and max(filtered["genre"], key=filtered["genre"].get) == "latin"
    assert c.get("/search", params={"q": "x"}).json()["facets"] is None


@pytest.mark.parametrize("params, field", [
    ({"year_from": 2000, "year_to": 1990}, "year_from"),
    ({"energy_min": 0.9, "energy_max": 0.1}, "energy_min"),
    ({"yaer_from": 1990}, "yaer_from"),
    ({"facets": "mood"}, "facets"),
    ({"energy_min": 2}, "energy_min"),
    ({"year_from": "nineteen"}, "year_from"),
])
def test_bad_filters_get_a_422_naming_the_field(api, params: dict, field: str) -> None:
    _, c = api
    r = c.get("/search", params={"q": "love", **params})
    assert r.status_code == 422, r.text
    assert field in r.text


def test_a_genre_no_track_has_matches_nothing(api) -> None:
    _, c = api
    r = c.get("/search", params={"q": "love", "genre": "polka"})
    assert r.status_code == 200 and r.json()["results"] == []
    r = c.get("/search", params={"q": "love", "genre": "polka,Rock", "limit": 5})  # any of, case-insensitive
    assert r.status_code == 200 and len(r.json()["results"]) == 5


def test_post_refuses_unknown_filter_fields(api) -> None:
    _, c = api
    r = c.post("/search", json={"q": "love", "filters": {"colour": "red"}})
    assert r.status_code == 422 and "colour" in r.text
    r = c.post("/search", json={"q": "love", "filters": {"year_from": "1990"}})  # strict: a string is not a year
    assert r.status_code == 422


def test_post_takes_integral_floats_where_the_schema_says_integer(api) -> None:
    """JSON Schema's integer includes 2.0 (schemathesis sent it and got a 422): the published
    schema is the contract. A fractional value is still refused, and so is a boolean."""
    _, c = api
    r = c.post("/search", json={"q": "love", "limit": 5, "filters": {"min_popularity": 2.0, "year_from": 1990.0}})
    assert r.status_code == 200, r.text
    for bad in ({"min_popularity": 2.5}, {"year_to": True}):
        r = c.post("/search", json={"q": "love", "filters": bad})
        assert r.status_code == 422, (bad, r.text)
