"""What music query understanding does for /search, on real queries through the real API: a decade
and genre, a mood, an activity, partial titles, and one result per recording. The data dir is the
session's cold-start build (real indexes, real cold-start ranker and bandit, real Redis), so these
are a new deployment's answers, before any click."""

from __future__ import annotations

import random

import numpy as np
import pytest

from retrievers.text import normalize
from services.catalog import Catalog
from services.serving.recordings import base_title, recording_key
from services.serving.runtime import Runtime

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def api(keyed_service):
    return keyed_service


def _top(api, q: str, limit: int = 10) -> list:
    rt, c = api
    # Tracks only: these tests are about how tracks rank (artist and album hits: test_entities_api).
    r = c.get("/search", params={"q": q, "limit": limit, "analytics": "false", "types": "track"})
    assert r.status_code == 200, r.text
    return [rt.catalog.by_id[h["track_id"]] for h in r.json()["results"]]


def _percentile(catalog: Catalog, feature: str, value: float) -> float:
    return float(np.mean([getattr(t, feature) <= value for t in catalog.tracks]))


def test_80s_rock_returns_1980s_rock(api) -> None:
    tracks = _top(api, "80s rock")
    fits = [t for t in tracks if "rock" in t.genres and 1980 <= t.year <= 1989]
    assert len(fits) >= 8, [(t.title, t.year, t.genres) for t in tracks]


def test_a_mood_query_returns_tracks_whose_audio_features_match(api) -> None:
    rt, _ = api
    sad = _top(api, "sad songs")
    chill = _top(api, "chill acoustic")
    # Percentiles over the catalog: the catalog's median track sits at 0.5.
    assert np.median([_percentile(rt.catalog, "valence", t.valence) for t in sad]) < 0.35
    assert np.median([_percentile(rt.catalog, "energy", t.energy) for t in chill]) < 0.3


def test_an_activity_query_returns_energetic_tracks_of_its_genre(api) -> None:
    rt, _ = api
    tracks = _top(api, "gym rap")
    assert sum("rap" in t.genres for t in tracks) >= 8
    assert np.median([_percentile(rt.catalog, "energy", t.energy) for t in tracks]) > 0.6


def test_partial_titles_find_their_track_in_the_top_3(api) -> None:
    """As typed by someone who has not finished: the first 60% of the title's characters. A
    prefix that is another song's whole title is skipped (that song is a right answer too)."""
    rt, _ = api
    rng = random.Random(5)
    titles = {base_title(t.title) for t in rt.catalog.tracks}
    popular = [t for t in rt.catalog.tracks if t.popularity >= 40 and len(base_title(t.title)) >= 10]
    hits, asked = 0, 0
    for t in rng.sample(popular, 60):
        typed = base_title(t.title)[: int(0.6 * len(base_title(t.title)))].rstrip()
        if normalize(typed) in titles:
            continue
        asked += 1
        want = recording_key(t.title, t.artist)
        hits += any(recording_key(x.title, x.artist) == want for x in _top(api, typed, 3))
    assert asked >= 40 and hits / asked >= 0.7, (hits, asked)


def test_no_page_holds_two_versions_of_one_recording(api) -> None:
    for q in ("dance monkey", "memories", "shake it off", "gym rap", "love"):
        tracks = _top(api, q, 20)
        keys = [recording_key(t.title, t.artist) for t in tracks]
        assert len(keys) == len(set(keys)), q


def test_the_structured_retriever_is_an_arm_the_bandit_can_run(built_settings, fresh_redis_state,
                                                                tmp_path) -> None:
    """Opt-in (LTRR_RETRIEVERS): the cold start then trains a ranker whose registry has its
    score and rank, the action set offers it, and a search that runs it serves its tracks."""
    from bandit.policy import FixedPolicy
    from services.offline.build import train_coldstart
    from tests.served import serving_data_dir

    settings, _ = built_settings
    (tmp_path / "data").mkdir()
    data = serving_data_dir(settings, tmp_path / "data")
    five = settings.model_copy(update={"data_dir": data, "retrievers": (*settings.retrievers, "structured")})
    rt = Runtime(five, start_worker=False)
    try:
        assert "structured" in rt.pipeline.parts.retrievers
        assert any(a.arms == ("structured",) for a in rt.pipeline.actions)
        train_coldstart(five, rt, n_queries=300, progress=False)
        rt.ranker.refresh()
        model = rt.ranker.current()
        assert model is not None and "ret_structured_rank" in model.feature_names
        rt.policy.set(FixedPolicy(("structured",)), "fixed")
        out = rt.pipeline.search("80s rock", 10, analytics=False)
        assert out.record.candidates["structured"] and all("structured" in out.found_by[t] for t in out.record.served)
        assert all(1980 <= rt.catalog.by_id[t].year <= 1989 for t in out.record.served)
    finally:
        rt.close()
