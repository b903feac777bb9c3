"""The tantivy lexical retriever on the real shipped catalog: spearfishing (exact, misspelled,
partial), exact-beats-fuzzy, popularity prior, save/load, and hostile input."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from retrievers.base import Candidate, Document, Retriever
from retrievers.lexical import LexicalConfig, TantivyRetriever
from retrievers.text import normalize, strip_version
from services.catalog import Catalog

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def lexical(documents: list[Document], tmp_path_factory: pytest.TempPathFactory) -> TantivyRetriever:
    r = TantivyRetriever(index_dir=tmp_path_factory.mktemp("lexical") / "index")
    r.build(documents)
    return r


def _hit(catalog: Catalog, results: list[Candidate], title: str, artist: str, top: int) -> bool:
    """The catalog repeats some tracks under several ids and versions (single, album, "- 2011 Mix");
    any of them counts, compared on the base title."""
    for c in results[:top]:
        t = catalog.get(c.track_id)
        same_title = t is not None and normalize(strip_version(t.title)) == normalize(strip_version(title))
        if same_title and normalize(t.artist) == normalize(artist):
            return True
    return False


SPEARFISHING = [
    # (query, title, artist, must be within top n)
    ("Blank Space Taylor Swift", "Blank Space", "Taylor Swift", 1),
    ("tayler swft blank space", "Blank Space", "Taylor Swift", 1),
    ("ed sheeran perfect", "Perfect", "Ed Sheeran", 3),
    ("ed sheran perfect", "Perfect", "Ed Sheeran", 3),
    ("shape of you", "Shape of You", "Ed Sheeran", 1),
    # "yuo" is too short to fuzz (distance 0 up to 3 chars); "Perfect Duet (Ed Sheeran & ...)" names the
    # artist in its title too, so it can take rank 1.
    ("shape of yuo ed sheeran", "Shape of You", "Ed Sheeran", 3),
    ("billie eilish bad guy", "bad guy", "Billie Eilish", 1),
    ("bilie eilish bad guy", "bad guy", "Billie Eilish", 1),
    ("blinding lights", "Blinding Lights", "The Weeknd", 1),
    ("weeknd blindin", "Blinding Lights", "The Weeknd", 1),  # unfinished last word: prefix clause
    ("the weekend starboy", "Starboy", "The Weeknd", 3),
    ("someone like you adele", "Someone Like You", "Adele", 1),
    ("somone like you adel", "Someone Like You", "Adele", 1),
    ("coldplay viva la vida", "Viva La Vida", "Coldplay", 1),
    ("cold play paradise", "Paradise", "Coldplay", 1),  # glued pair "coldplay"
    ("despacito", "Despacito", "Luis Fonsi", 3),
    ("despasito fonsi", "Despacito", "Luis Fonsi", 1),
    ("hotline bling drake", "Hotline Bling", "Drake", 1),
    ("bohemian rhapsody queen", "Bohemian Rhapsody", "Queen", 3),
    ("BOHEMIAN   Rhapsody!!", "Bohemian Rhapsody", "Queen", 3),
]


@pytest.mark.parametrize(("query", "title", "artist", "top"), SPEARFISHING)
def test_spearfishing_finds_the_track(lexical: TantivyRetriever, catalog: Catalog, query: str, title: str,
                                      artist: str, top: int) -> None:
    results = lexical.retrieve(query, 10)
    shown = [(catalog.get(c.track_id).title, catalog.get(c.track_id).artist) for c in results[:5]]
    assert _hit(catalog, results, title, artist, top), f"{query!r} -> {shown}"


def test_contract(lexical: TantivyRetriever, documents: list[Document]) -> None:
    assert isinstance(lexical, Retriever)
    assert lexical.name == "lexical"
    assert len(lexical) == len(documents)
    res = lexical.retrieve("love", 50)
    assert len(res) == 50
    assert [c.rank for c in res] == list(range(1, 51))
    assert all(a.score >= b.score for a, b in itertools.pairwise(res))
    assert len({c.track_id for c in res}) == 50
    ids = {d.doc_id for d in documents}
    assert all(c.track_id in ids for c in res)
    assert lexical.retrieve("love", 0) == []
    batch = lexical.retrieve_batch(["love", "rock", ""], 5)
    assert [len(b) for b in batch] == [5, 5, 0]
    assert batch[0] == lexical.retrieve("love", 5)


def test_exact_outranks_fuzzy(lexical: TantivyRetriever, catalog: Catalog) -> None:
    # "despacito" is in the index, so it gets BM25; its neighbours only get the flat fuzzy score
    # when the query is misspelled. Exact query: every top hit contains the exact word.
    exact = lexical.retrieve("despacito", 5)
    assert all("despacito" in normalize(catalog.get(c.track_id).title) for c in exact)
    # A misspelled query finds the same tracks, but with a lower score than the exact query.
    fuzzy = lexical.retrieve("despasito", 5)
    assert fuzzy and fuzzy[0].track_id in {c.track_id for c in exact}
    assert fuzzy[0].score < exact[0].score


def test_exact_term_beats_fuzzy_neighbour(tmp_path: Path) -> None:
    cfg = LexicalConfig(field_boosts={"title": 1.0}, popularity_weight=0.0, fuzzy_max_df=10)
    r = TantivyRetriever(cfg, index_dir=tmp_path / "ix")
    docs = [Document("near", {"title": "prefect storm"}), Document("exact", {"title": "perfect storm"}),
            Document("other", {"title": "calm sea"})]
    r.build(docs)
    res = r.retrieve("perfect storm ", 3)
    assert [c.track_id for c in res[:2]] == ["exact", "near"]
    assert res[0].score > res[1].score


def test_popularity_reorders_ties(tmp_path: Path) -> None:
    docs = [Document("a", {"title": "golden hour"}, popularity=0.1),
            Document("b", {"title": "golden hour"}, popularity=0.9),
            Document("c", {"title": "golden hour"}, popularity=0.5)]
    flat = TantivyRetriever(LexicalConfig(popularity_weight=0.0), index_dir=tmp_path / "flat")
    flat.build(docs)
    res = flat.retrieve("golden hour", 3)
    assert len({round(c.score, 5) for c in res}) == 1  # a true tie without the prior
    prior = TantivyRetriever(LexicalConfig(popularity_weight=1.0), index_dir=tmp_path / "prior")
    prior.build(docs)
    res = prior.retrieve("golden hour", 3)
    assert [c.track_id for c in res] == ["b", "c", "a"]
    # The documented combination: bm25 * (1 + w * popularity).
    base = flat.retrieve("golden hour", 1)[0].score
    assert res[0].score == pytest.approx(base * 1.9, rel=1e-4)


def test_popularity_does_not_override_a_better_text_match(lexical: TantivyRetriever, catalog: Catalog) -> None:
    res = lexical.retrieve("hotline bling drake", 5)
    # The album cut has popularity 77 but the weakly matching tracks around it do not jump it.
    assert catalog.get(res[0].track_id).title == "Hotline Bling"


def test_save_load_round_trip(lexical: TantivyRetriever, tmp_path: Path) -> None:
    lexical.save(tmp_path / "saved")
    loaded = TantivyRetriever.load(tmp_path / "saved")
    assert loaded.config == lexical.config
    for q in ["tayler swft blank space", "sad love songs", "billie eil", "weeknd blindin", "rock"]:
        assert loaded.retrieve(q, 100) == lexical.retrieve(q, 100)


def test_build_refuses_to_wipe_a_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("not an index")
    r = TantivyRetriever(index_dir=tmp_path)
    with pytest.raises(FileExistsError):
        r.build([Document("a", {"title": "x"})])
    assert (tmp_path / "keep.txt").exists()


def test_config_validation() -> None:
    with pytest.raises(ValueError):
        LexicalConfig(field_boosts={"doc_id": 1.0})
    with pytest.raises(ValueError):
        LexicalConfig(field_boosts={"title": 0.0})
    with pytest.raises(ValueError):
        LexicalConfig(stemmer="klingon")


HOSTILE = [
    "", "   ", "\t\n", '"', '""', "'", 'title:"x"', "artist:", "a:b:c", "(", ")", "[", "]", "{}", "[* TO *]",
    "AND", "OR", "NOT", "a AND", "OR b", "NOT NOT", "+", "-", "+-", "*", "?", "~", "^", "^2", "love~2",
    "lov*", "l?ve", "/regex.*/", "\\", "\\\\\"", "a" * 10_000, "love " * 2_000, "🎵🔥💯", "love 🎵 story",
    "\x00", "love\x00story", "!!!...,,,;;;", "&&||", "<script>alert(1)</script>", "'; DROP TABLE tracks; --",
    "ＡＢＣ", "Beyoncé", "ß", "\u200d", "x" * 41, "日本語の歌", "مرحبا",
]


@pytest.mark.parametrize("query", HOSTILE)
def test_hostile_queries_never_raise(lexical: TantivyRetriever, query: str) -> None:
    res = lexical.retrieve(query, 10)
    assert isinstance(res, list)
    assert all(isinstance(c, Candidate) for c in res)
    assert len(res) <= 10


def test_query_terms_are_capped(lexical: TantivyRetriever) -> None:
    words, pairs = lexical.analyze(" ".join(f"word{i}" for i in range(500)))
    assert len(words) + len(pairs) <= lexical.config.max_query_terms


def test_not_built_raises_clearly() -> None:
    with pytest.raises(RuntimeError):
        TantivyRetriever().retrieve("x", 5)


# --- whole-title matching: title-only and partially typed titles ------------------------------------

PARTIAL_TITLES = [
    # (what the user has typed so far, title, artist): the track must be in the top 3.
    ("dancing in the moo", "Dancing in the Moonlight", "Toploader"),  # last word "moo" cut mid-word
    ("shape of y", "Shape of You", "Ed Sheeran"),  # one letter typed: too short for the term prefix
    ("someone like y", "Someone Like You", "Adele"),
    ("bohemian rhaps", "Bohemian Rhapsody", "Queen"),
    ("blinding lig", "Blinding Lights", "The Weeknd"),
    ("sweet child o", "Sweet Child O' Mine", "Guns N' Roses"),
    ("smells like teen", "Smells Like Teen Spirit", "Nirvana"),  # "teen" is a complete, known word
]


@pytest.mark.parametrize(("query", "title", "artist"), PARTIAL_TITLES)
def test_partial_title_finds_its_track_in_top_3(lexical: TantivyRetriever, catalog: Catalog, query: str,
                                                 title: str, artist: str) -> None:
    results = lexical.retrieve(query, 10)
    shown = [(catalog.get(c.track_id).title, catalog.get(c.track_id).artist) for c in results[:5]]
    assert _hit(catalog, results, title, artist, 3), f"{query!r} -> {shown}"


def test_partial_titles_of_catalog_tracks_are_found_in_top_3(documents: list[Document], catalog: Catalog,
                                                              lexical: TantivyRetriever, tmp_path: Path) -> None:
    """The long tail, not only famous songs: the relevance bench's partial titles (prefixes of real
    catalog titles, seeded), here with a seed the defaults were not tuned on. Whole-title matching
    puts the recording in the top 3 for most of them; without it (the same index minus the title
    fields) far fewer are found."""
    from bench.relevance_sets import spearfish_set

    queries = [q for q in spearfish_set(catalog, 300, seed=3) if q.kind == "partial_title"]
    assert len(queries) > 200

    def top3_rate(r: TantivyRetriever) -> float:
        return sum(any(c.track_id in q.relevant for c in r.retrieve(q.text, 3)) for q in queries) / len(queries)

    plain = TantivyRetriever(LexicalConfig(title_field=None), index_dir=tmp_path / "plain")
    plain.build(documents)
    with_titles, without = top3_rate(lexical), top3_rate(plain)
    assert with_titles >= 0.75, with_titles
    assert with_titles >= without + 0.2, (with_titles, without)


def test_exact_title_stays_above_longer_titles_it_prefixes(tmp_path: Path) -> None:
    cfg = LexicalConfig(field_boosts={"title": 3.0, "artist": 2.5}, popularity_weight=0.5)
    r = TantivyRetriever(cfg, index_dir=tmp_path / "ix")
    docs = [Document("exact", {"title": "Love", "artist": "A"}, popularity=0.1),
            Document("longer", {"title": "Love Story", "artist": "B"}, popularity=0.9),
            Document("longest", {"title": "Love Me Like You Do", "artist": "C"}, popularity=1.0)]
    r.build(docs)
    assert r.retrieve("love", 3)[0].track_id == "exact"
    # A prefix that is not a whole title: the completions, shortest and most popular first.
    assert [c.track_id for c in r.retrieve("love s", 3)][:1] == ["longer"]


def test_title_strings() -> None:
    from retrievers.lexical import title_strings

    prefixes, exact = title_strings(LexicalConfig(), "Memories - Dillon Francis Remix", "Maroon 5")
    assert exact == ["memories dillon francis remix", "maroon 5 memories dillon francis remix", "memories",
                     "maroon 5 memories"]
    assert "mem" in prefixes and "memories d" in prefixes and "memories dillon francis remix" in prefixes
    assert "me" not in prefixes and "memories " not in prefixes  # min 3 chars, never a trailing space
    assert "maroon 5 mem" in prefixes and "maroon 5" not in prefixes  # artist-only prefixes: artist field
    assert title_strings(LexicalConfig(), "", "X") == ([], [])


def test_index_saved_before_title_fields_still_loads(documents: list[Document], tmp_path: Path) -> None:
    """An index built before whole-title matching has no title_prefix/title_exact fields and a
    lexical.json without `title_field`: it loads and searches as it did."""
    import json

    old = TantivyRetriever(LexicalConfig(title_field=None), index_dir=tmp_path / "built")
    old.build(documents[:2000])
    old.save(tmp_path / "saved")
    cfg_file = tmp_path / "saved" / "lexical.json"
    raw = json.loads(cfg_file.read_text())
    for key in ("title_field", "title_artist_field", "title_prefix_weight", "title_exact_weight",
                "title_prefix_min_chars", "title_prefix_max_chars"):
        raw.pop(key)
    cfg_file.write_text(json.dumps(raw))
    loaded = TantivyRetriever.load(tmp_path / "saved")
    assert loaded.config.title_field is None
    for q in ["love", "dancing in the moo", "tayler swft"]:
        assert loaded.retrieve(q, 20) == old.retrieve(q, 20)


def test_whole_title_matching_is_off_without_a_title_field(tmp_path: Path) -> None:
    cfg = LexicalConfig(field_boosts={"text": 1.0})
    assert not cfg.whole_title and not LexicalConfig.scifact().whole_title
    r = TantivyRetriever(cfg, index_dir=tmp_path / "ix")
    r.build([Document("a", {"text": "protein folding"}), Document("b", {"text": "gene expression"})])
    assert [c.track_id for c in r.retrieve("protein", 2)] == ["a"]
