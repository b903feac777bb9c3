"""Query understanding and the structured retriever on the real catalog: genres, decades and moods
parsed from real query shapes, mood -> audio-feature targets derived from the catalog, and
retrieval whose results really have the asked-for features, years and genres."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest

from retrievers.base import Retriever
from retrievers.query_understanding import MIN_SEED, QueryUnderstanding
from retrievers.structured import StructuredRetriever
from services.catalog import Catalog

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def structured(catalog: Catalog) -> StructuredRetriever:
    r = StructuredRetriever()
    r.build(catalog.documents())  # documents carry tempo among their audio features
    return r


@pytest.fixture(scope="module")
def qu(structured: StructuredRetriever) -> QueryUnderstanding:
    assert structured.qu is not None
    return structured.qu


def _mean(catalog: Catalog, ids: list[str], feature: str) -> float:
    return float(np.mean([getattr(catalog.get(i), feature) for i in ids]))


def _catalog_mean(catalog: Catalog, feature: str) -> float:
    return float(np.mean([getattr(t, feature) for t in catalog.tracks]))


def test_genres_decades_and_moods_are_parsed(qu: QueryUnderstanding) -> None:
    p = qu.parse("80s rock")
    assert p.genres == ("rock",) and p.years == (1980, 1989) and not p.rest
    p = qu.parse("Gym Rap")
    assert p.genres == ("rap",) and p.concepts == ("workout",)
    p = qu.parse("rnb 2019")
    assert p.genres == ("r&b",) and p.years == (2019, 2019)
    assert qu.parse("90's hits").years == (1990, 1999)
    assert qu.parse("eighties").years == (1980, 1989)
    # several years or decades are one range
    assert qu.parse("80s-90s r&b").years == (1980, 1999)
    assert qu.parse("new jack swing 1987 - 2002").years == (1987, 2002)
    assert qu.parse("sad love songs").concepts == ("sad", "love")
    assert qu.parse("feel good summer").concepts == ("happy", "summer")
    # "hip hop" is a subgenre and part of others: all of them, and "hop" is not matched alone.
    assert {"hip hop", "southern hip hop", "latin hip hop"} <= set(qu.parse("hip hop").subgenres)
    assert set(qu.parse("deep house").subgenres) >= {"electro house", "progressive electro house"}
    assert qu.parse("deep house").rest == ("deep",)
    assert qu.parse("Beyoncé halo").empty


def test_mood_targets_are_derived_from_the_catalog(qu: QueryUnderstanding) -> None:
    sad = qu.concept_evidence["sad"]
    assert sad["seed_tracks"] >= MIN_SEED
    # The catalog agrees with Spotify's definition: "sad" titles have lower valence than the catalog.
    assert sad["effects"]["valence"] < 0
    # "love" has no prior at all: its targets come from the catalog's love-titled tracks alone.
    assert not qu.concept_evidence["love"]["prior"] and qu.concept_targets["love"]
    # Directions end on the right side of the catalog's percentile scale.
    target = {t.feature: t for t in qu.concept_targets["sad"]}
    assert target["valence"].target_pct < 0.5 and target["valence"].low <= target["valence"].target
    assert {t.feature: t for t in qu.concept_targets["workout"]}["energy"].target_pct > 0.5
    assert "sad" in qu.explain() and "valence" in qu.explain()


@pytest.mark.parametrize(("query", "feature", "direction"), [
    ("sad songs", "valence", -1), ("happy hits", "valence", +1), ("workout", "energy", +1),
    ("party", "danceability", +1), ("chill evening", "energy", -1), ("acoustic covers", "acousticness", +1),
    ("sleep", "energy", -1), ("instrumental study", "instrumentalness", +1),
])
def test_mood_query_returns_tracks_with_matching_audio_features(structured: StructuredRetriever,
                                                                 catalog: Catalog, query: str, feature: str,
                                                                 direction: int) -> None:
    ids = [c.track_id for c in structured.retrieve(query, 50)]
    assert len(ids) == 50
    got, overall = _mean(catalog, ids, feature), _catalog_mean(catalog, feature)
    sd = float(np.std([getattr(t, feature) for t in catalog.tracks]))
    # At least half a catalog standard deviation to the asked-for side.
    assert direction * (got - overall) > 0.5 * sd, (query, feature, got, overall)


def test_80s_rock_returns_1980s_rock(structured: StructuredRetriever, catalog: Catalog) -> None:
    res = structured.retrieve("80s rock", 100)
    assert len(res) == 100
    for c in res:
        t = catalog.get(c.track_id)
        assert t.year is not None and 1980 <= t.year <= 1989 and "rock" in t.genres, (t.title, t.year, t.genres)
    # Without a mood, the filtered tracks come most popular first.
    pops = [catalog.get(c.track_id).popularity for c in res]
    assert pops == sorted(pops, reverse=True)


def test_filters_and_moods_combine(structured: StructuredRetriever, catalog: Catalog) -> None:
    ids = [c.track_id for c in structured.retrieve("gym rap", 50)]
    assert all("rap" in catalog.get(i).genres for i in ids)
    assert _mean(catalog, ids, "energy") > _catalog_mean(catalog, "energy")


def test_contract_and_round_trip(structured: StructuredRetriever, tmp_path: Path) -> None:
    assert isinstance(structured, Retriever) and structured.name == "structured"
    assert structured.retrieve("taylor swift shake it off", 10) == []  # nothing structured in it
    assert structured.retrieve("80s rock", 0) == []
    res = structured.retrieve("sad love songs", 20)
    assert [c.rank for c in res] == list(range(1, 21))
    assert all(a.score >= b.score for a, b in itertools.pairwise(res))
    structured.save(tmp_path / "s")
    loaded = StructuredRetriever.load(tmp_path / "s")
    for q in ["sad love songs", "80s rock", "gym rap", "latin summer", "deep house"]:
        assert [c.track_id for c in loaded.retrieve(q, 30)] == [c.track_id for c in structured.retrieve(q, 30)]
    assert structured.retrieve_batch(["80s rock", "x"], 5) == [structured.retrieve("80s rock", 5), []]
