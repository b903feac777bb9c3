"""Ranker library: feature registry, featurizer, LambdaMART training, click labels, artifacts."""

from __future__ import annotations

import json
import math
import random
from dataclasses import dataclass

import numpy as np
import pytest

from logged.records import FeedbackEvent, JoinedRecord
from ranker import labels
from ranker.features import DEFAULT_REGISTRY, Candidates, FeatureRegistry, QueryInput
from ranker.model import ModelLoadError, RankData, load, train
from ranker.profile import build_profile, profile_features
from ranker.tracks import TrackRecord, TrackTable

R = DEFAULT_REGISTRY


# ---------------------------------------------------------------------------------------------
# A small synthetic catalog with the structure that makes music ranking hard: many titles shared
# by several artists (covers, common words), a skewed popularity, and a lexical retriever that
# returns everything sharing a token with the query.
# ---------------------------------------------------------------------------------------------

_SYL = ["ka", "lo", "mi", "ra", "te", "su", "no", "vi", "da", "ze", "po", "lu", "ne", "sa", "ti", "bo"]


@dataclass(frozen=True)
class Track:
    track_id: str
    title: str
    artist: str
    album: str
    popularity: float
    year: int
    genres: tuple[str, ...]


def _word(rng: random.Random) -> str:
    return "".join(rng.choice(_SYL) for _ in range(rng.randint(2, 3)))


def make_catalog(seed: int = 0, n_artists: int = 120, per_artist: int = 5) -> list[Track]:
    rng = random.Random(seed)
    words = sorted({_word(rng) for _ in range(400)})
    shared_titles = [" ".join(rng.sample(words, rng.randint(1, 2))) for _ in range(60)]
    genres = ["pop", "rock", "rap", "latin", "edm", "r b"]
    tracks = []
    for a in range(n_artists):
        artist = " ".join(rng.sample(words, rng.randint(1, 2)))
        album = " ".join(rng.sample(words, 2))
        for j in range(per_artist):
            # a third of titles are shared with other artists, so "title" alone is ambiguous
            title = rng.choice(shared_titles) if rng.random() < 0.33 else " ".join(rng.sample(words, rng.randint(1, 3)))
            tracks.append(Track(f"t{a:03d}{j}", title, artist, album, rng.betavariate(1.2, 3.0),
                                rng.randint(1970, 2023), tuple(rng.sample(genres, 2))))
    return tracks


def table_of(catalog: list[Track]) -> TrackTable:
    return TrackTable.build(TrackRecord(t.track_id, t.title, t.artist, t.album, t.genres, t.popularity, t.year)
                            for t in catalog)


def retrieve(query: str, catalog: list[Track], table: TrackTable, rng: random.Random, k: int = 40) -> Candidates:
    """Lexical (token overlap + popularity prior) top-k plus a few random 'dense' neighbours."""
    q = set(query.split())
    scored = []
    for t in catalog:
        overlap = len(q & set(f"{t.title} {t.artist} {t.album}".split()))
        if overlap:
            scored.append((overlap + 0.3 * t.popularity, t))
    scored.sort(key=lambda p: -p[0])
    lex = {t.track_id: (s, r) for r, (s, t) in enumerate(scored[:k], start=1)}
    dense_pool = rng.sample(catalog, 8)
    dense = {t.track_id: (rng.uniform(0.2, 0.6), r) for r, t in enumerate(dense_pool, start=1)}
    ids = list(dict.fromkeys([*lex, *dense]))

    def column(hits: dict[str, tuple[float, int]], i: int) -> np.ndarray:
        return np.array([hits[t][i] if t in hits else np.nan for t in ids], dtype=np.float32)

    return Candidates(rows=table.rows(ids),
                      retriever_scores={"lexical": column(lex, 0), "dense": column(dense, 0)},
                      retriever_ranks={"lexical": column(lex, 1), "dense": column(dense, 1)},
                      dense_cos=np.array([rng.uniform(0.0, 0.7) for _ in ids], dtype=np.float32))


def ndcg10(scores: np.ndarray, rel: np.ndarray) -> float:
    order = np.argsort(-scores, kind="stable")[:10]
    disc = 1.0 / np.log2(np.arange(2, 12))
    dcg = float(((2.0 ** rel[order] - 1) * disc[: order.size]).sum())
    ideal = np.sort(rel)[::-1][:10]
    idcg = float(((2.0 ** ideal - 1) * disc[: ideal.size]).sum())
    return dcg / idcg if idcg > 0 else 0.0


@pytest.fixture(scope="module")
def catalog() -> list[Track]:
    return make_catalog()


@pytest.fixture(scope="module")
def table(catalog: list[Track]) -> TrackTable:
    return table_of(catalog)


# ---------------------------------------------------------------------------------------------
# Registry and featurizer
# ---------------------------------------------------------------------------------------------

def test_registry_names_unique_and_versioned() -> None:
    assert len(set(R.names)) == len(R.names) == R.dim
    for r in ("lexical", "dense", "xr", "q2e"):
        assert f"ret_{r}_score" in R.index and f"ret_{r}_rank" in R.index
    other = FeatureRegistry(["lexical", "dense"])
    assert other.version != R.version
    assert FeatureRegistry().version == R.version  # deterministic


def _three() -> TrackTable:
    return TrackTable.build([
        TrackRecord("a", "love story", "taylor swift", "fearless", ("pop", "country"), 0.9, 2008),
        TrackRecord("b", "love story remix", "someone else", "", ("edm",), 0.2, None, base_title="love story"),
        TrackRecord("c", "other song", "nobody", "x", (), 0.1, 1999),
    ])


def test_featurize_shape_order_and_missing_values() -> None:
    table = _three()
    nan = np.nan
    cands = Candidates(
        rows=np.array([0, 1, 2]),
        retriever_scores={"lexical": np.array([12.5, nan, nan]), "q2e": np.array([0.8, nan, nan]),
                          "dense": np.array([nan, 0.7, nan]), "xr": np.array([nan, nan, 0.5]),
                          "unknown": np.array([nan, nan, 1.0])},
        retriever_ranks={"lexical": np.array([1, nan, nan]), "q2e": np.array([2, nan, nan]),
                         "dense": np.array([nan, 1, nan]), "xr": np.array([nan, nan, 3]),
                         "unknown": np.array([nan, nan, 1])},
        dense_cos=np.array([0.41, nan, nan], dtype=np.float32), q2e_ctr=np.array([0.3, nan, nan], dtype=np.float32))
    q = QueryInput("taylor swift love story", {"pop": 0.7, "country": 0.2})
    x = R.featurize(q, cands, table)
    assert x.shape == (3, R.dim) and x.dtype == np.float32

    def f(i: int, name: str) -> float:
        return float(x[i, R.index[name]])

    assert f(0, "ret_lexical_score") == pytest.approx(12.5) and f(0, "ret_lexical_rank") == 1
    assert math.isnan(f(0, "ret_dense_score")) and math.isnan(f(0, "ret_xr_rank"))
    assert f(0, "n_retrievers") == 2 and f(0, "best_rank") == 1
    assert f(2, "n_retrievers") == 1  # a retriever outside the registry is not counted
    assert f(0, "popularity") == pytest.approx(0.9) and f(0, "year") == 2008 and math.isnan(f(1, "year"))
    assert f(0, "tag_count") == 2 and f(2, "tag_count") == 0
    assert f(0, "artist_title_exact") == 1 and f(0, "title_in_query") == 1 and f(0, "artist_in_query") == 1
    assert f(0, "title_exact") == 0 and f(0, "title_qcov") == pytest.approx(0.5)
    assert f(0, "title_jaccard") == pytest.approx(0.5) and f(0, "all_qcov") == 1.0
    assert f(0, "artist_title_edit") == 0.0 and 0 < f(1, "title_edit") < 1
    assert f(1, "title_in_query") == 0 and f(1, "title_qcov") == pytest.approx(0.5)
    # a typed title with a typo is near the base title even where the full title carries a version
    xb = R.featurize(QueryInput("love stroy"), Candidates(rows=np.array([1])), table)
    assert xb[0, R.index["base_title_edit"]] == pytest.approx(0.2) and xb[0, R.index["title_edit"]] > 0.4
    assert R.featurize(QueryInput("love story"), Candidates(rows=np.array([1])), table)[0, R.index[
        "base_title_exact"]] == 1
    assert f(0, "genre_affinity") == pytest.approx(0.9) and f(1, "genre_affinity") == 0
    assert f(0, "dense_cos") == pytest.approx(0.41) and math.isnan(f(1, "dense_cos"))
    assert f(0, "q2e_ctr") == pytest.approx(0.3) and math.isnan(f(2, "q2e_ctr"))
    assert (x[:, R.index["query_len"]] == 4).all()
    # no profile and no intent given: those columns stay missing
    assert np.isnan(x[:, R.index["prf_tags"]]).all() and np.isnan(x[:, R.intent_columns]).all()

    # title prefix (a partially typed title), exact album, and an unknown user (no affinity -> NaN)
    x2 = R.featurize(QueryInput("love st"), Candidates(rows=np.array([0, 1, 2])), table)
    assert x2[0, R.index["title_prefix"]] == 1 and x2[1, R.index["title_prefix"]] == 1
    assert x2[2, R.index["title_prefix"]] == 0
    assert np.isnan(x2[:, R.index["genre_affinity"]]).all()
    assert R.featurize(QueryInput("fearless"), Candidates(rows=np.array([0, 2])), table)[:, R.index["album_exact"]
                                                                                     ].tolist() == [1, 0]
    assert R.featurize(QueryInput("x"), Candidates(rows=np.zeros(0, dtype=np.int64)), table).shape == (0, R.dim)


def test_token_counts_equal_set_intersections(catalog: list[Track], table: TrackTable) -> None:
    """The vectorized gather/bincount counts exactly what a set intersection per track counts."""
    rng = random.Random(3)
    words = sorted({w for t in catalog for w in f"{t.title} {t.artist}".split()})
    for _ in range(50):
        q = [*rng.sample(words, rng.randint(1, 4)), "unknownword"]
        rows = np.array(sorted(rng.sample(range(len(catalog)), 30)))
        mask = table.query_token_mask(q)
        got = table.title_tokens.counts(rows, mask)
        want = [len(set(q) & set(catalog[r].title.split())) for r in rows]
        assert got.tolist() == want
        got_all = table.all_tokens.counts(rows, mask)
        t = [catalog[r] for r in rows]
        assert got_all.tolist() == [len(set(q) & set(f"{x.title} {x.artist} {x.album}".split())) for x in t]


def test_profile_features_measure_agreement_with_the_other_top_results() -> None:
    """Four rock tracks from the 80s and one edm track from 2019 vote; each candidate is scored
    against the others' votes (leave-one-out), so a lone voter does not agree with itself."""
    recs = [TrackRecord(f"r{i}", f"rock {i}", "band", "", ("rock",), 0.5, 1984 + i, audio=(0.1 * i, 0.0))
            for i in range(4)]
    recs += [TrackRecord("e", "drop", "dj", "", ("edm",), 0.5, 2019, audio=(5.0, 5.0)),
             TrackRecord("new", "later", "band", "", ("rock",), 0.5, 1986, audio=(0.2, 0.0)),
             TrackRecord("far", "elsewhere", "other", "", ("edm",), 0.5, 2020, audio=(4.0, 4.0))]
    table = TrackTable.build(recs)
    profile = build_profile(table, {"a": [0, 1, 2, 3, 4]})
    assert profile.weights.sum() == pytest.approx(1.0)
    f = profile_features(table, profile, np.array([0, 4, 5, 6]))
    tags, year, artist, audio = f.T
    assert tags[2] > 0.7 and tags[1] < 0.3  # "new" (rock) agrees; the lone edm voter does not
    w = 1.0 / (5.0 + np.arange(1, 6))  # the rank discount of ranker.profile (K0 = 5)
    assert tags[0] == pytest.approx(w[1:4].sum() / w[1:].sum(), rel=1e-5)  # r0 against the other voters
    assert year[2] > year[3] and artist[2] > 0.7 and artist[3] == 0.0
    assert audio[2] > audio[3]
    empty = build_profile(table, {})
    assert empty.empty and np.isnan(profile_features(table, empty, np.array([0, 1]))).all()


# ---------------------------------------------------------------------------------------------
# Learning
# ---------------------------------------------------------------------------------------------

def _title_pop_problem(catalog: list[Track], table: TrackTable, n_queries: int,
                       seed: int) -> tuple[RankData, list[np.ndarray]]:
    """Relevance = exact title match + popularity + noise, graded 0..3."""
    rng = random.Random(seed)
    nrng = np.random.default_rng(seed)
    xs, ys, sizes = [], [], []
    for _ in range(n_queries):
        src = rng.choice(catalog)
        cands = retrieve(src.title, catalog, table, rng)
        x = R.featurize(QueryInput(src.title), cands, table)
        exact = np.array([catalog[r].title == src.title for r in cands.rows], dtype=float)
        pop = np.array([catalog[r].popularity for r in cands.rows])
        latent = 2.0 * exact + 1.5 * pop + nrng.normal(0, 0.25, len(cands.rows))
        y = np.digitize(latent, [1.0, 2.2, 3.0]).astype(np.int32)
        xs.append(x)
        ys.append(y)
        sizes.append(len(cands.rows))
    return RankData(np.concatenate(xs), np.concatenate(ys), np.array(sizes)), ys


def test_lambdamart_beats_random_on_held_out_queries(catalog: list[Track], table: TrackTable) -> None:
    tr, _ = _title_pop_problem(catalog, table, 250, seed=1)
    va, _ = _title_pop_problem(catalog, table, 60, seed=2)
    te, te_y = _title_pop_problem(catalog, table, 120, seed=3)
    model = train(tr.X, tr.y, tr.group, valid=va, num_boost_round=80)
    assert model.meta["n_queries"] == 250 and "valid_ndcg@10" in model.meta["metrics"]
    scores = model.predict(te.X)
    rng = np.random.default_rng(0)
    bounds = np.concatenate([[0], np.cumsum(te.group)])
    model_ndcg, random_ndcg = [], []
    for i, y in enumerate(te_y):
        s = scores[bounds[i]:bounds[i + 1]]
        model_ndcg.append(ndcg10(s, y))
        random_ndcg.append(ndcg10(rng.random(len(y)), y))
    m, r = float(np.mean(model_ndcg)), float(np.mean(random_ndcg))
    assert m > 0.85, (m, r)
    assert m > r + 0.3, (m, r)


# ---------------------------------------------------------------------------------------------
# Click labels
# ---------------------------------------------------------------------------------------------

def test_cascade_labels_known_example() -> None:
    served = ["a", "b", "c", "d", "e", "f"]
    events = [("c", "click", 3), ("c", "play", 3), ("a", "skip", 1), ("d", "click", 4), ("d", "skip", 4),
              ("zz", "click", 9)]
    # a skipped -> 0; b shown above the last action, untouched -> 0; c played -> 3;
    # d clicked then skipped -> 0; e, f below the last action -> ignored; zz was not served.
    assert labels.cascade_labels(served, events) == [0, 0, 3, 0, None, None]
    assert labels.cascade_labels(served, [("b", "like", 2)]) == [0, 2, None, None, None, None]
    assert labels.cascade_labels(served, [("e", "add_to_favorites", 5), ("e", "skip", 5)])[4] == 2
    assert labels.cascade_labels(served, []) == [None] * 6
    assert labels.propensity(4, eta=1.0) == 0.25


def _record(sid: str, served: list[str], events: list[tuple[str, str, int]], names: list[str]) -> dict:
    feats = [[float(i), None] + [0.0] * (len(names) - 2) for i in range(len(served))]
    rec = JoinedRecord(
        search_id=sid, ts=0.0, query="q", query_norm="q", context={}, policy="fixed", actions=[],
        probabilities=[], chosen=0, propensity=1.0, candidates={}, served=served, feature_names=names,
        features=feats,
        events=[FeedbackEvent(event_id=f"{sid}-{i}", search_id=sid, track_id=t, type=ty, position=p, timestamp=0.0)
                for i, (t, ty, p) in enumerate(events)])
    return rec.model_dump()


def test_training_set_from_joined_records_with_ipw() -> None:
    names = R.names
    recs = [
        _record("s1", ["a", "b", "c", "d"], [("c", "click", 3)], names),
        _record("s2", ["a", "b"], [], names),  # no events: no information
        _record("s3", ["a", "b"], [("a", "skip", 1)], names),  # no positive
        _record("s4", ["a", "b"], [("a", "play", 1)], ["old_feature"] * len(names)),  # other registry
        _record("s5", ["a", "b", "c"], [("a", "like", 1), ("b", "play", 2)], names),
    ]
    data, st = labels.build_training_set(recs, names, eta=1.0)
    assert (st.records, st.groups, st.rows) == (5, 2, 5)
    assert (st.skipped_no_events, st.skipped_no_positive, st.skipped_feature_mismatch) == (1, 1, 1)
    assert data.group.tolist() == [3, 2] and data.y.tolist() == [0, 0, 1, 2, 3]
    assert data.weights is not None and data.weights.tolist() == [1.0, 1.0, 3.0, 1.0, 2.0]
    assert data.X.shape == (5, R.dim) and np.isnan(data.X[:, 1]).all() and data.X[2, 0] == 2.0
    unweighted, _ = labels.build_training_set(recs, names)
    assert unweighted.weights is None
    # LightGBM accepts the weighted set as is
    model = train(np.tile(data.X, (4, 1)), np.tile(data.y, 4), np.tile(data.group, 4), weights=np.tile(data.weights, 4),
                  num_boost_round=3, params={"min_data_in_leaf": 1})
    assert model.meta["weighted"] is True


def test_an_event_on_an_entity_labels_its_track_without_moving_the_cascade() -> None:
    served = ["a", "b", "c", "d", "e"]
    on_artist = {"track_id": "c", "type": "play", "position": 1, "entity_id": "artist:x"}
    # played from the artist hit above the list: c is a positive, nothing else was seen to be read
    assert labels.cascade_labels(served, [on_artist]) == [None, None, 3, None, None]
    # with a click on d in the list, a..c were read: c keeps its label, a, b are 0
    assert labels.cascade_labels(served, [on_artist, ("d", "click", 5)]) == [0, 0, 3, 1, None]
    skip = {**on_artist, "type": "skip"}
    assert labels.cascade_labels(served, [skip]) == [None, None, 0, None, None]

    names = R.names
    rec = _record("s1", ["a", "b"], [], names)
    rec["sampled"], rec["sampled_features"] = ["c", "d"], [[9.0, None] + [0.0] * (len(names) - 2)] * 2
    rec["events"] = [{**on_artist, "event_id": "e1", "search_id": "s1", "timestamp": 0.0}]
    data, st = labels.build_training_set([rec], names, eta=1.0)
    # the played track was among the sampled candidates: its row is a positive there, never a 0
    assert st.groups == 1 and data.y.tolist() == [3, 0] and data.weights.tolist() == [1.0, 1.0]
    rec["events"][0]["track_id"] = "zz"  # ranked nowhere this search logged: nothing to learn
    assert labels.build_training_set([rec], names)[1].skipped_no_positive == 1


# ---------------------------------------------------------------------------------------------
# Artifacts
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_model(catalog: list[Track], table: TrackTable):
    data, _ = _title_pop_problem(catalog, table, 60, seed=9)
    return train(data.X, data.y, data.group, num_boost_round=20), data


def test_write_load_round_trip(tmp_path, small_model) -> None:
    model, data = small_model
    path = model.write(tmp_path)
    assert sorted(p.name for p in path.iterdir()) == ["meta.json", "model.txt"]
    meta = json.loads((path / "meta.json").read_text())
    assert meta["feature_names"] == R.names and meta["registry_version"] == R.version and meta["n_queries"] == 60
    assert "version" not in meta  # the artifact store names versions, not the library
    loaded = load(path, version="v0002")
    assert loaded.version == "v0002" and load(path).version is None
    np.testing.assert_array_equal(loaded.predict(data.X), model.predict(data.X))


def test_compiled_ranker_scores_exactly_like_lightgbm(tmp_path, small_model) -> None:
    """Serving scores with the trees compiled by lleaves: the same scores (so the same ranking) on
    real feature rows, missing values included, as LightGBM's predictor."""
    model, data = small_model
    path = model.write(tmp_path)
    fast = load(path, compiled=True)
    assert fast.compiled is not None
    x = data.X.copy()
    x[::7, R.index["dense_cos"]] = np.nan
    np.testing.assert_allclose(fast.predict(x), model.booster.predict(x), rtol=0, atol=1e-9)
    assert fast.predict(np.zeros((0, R.dim), dtype=np.float32)).shape == (0,)


def test_a_ranker_that_cannot_be_compiled_faithfully_is_served_by_lightgbm(tmp_path, small_model,
                                                                          monkeypatch) -> None:
    model, data = small_model
    path = model.write(tmp_path)
    import lleaves

    def broken(self, *a, **k):  # what a compiler bug or an unsupported model looks like
        raise RuntimeError("cannot compile")

    with monkeypatch.context() as m:
        m.setattr(lleaves.Model, "compile", broken)
        slow = load(path, compiled=True)
    assert slow.compiled is None
    np.testing.assert_array_equal(slow.predict(data.X), model.predict(data.X))
    # A compiled copy that scores differently is refused too: it would change the ranking.
    from ranker import compiled as compiled_mod

    with monkeypatch.context() as m:
        m.setattr(compiled_mod.CompiledForest, "predict", lambda self, X: np.zeros(len(X)))
        assert load(path, compiled=True).compiled is None


def test_load_refuses_mismatched_features(tmp_path, small_model) -> None:
    model, _ = small_model
    path = model.write(tmp_path)
    with pytest.raises(ModelLoadError, match="missing"):
        load(path, FeatureRegistry(["lexical", "dense"]))
    meta = json.loads((path / "meta.json").read_text())
    meta["feature_names"] = list(reversed(meta["feature_names"]))
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ModelLoadError, match="different order"):
        load(path)


def test_load_refuses_corrupt_files(tmp_path, small_model) -> None:
    model, _ = small_model
    path = model.write(tmp_path)
    text = (path / "model.txt").read_text()
    (path / "model.txt").write_text(text[: len(text) // 2])
    with pytest.raises(ModelLoadError, match="SHA-256"):
        load(path)
    (tmp_path / "two").mkdir()
    path2 = model.write(tmp_path / "two")
    (path2 / "meta.json").write_text("{not json")
    with pytest.raises(ModelLoadError, match="cannot read"):
        load(path2)
    with pytest.raises(ModelLoadError, match="cannot read"):
        load(tmp_path / "empty")


def test_train_rejects_bad_input() -> None:
    x = np.zeros((4, R.dim), dtype=np.float32)
    with pytest.raises(ValueError, match="group"):
        train(x, np.zeros(4), [3])
    with pytest.raises(ValueError, match="integers"):
        train(x, np.array([0, 0.5, 1, 0]), [4])
    with pytest.raises(ValueError, match="registry order"):
        train(np.zeros((4, 3)), np.zeros(4), [4])
