"""One result per recording, on real catalog rows: versions of one song share a key and collapse
into one entry; different songs (or covers) with the same title by other artists do not."""

from __future__ import annotations

import pytest

from services.catalog import Catalog
from services.serving.recordings import base_title, collapse, collapse_ranked, primary_artist, recording_key


def _rows(catalog: Catalog, title_start: str) -> list:
    return [t for t in catalog.tracks if t.title.lower().startswith(title_start.lower())]


def _key(catalog: Catalog):  # type: ignore[no-untyped-def]
    return lambda tid: recording_key(catalog.get(tid).title, catalog.get(tid).artist)


def _pop(catalog: Catalog):  # type: ignore[no-untyped-def]
    return lambda tid: float(catalog.get(tid).popularity)


@pytest.mark.parametrize(("title", "artist"), [("Shake It Off", "Taylor Swift"),
                                               ("Stereo Hearts", "Gym Class Heroes")])
def test_release_versions_collapse_into_one_result(catalog: Catalog, title: str, artist: str) -> None:
    versions = [t for t in _rows(catalog, title) if t.artist == artist]
    assert len(versions) >= 2, "the catalog has several releases of this song"
    assert len({recording_key(t.title, t.artist) for t in versions}) == 1
    ids = [t.track_id for t in versions]
    # Ranked with the least popular version first: the best-scored one represents the group.
    scores = [float(len(ids) - i) for i in range(len(ids))]
    groups = collapse(ids, scores, _key(catalog), _pop(catalog))
    assert groups == [(ids[0], ids[1:])]


def test_same_title_by_another_artist_stays_separate(catalog: Catalog) -> None:
    # "Shake It Off" by Taylor Swift and the Pickin' On Series bluegrass cover.
    rows = _rows(catalog, "Shake It Off")
    artists = {t.artist for t in rows}
    assert {"Taylor Swift", "Pickin' On Series"} <= artists
    groups = collapse([t.track_id for t in rows], [1.0] * len(rows), _key(catalog), _pop(catalog))
    assert len(groups) == len({primary_artist(a) for a in artists})
    # Exact score ties: the most popular version represents its recording.
    swift = next(rep for rep, _ in groups if catalog.get(rep).artist == "Taylor Swift")
    assert catalog.get(swift).popularity == max(t.popularity for t in rows if t.artist == "Taylor Swift")


def test_common_titles_by_different_artists_do_not_collapse(catalog: Catalog) -> None:
    perfect = [t for t in catalog.tracks if base_title(t.title) == "perfect"]
    by_artist = {primary_artist(t.artist) for t in perfect}
    assert len(by_artist) >= 3
    groups = collapse([t.track_id for t in perfect], [0.5] * len(perfect), _key(catalog), _pop(catalog))
    assert len(groups) == len(by_artist)


def test_version_suffixes_are_stripped_from_real_titles(catalog: Catalog) -> None:
    from retrievers.text import normalize

    suffixes = (" - Remastered 2011", " (feat.", " (Live)", " - Radio Edit")
    # Titles whose only bracket / dash part is that suffix: the base is exactly what precedes it.
    examples = [(t.title, s) for t in catalog.tracks for s in suffixes if s in t.title
                and not any(m in t.title.split(s)[0] for m in (" (", " - ", " ["))]
    assert len(examples) > 50
    for title, suffix in examples:
        assert base_title(title) == normalize(title.split(suffix)[0]), title


def test_key_parts() -> None:
    assert base_title("Stereo Hearts (feat. Adam Levine)") == "stereo hearts"
    assert base_title("Help! - Remastered 2009") == "help"
    assert base_title("Song feat. Somebody") == "song"
    assert base_title("(Intro)") == "intro"  # a title that is only a bracket keeps its text
    assert base_title("Here With Me") == "here with me"  # "with" is not a credit outside brackets
    assert primary_artist("Big Moe featuring Z-Ro") == "big moe"
    assert primary_artist("Earth, Wind & Fire") == "earth wind and fire"
    assert recording_key("Memories - Dillon Francis Remix", "Maroon 5") == recording_key("Memories", "Maroon 5")
    assert recording_key("Memories", "Maroon 5") != recording_key("Memories", "Conan Gray")


def test_collapse_contract() -> None:
    keys = {"a1": "A", "a2": "A", "b1": "B", "c1": "C", "b2": "B"}
    pops = {"a1": 10.0, "a2": 90.0, "b1": 50.0, "c1": 0.0, "b2": 50.0}
    groups = collapse(["a1", "b1", "a2", "c1", "b2", "a1"], [0.9, 0.8, 0.9, 0.1, 0.85, 0.9],
                      keys.__getitem__, pops.__getitem__)
    # a2 ties a1 on score and is more popular; b2 outscores b1; the duplicate a1 counts once.
    assert groups == [("a2", ["a1"]), ("b2", ["b1"]), ("c1", [])]
    assert collapse([], [], keys.__getitem__, pops.__getitem__) == []
    with pytest.raises(ValueError):
        collapse(["a1"], [], keys.__getitem__, pops.__getitem__)
    # A ranking already in its final order (what /search collapses): first id of each recording.
    assert collapse_ranked(["b2", "a1", "b1", "a2", "c1", "a1"], keys.__getitem__) == [
        ("b2", ["b1"]), ("a1", ["a2"]), ("c1", [])]
