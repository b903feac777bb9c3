"""Artists and albums as results, below the API: the entity index built from the shipped catalog,
name matching (exact, typos, intent words) and the plan of where entity hits go. The API, the
feedback path and pages are in tests/test_entities_api.py."""

from __future__ import annotations

import pytest

from logged.records import DecisionRecord, ServedEntity, is_entity_id
from services.catalog import Catalog
from services.decision_store import Ranked, parse_ranked, ranked_value
from services.serving.entities import (
    SECONDARY_AFTER,
    TOP_TRACKS,
    EntityIndex,
    EntityPlanner,
    artist_entity_id,
)
from services.serving.entity_names import NameMatcher, osa_distance, parse_intent
from services.serving.recordings import primary_artist, recording_key


@pytest.fixture(scope="module")
def index(catalog: Catalog) -> EntityIndex:
    return EntityIndex.from_catalog(catalog)


@pytest.fixture(scope="module")
def planner(index: EntityIndex) -> EntityPlanner:
    return EntityPlanner(index)


def _ranked_tracks(catalog: Catalog, n: int = 50) -> tuple[list[str], list[float]]:
    ids = [t.track_id for t in sorted(catalog.tracks, key=lambda t: -t.popularity)[:n]]
    return ids, [float(n - i) for i in range(n)]


# --- the index ----------------------------------------------------------------------------------

def test_one_artist_per_primary_artist_and_one_album_per_album_id(catalog: Catalog, index: EntityIndex) -> None:
    artists = {primary_artist(t.artist) for t in catalog.tracks} - {""}
    albums = {t.album_id for t in catalog.tracks if t.album_id}
    assert sum(e.kind == "artist" for e in index.entities) == len(artists)
    assert sum(e.kind == "album" for e in index.entities) == len(albums)
    assert len(index.by_id) == len(index.entities)  # ids are unique
    assert all(is_entity_id(e.entity_id) for e in index.entities)
    # featuring credits belong to the primary artist
    assert all(primary_artist(catalog.by_id[t].artist) == "taylor swift"
               for t in index.by_id["artist:taylor-swift"].recordings)


def test_top_tracks_are_most_popular_first_one_per_recording(catalog: Catalog, index: EntityIndex) -> None:
    for eid in ("artist:taylor-swift", "artist:queen", "artist:the-weeknd"):
        e = index.by_id[eid]
        tracks = [catalog.by_id[t] for t in e.recordings]
        keys = [recording_key(t.title, t.artist) for t in tracks]
        assert len(set(keys)) == len(keys), "one version per recording"
        pops = [t.popularity for t in tracks]
        assert pops == sorted(pops, reverse=True)
        assert e.tracks == e.recordings[:TOP_TRACKS]
        # each is its recording's most popular version
        for t, key in zip(tracks, keys, strict=True):
            assert t.popularity == max(x.popularity for x in catalog.tracks
                                       if recording_key(x.title, x.artist) == key)


def test_entity_ids_are_stable_slugs() -> None:
    assert artist_entity_id("taylor swift") == "artist:taylor-swift"
    assert artist_entity_id("ac dc") == "artist:ac-dc"
    a, b = artist_entity_id("香取慎吾"), artist_entity_id("片寄涼太")
    assert a != b and a == artist_entity_id("香取慎吾")
    assert artist_entity_id("ab c") != artist_entity_id("ab-c")  # a slug that loses characters gets a hash


# --- name matching ------------------------------------------------------------------------------

def test_osa_distance() -> None:
    assert osa_distance("taylor", "tayler", 2) == 1
    assert osa_distance("swift", "swfit", 2) == 1  # a transposition is one edit
    assert osa_distance("coldplay", "coldpaly", 2) == 1
    assert osa_distance("abc", "xyz", 1) == 2  # capped at limit + 1


def test_parse_intent() -> None:
    assert parse_intent("taylor swift songs") == parse_intent("songs by taylor swift")
    assert parse_intent("taylor swift songs").core == "taylor swift"
    assert parse_intent("taylor swift songs").want == "artist"
    assert (parse_intent("1989 album").core, parse_intent("1989 album").want) == ("1989", "album")
    assert parse_intent("songs").core == "songs"  # nothing left to name
    assert parse_intent("songs about jane").want is None


def test_name_matcher_exact_forms_typos_and_words() -> None:
    m = NameMatcher(["taylor swift", "the weeknd", "ac dc", "sum me r", "drake", "love", "max"])

    def names(q: str) -> list[tuple[str, int]]:
        return [(m.names[x.index], x.edits) for x in m.match(q)]

    assert names("taylor swift") == [("taylor swift", 0)]
    assert names("weeknd") == [("the weeknd", 0)]
    assert names("acdc") == [("ac dc", 0)]
    assert names("summer") == []  # only names of initials are squeezed
    assert names("tayler swift") == [("taylor swift", 1)]
    assert names("tayler swfit") == [("taylor swift", 2)]
    assert names("draek") == [("drake", 1)]
    assert names("taylor") == []  # part of a name is not the name
    assert names("taylor swift love") == []
    assert names("mix") == []  # no typos in words under 4 letters
    assert names("lvoe") == []  # nor in a lone 4-letter word: too many names are one edit away
    assert names("lvoe drake") == []  # a name is matched whole
    assert m.match("tayler swift", fuzzy=False) == []


# --- which entity a query asks for ----------------------------------------------------------------

def _first(planner: EntityPlanner, q: str) -> list[tuple[str, int, bool]]:
    return [(n.entity.entity_id, n.edits, n.first) for n in planner.named(q)]


def test_an_artist_query_names_the_artist_exactly_or_with_a_typo(planner: EntityPlanner) -> None:
    for q, edits in (("taylor swift", 0), ("tayler swift", 1), ("taylor swift songs", 0), ("songs by tayler swift", 1),
                     ("tayler swfit", 2)):
        named = _first(planner, q)
        assert named[0] == ("artist:taylor-swift", edits, True), q
    assert _first(planner, "coldpaly")[0][:2] == ("artist:coldplay", 1)
    # the whole query is tried as a name before its intent words are taken off
    assert _first(planner, "dorrough music")[0] == ("artist:dorrough-music", 0, True)
    # a common word is not a typo of a rare name ("Txylor" is an artist too)
    assert _first(planner, "taylor") == []


def test_a_title_that_shares_a_word_names_nothing(planner: EntityPlanner) -> None:
    for q in ("taylor", "sad love songs", "shake it off", "taylor swift shake it off", "gym rap",
              "summer hits", "blinding lights"):
        assert _first(planner, q) == [], q
    # "love" is the whole name of an album ("Love?"), and the title of more popular songs
    assert all(not n.first for n in planner.named("love"))


def test_a_song_title_beats_a_less_popular_artist_and_a_single(planner: EntityPlanner, index: EntityIndex) -> None:
    # IRIS the artist is less popular than "Iris" the Goo Goo Dolls song: a hit, but not first
    assert _first(planner, "iris") == [("artist:iris", 0, False)]
    # what was typed is the song's title, whatever the name's full form ("The Revival")
    assert all(not n.first for n in planner.named("revival"))
    # a single's album named with the song's full title ("Taste (feat. Offset)") is that single
    for q in ("tyga taste feat offset", "the chainsmokers closer feat halsey", "sech otro trago remix"):
        assert planner.named(q) == [], q
    # an album that is one song's single is that song's query: no album hit
    singles = [e for e in index.entities if e.kind == "album" and e.title_track and e.n_recordings == 1]
    assert singles
    for e in singles[:50]:
        assert all(n.entity.entity_id != e.entity_id for n in planner.named(e.norm))


def test_albums_by_name_with_the_artist_or_the_word_album(planner: EntityPlanner, index: EntityIndex) -> None:
    named = _first(planner, "1989")
    assert len(named) == 1 and named[0][2], "one edition of Taylor Swift's 1989, first"
    assert index.by_id[named[0][0]].artist == "Taylor Swift"
    assert _first(planner, "greatest hits") == []  # a name 68 albums share names none of them
    queen = _first(planner, "queen greatest hits")
    assert queen and index.by_id[queen[0][0]].artist == "Queen" and queen[0][2]
    assert _first(planner, "taylor swift 1989")[0] == named[0]
    # "Malibu" is a Miley Cyrus song: Anderson .Paak's album comes after the songs, unless the
    # query names him too
    malibu = [n for n in planner.named("malibu") if n.entity.artist == "Anderson .Paak"]
    assert malibu and not malibu[0].first
    assert planner.named("anderson paak malibu")[0].entity == malibu[0].entity
    assert planner.named("anderson paak malibu")[0].first
    assert _first(planner, "1989 album")[0] == named[0]
    assert all(index.by_id[e].kind == "album" for e, _, _ in _first(planner, "queen album"))


# --- where the hits go ------------------------------------------------------------------------------

def test_the_named_entity_comes_first_and_others_follow_the_best_tracks(planner: EntityPlanner,
                                                                        catalog: Catalog) -> None:
    ids, scores = _ranked_tracks(catalog)
    plan = planner.plan("taylor swift", ("track", "artist", "album"), ids, scores, depth=50)
    assert plan.placed[0].position == 1 and plan.placed[0].entity.entity_id == "artist:taylor-swift"
    assert plan.placed[0].match == "name" and plan.placed[0].tracks == plan.placed[0].entity.tracks
    assert plan.tracks_within(10) == 10 - len(plan.within(10))
    assert plan.track_positions(3)[0] == 2
    # "iris": the artist after the first tracks
    plan = planner.plan("iris", ("track", "artist", "album"), ids, scores, depth=50)
    assert [p.position for p in plan.placed] == [SECONDARY_AFTER + 1]
    assert plan.track_positions(SECONDARY_AFTER + 1) == [*range(1, SECONDARY_AFTER + 1), SECONDARY_AFTER + 2]
    # types narrow it; tracks only = today's behaviour
    assert planner.plan("taylor swift", ("track", "album"), ids, scores, depth=50).placed == []
    only_tracks = planner.plan("taylor swift", ("track",), ids, scores, depth=50)
    assert only_tracks.placed == [] and only_tracks.tracks_within(10) == 10
    # a query naming nothing: no entity hit
    assert planner.plan("sad love songs", ("track", "artist", "album"), ids, scores, depth=50).placed == []


def test_without_tracks_the_hits_are_the_entities_of_the_ranked_tracks(planner: EntityPlanner,
                                                                       catalog: Catalog, index: EntityIndex) -> None:
    ids, scores = _ranked_tracks(catalog)
    plan = planner.plan("sad love songs", ("artist",), ids, scores, depth=20)
    assert plan.tracks_within(10) == 0 and len(plan.placed) == 20
    assert [p.position for p in plan.placed] == list(range(1, 21))
    expected = list(dict.fromkeys(index.track_entities[t][0] for t in ids))[:20]
    assert [p.entity.entity_id for p in plan.placed] == expected
    assert all(p.match == "tracks" for p in plan.placed)
    plan = planner.plan("tayler swift", ("artist",), ids, scores, depth=20)
    assert plan.placed[0].entity.entity_id == "artist:taylor-swift" and plan.placed[0].match == "typo"
    assert len({p.entity.entity_id for p in plan.placed}) == len(plan.placed)


def test_a_filter_narrows_the_top_tracks_and_drops_an_entity_without_any(planner: EntityPlanner,
                                                                         catalog: Catalog) -> None:
    ids, scores = _ranked_tracks(catalog)
    recent = {t.track_id for t in catalog.tracks if (t.year or 0) >= 2019}
    plan = planner.plan("taylor swift", ("track", "artist"), ids, scores, depth=50,
                        allowed=lambda tids: [t in recent for t in tids])
    assert plan.placed and set(plan.placed[0].tracks) <= recent
    assert planner.plan("taylor swift", ("track", "artist"), ids, scores, depth=50,
                        allowed=lambda tids: [False] * len(tids)).placed == []


def test_the_kept_ranking_and_the_logged_page_hold_the_entities_at_their_positions(planner: EntityPlanner,
                                                                                   catalog: Catalog) -> None:
    ids, scores = _ranked_tracks(catalog, 12)
    plan = planner.plan("queen", ("track", "artist", "album"), ids, scores, depth=10)
    tracks = Ranked(query="queen", ids=ids, scores=scores, found_by=[["lexical"]] * len(ids), versions={})
    merged = parse_ranked(ranked_value(plan.ranked(tracks, 10)))
    at = {p.position: p.entity.entity_id for p in plan.placed}
    rest = iter(ids)
    assert merged.ids == [at.get(pos) or next(rest) for pos in range(1, 11)]
    assert merged.ids[0] == "artist:queen" and merged.ids[1] == ids[0]
    assert merged.found_by[0] == [] and merged.found_by[1] == ["lexical"]
    assert merged.entities["artist:queen"] == ("name", list(plan.placed[0].tracks))
    n_tracks = plan.tracks_within(10)
    rec = DecisionRecord(search_id="s", ts=0.0, query="queen", query_norm="queen", context={}, policy="p",
                         actions=[], probabilities=[], chosen=0, propensity=1.0, candidates={},
                         served=ids[:n_tracks], entities=[p.served() for p in plan.within(10)])
    assert rec.page() == merged.ids
    # old logs (no entities, no types) still read, and their page is their served list
    old = DecisionRecord.model_validate_json(rec.model_copy(update={"entities": []}).model_dump_json(
        exclude={"entities", "types"}))
    assert old.entities == [] and old.types is None and old.page() == ids[:n_tracks]
    # an entity placed past the last track leaves the gap visible, not shifted
    gap = rec.model_copy(update={"served": ids[:1], "entities": [
        ServedEntity(entity_id="artist:queen", kind="artist", position=3, tracks=["x"], match="name")]})
    assert gap.page() == [ids[0], "", "artist:queen"]
