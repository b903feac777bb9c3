"""XR-Linear retriever on the real catalog with the real PECOS: cold start, learning from clicks,
write/load in predict-only mode, restriction to allowed ids, hostile input."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest

from retrievers.base import Retriever
from retrievers.text import normalize, split_featuring, strip_version
from retrievers.xr_linear import XRConfig, XRLinearRetriever

pytestmark = pytest.mark.slow

# Hand-misspelled and reordered searches for real catalog tracks: (query, title, artist).
TYPO_QUERIES = [
    ("ed sheran shape of yuo", "shape of you", "ed sheeran"),
    ("blinding lihgts the weekend", "blinding lights", "the weeknd"),
    ("billie elish bad guy", "bad guy", "billie eilish"),
    ("despasito luis fonsi", "despacito", "luis fonsi"),
    ("mark ronson uptwn funk", "uptown funk", "mark ronson"),
    ("lewis capaldy someone you loved", "someone you loved", "lewis capaldi"),
    ("smells like teen spirt nirvana", "smells like teen spirit", "nirvana"),
    ("adele rolling in the deeep", "rolling in the deep", "adele"),
    ("thunderstuck ac dc", "thunderstruck", "ac dc"),
]
CLICK_QUERY = "gym hype 2019"
CLICK_TRACK = "7qEHsqek33rTcFNT9PFqLf"  # Someone You Loved - Lewis Capaldi: nothing like "gym hype"


@pytest.fixture(scope="module")
def cold(documents) -> XRLinearRetriever:
    xr = XRLinearRetriever(XRConfig())
    xr.build(documents)
    return xr


@pytest.fixture(scope="module")
def learned(documents) -> XRLinearRetriever:
    # A few repeated clicks plus one unrelated noise pair: repeats are summed into one weighted row.
    pairs = [(CLICK_QUERY, CLICK_TRACK, 1.0)] * 4 + [("Gym Hype 2019!", CLICK_TRACK, 1.0),
                                                     ("gym hype 2019", "not-a-track", 1.0)]
    xr = XRLinearRetriever(XRConfig())
    xr.train(pairs, documents)
    return xr


def _key(title: str, artist: str) -> tuple[str, str]:
    return normalize(strip_version(split_featuring(title)[0])), normalize(artist)


def test_implements_protocol(cold: XRLinearRetriever) -> None:
    assert isinstance(cold, Retriever)
    assert cold.name == "xr"


@pytest.mark.parametrize(("query", "title", "artist"), TYPO_QUERIES)
def test_cold_start_typos_and_word_order(cold: XRLinearRetriever, catalog, query: str, title: str,
                                         artist: str) -> None:
    hits = cold.retrieve(query, 5)
    found = [_key(catalog.get(c.track_id).title, catalog.get(c.track_id).artist) for c in hits]
    assert (title, artist) in found, (query, found)
    assert [c.rank for c in hits] == list(range(1, len(hits) + 1))
    assert all(a.score >= b.score for a, b in itertools.pairwise(hits))


def test_cold_start_knows_nothing_of_click_query(cold: XRLinearRetriever) -> None:
    assert CLICK_TRACK not in [c.track_id for c in cold.retrieve(CLICK_QUERY, 10)]


def test_learns_from_clicks(learned: XRLinearRetriever) -> None:
    hits = learned.retrieve(CLICK_QUERY, 10)
    assert hits[0].track_id == CLICK_TRACK
    assert learned.stats.n_logged_pairs == 5  # the unknown track id was dropped


def test_learning_keeps_cold_start_knowledge(learned: XRLinearRetriever, catalog) -> None:
    query, title, artist = TYPO_QUERIES[0]
    found = [_key(catalog.get(c.track_id).title, catalog.get(c.track_id).artist)
             for c in learned.retrieve(query, 5)]
    assert (title, artist) in found


def test_write_load_identical_results(cold: XRLinearRetriever, learned: XRLinearRetriever,
                                      tmp_path: Path) -> None:
    d1, d2 = tmp_path / "one", tmp_path / "two"
    d1.mkdir()
    d2.mkdir()
    cold.write(d1)
    learned.write(d2)
    assert sorted(p.name for p in d2.iterdir()) == ["labels.txt", "meta.json", "model", "vectorizer"]
    meta = json.loads((d2 / "meta.json").read_text())
    assert "version" not in meta and meta["n_pairs"] > 100_000 and meta["config"]["nr_splits"] == 16
    assert meta["created"]

    loaded = XRLinearRetriever.load(d2, version="v0002")
    assert loaded.version == "v0002" and loaded._model.is_predict_only
    queries = [q for q, _, _ in TYPO_QUERIES] + [CLICK_QUERY, "sad pop", "latin summer"]
    for q in queries:
        assert loaded.retrieve(q, 20) == learned.retrieve(q, 20)
    assert loaded.retrieve_batch(queries, 20) == [learned.retrieve(q, 20) for q in queries]
    assert XRLinearRetriever.load(d1).retrieve(CLICK_QUERY, 10) == cold.retrieve(CLICK_QUERY, 10)
    # A loaded model can be written again (a promoted copy, a re-publish).
    d3 = tmp_path / "three"
    d3.mkdir()
    loaded.write(d3)
    assert XRLinearRetriever.load(d3).retrieve(CLICK_QUERY, 10) == learned.retrieve(CLICK_QUERY, 10)


def test_load_missing_raises(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        XRLinearRetriever.load(tmp_path / "nothing")


def test_batch_matches_single(cold: XRLinearRetriever) -> None:
    queries = ["ed sheeran", "", "rock", "🎸🎸", "dance pop"]
    assert cold.retrieve_batch(queries, 10) == [cold.retrieve(q, 10) for q in queries]


def test_allowed_restriction(cold: XRLinearRetriever, catalog) -> None:
    query = "ed sheeran"
    full = cold.retrieve(query, 50)
    assert len(full) == 50
    top10 = {c.track_id for c in full[:10]}
    allowed = ({c.track_id for c in full[10:20]} | {t.track_id for t in catalog.tracks[:500]}) - top10
    try:
        cold.allowed = allowed
        hits = cold.retrieve(query, 10)
        assert all(c.track_id in allowed for c in hits)
        # Results are the top 10 of the allowed ones (found by widening the search), not the
        # allowed part of the unrestricted top 10, which is empty here.
        assert len(hits) == 10
        expected = [(c.track_id, c.score) for c in full if c.track_id in allowed]
        assert [(c.track_id, c.score) for c in hits][: len(expected)] == expected[:10]
        assert [c.rank for c in hits] == list(range(1, 11))
        batch = cold.retrieve_batch([query, "rock"], 10)
        assert all(c.track_id in allowed for hits in batch for c in hits)
        cold.allowed = set()
        assert cold.retrieve(query, 10) == []
    finally:
        cold.allowed = None
    assert cold.retrieve(query, 50) == full


@pytest.mark.parametrize("query", ["", "   ", "!!!???...", "🎸🔥💃", "x" * 10_000, "love " * 2_000, "\x00\x01\ud800",
                                   "' OR 1=1 --", "<script>alert(1)</script>", "ﷺ" * 500, "\n\t"])
def test_hostile_queries_never_raise(cold: XRLinearRetriever, query: str) -> None:
    hits = cold.retrieve(query, 10)
    assert isinstance(hits, list) and len(hits) <= 10
    assert cold.retrieve_batch([query, "ed sheeran"], 5)[1] == cold.retrieve("ed sheeran", 5)


def test_zero_k_and_non_string(cold: XRLinearRetriever) -> None:
    assert cold.retrieve("ed sheeran", 0) == []
    assert cold.retrieve(None, 5) == []  # type: ignore[arg-type]


def test_unbuilt_retriever_raises_clearly(tmp_path: Path) -> None:
    xr = XRLinearRetriever()
    with pytest.raises(RuntimeError):
        xr.retrieve("x", 5)
    with pytest.raises(RuntimeError):
        xr.write(tmp_path)
