"""The one feature registry shared by training and serving, and the featurizer.

Serving logs `featurize()` rows with `FeatureRegistry.names`; training reads those rows back and
the model refuses to load against a registry whose names differ, so a feature added, removed or
reordered can never silently shift columns between train and serve.

One search's candidates are rows of a `TrackTable` (ranker.tracks: the per-track columns, built
once) plus per-candidate arrays that only the search knows (retriever scores and ranks, dense
cosine, click-memory scores, query-intent agreement). Every feature is then a vector operation
over those rows: no per-candidate Python objects, which is what kept 300 candidates from scoring
within the 2 ms budget.

The query must already be normalized with the function used at indexing time
(`retrievers.text.normalize` in this project); this module only splits on spaces.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from rapidfuzz.distance import Levenshtein
from rapidfuzz.process import cdist

from ranker.profile import QueryProfile, profile_features
from ranker.tracks import TrackTable, string_hash

NAN = float("nan")
DEFAULT_RETRIEVERS: tuple[str, ...] = ("lexical", "dense", "xr", "q2e")


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    name: str
    default: float  # value when the input is missing; NaN lets LightGBM route missing values itself
    description: str


@dataclass(frozen=True, slots=True)
class QueryInput:
    query_norm: str
    # genre name (normalized) -> weight; empty when the user is unknown (feature becomes NaN)
    user_genre_affinity: Mapping[str, float] = field(default_factory=dict)
    profile: QueryProfile | None = None  # pseudo-relevance profile of the retrievers' top results


@dataclass(frozen=True, slots=True)
class Candidates:
    """One search's candidates: table rows and what the search knows of each (NaN = unknown)."""

    rows: np.ndarray  # int64 rows of the TrackTable
    retriever_scores: Mapping[str, np.ndarray] = field(default_factory=dict)  # name -> float32 (n,), NaN absent
    retriever_ranks: Mapping[str, np.ndarray] = field(default_factory=dict)  # name -> 1-based, NaN absent
    dense_cos: np.ndarray | None = None  # cosine to the query embedding when the query was encoded
    q2e_ctr: np.ndarray | None = None  # smoothed (Beta-prior) click-through rate per (query, track)
    intent: np.ndarray | None = None  # (n, 3): agreement with the parsed query's tags, years, mood


# Per-(query, candidate) text features, in registry order. Kept as one list because featurize
# fills them positionally and the two must not drift apart.
_TEXT_SPECS: tuple[FeatureSpec, ...] = (
    FeatureSpec("title_exact", 0.0, "query == title"),
    FeatureSpec("title_prefix", 0.0, "title starts with the query (partial title typed)"),
    FeatureSpec("title_in_query", 0.0, "the whole title occurs in the query as a token sequence"),
    FeatureSpec("title_jaccard", 0.0, "token Jaccard(query, title)"),
    FeatureSpec("title_qcov", 0.0, "share of query tokens found in the title"),
    FeatureSpec("artist_exact", 0.0, "query == artist"),
    FeatureSpec("artist_prefix", 0.0, "artist starts with the query"),
    FeatureSpec("artist_in_query", 0.0, "the whole artist name occurs in the query"),
    FeatureSpec("artist_jaccard", 0.0, "token Jaccard(query, artist)"),
    FeatureSpec("artist_qcov", 0.0, "share of query tokens found in the artist"),
    FeatureSpec("album_exact", 0.0, "query == album"),
    FeatureSpec("album_jaccard", 0.0, "token Jaccard(query, album)"),
    FeatureSpec("album_qcov", 0.0, "share of query tokens found in the album"),
    FeatureSpec("artist_title_exact", 0.0, "query == 'artist title' or 'title artist'"),
    FeatureSpec("all_qcov", 0.0, "share of query tokens found in title, artist or album"),
)
# Agreement with what the retrievers' top results share (ranker.profile), NaN when nothing voted.
_PROFILE_SPECS: tuple[FeatureSpec, ...] = (
    FeatureSpec("prf_tags", NAN, "share of the top results' tag votes on this track's genres/subgenres"),
    FeatureSpec("prf_year", NAN, "density of the top results' release years at this track's year"),
    FeatureSpec("prf_artist", NAN, "share of the top results' votes on this track's artist"),
    FeatureSpec("prf_audio", NAN, "-mean squared distance of the audio features to the top results' centroid"),
)
# Agreement with what query understanding read in the query (NaN when it read nothing of the kind).
_INTENT_SPECS: tuple[FeatureSpec, ...] = (
    FeatureSpec("intent_tags", NAN, "1 if the track carries a genre/subgenre the query names, else 0"),
    FeatureSpec("intent_year", NAN, "1 inside the year range the query names, decaying outside it"),
    FeatureSpec("intent_mood", NAN, "closeness of the audio features to the query's mood/activity targets"),
)
INTENT_WIDTH = len(_INTENT_SPECS)


def _build_specs(retrievers: Sequence[str]) -> tuple[FeatureSpec, ...]:
    specs: list[FeatureSpec] = []
    for r in retrievers:
        specs.append(FeatureSpec(f"ret_{r}_score", NAN, f"{r} retriever score (NaN if it did not return the track)"))
        specs.append(FeatureSpec(f"ret_{r}_rank", NAN, f"{r} retriever 1-based rank (NaN if absent)"))
    specs += [
        FeatureSpec("n_retrievers", 0.0, "how many retrievers returned the track"),
        FeatureSpec("best_rank", NAN, "best (lowest) rank over retrievers"),
        FeatureSpec("popularity", NAN, "catalog popularity 0..1"),
        FeatureSpec("year", NAN, "release year"),
        FeatureSpec("tag_count", 0.0, "how many genre/subgenre tags the track carries"),
        FeatureSpec("query_len", 0.0, "query length in tokens (query-level: lets trees condition on it)"),
        *_TEXT_SPECS,
        FeatureSpec("title_edit", NAN, "normalized Levenshtein distance(query, title), 0 = identical"),
        FeatureSpec("artist_title_edit", NAN, "normalized Levenshtein distance(query, 'artist title')"),
        FeatureSpec("base_title_exact", 0.0, "query == the title without version suffix or 'feat.'"),
        FeatureSpec("base_title_edit", NAN, "normalized Levenshtein distance(query, title without version suffix): "
                                            "a typed title with a typo is near the base title, far from the full one"),
        FeatureSpec("dense_cos", NAN, "cosine(query embedding, track embedding); NaN when the query was not encoded"),
        FeatureSpec("q2e_ctr", NAN, "smoothed click-through rate for (query, track)"),
        FeatureSpec("genre_affinity", NAN, "dot(user genre weights, track genre indicator); NaN for unknown users"),
        *_PROFILE_SPECS,
        *_INTENT_SPECS,
    ]
    return tuple(specs)


class FeatureRegistry:
    """Ordered feature specs for a given retriever list, with a content hash (`version`)."""

    def __init__(self, retrievers: Sequence[str] = DEFAULT_RETRIEVERS) -> None:
        self.retrievers: tuple[str, ...] = tuple(retrievers)
        self.specs: tuple[FeatureSpec, ...] = _build_specs(self.retrievers)
        self.names: list[str] = [s.name for s in self.specs]
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"duplicate feature names for retrievers {self.retrievers}")
        self.index: dict[str, int] = {n: i for i, n in enumerate(self.names)}
        self.defaults = np.array([s.default for s in self.specs], dtype=np.float32)
        # Hash of names and defaults only: descriptions may be reworded without invalidating models.
        blob = json.dumps([[s.name, None if math.isnan(s.default) else s.default] for s in self.specs])
        self.version: str = hashlib.sha256(blob.encode()).hexdigest()[:16]
        self._ret_cols = {r: (self.index[f"ret_{r}_score"], self.index[f"ret_{r}_rank"]) for r in self.retrievers}
        self._rank_cols = [c for _, c in self._ret_cols.values()]
        self._text = self.index[_TEXT_SPECS[0].name]
        self._edit = self.index["title_edit"]
        self._profile = self.index[_PROFILE_SPECS[0].name]
        self._intent = self.index[_INTENT_SPECS[0].name]
        self.intent_columns = slice(self._intent, self._intent + INTENT_WIDTH)

    @property
    def dim(self) -> int:
        return len(self.specs)

    def featurize(self, query: QueryInput, cands: Candidates, table: TrackTable) -> np.ndarray:
        """Feature rows (n, dim) float32 in registry order; missing inputs get the spec default."""
        rows = np.asarray(cands.rows, dtype=np.int64)
        n = len(rows)
        x = np.empty((n, self.dim), dtype=np.float32)
        x[:] = self.defaults
        if n == 0:
            return x
        col = self.index
        for r, (cs, cr) in self._ret_cols.items():
            if r in cands.retriever_scores:
                x[:, cs] = cands.retriever_scores[r]
                x[:, cr] = cands.retriever_ranks[r]
        ranks = x[:, self._rank_cols]
        x[:, col["n_retrievers"]] = (~np.isnan(ranks)).sum(axis=1)
        x[:, col["best_rank"]] = np.fmin.reduce(ranks, axis=1)  # fmin skips NaN; all-NaN stays NaN
        x[:, col["popularity"]] = table.popularity[rows]
        x[:, col["year"]] = table.year[rows]
        x[:, col["tag_count"]] = table.tags[rows].sum(axis=1)
        x[:, col["query_len"]] = len(set(query.query_norm.split()))
        self._text_features(x, query.query_norm, rows, table)
        if cands.dense_cos is not None:
            x[:, col["dense_cos"]] = cands.dense_cos
        if cands.q2e_ctr is not None:
            x[:, col["q2e_ctr"]] = cands.q2e_ctr
        aff = query.user_genre_affinity
        if aff:
            weights = np.array([aff.get(g, 0.0) for g in table.tag_names], dtype=np.float32)
            x[:, col["genre_affinity"]] = table.tags[rows] @ weights
        if query.profile is not None:
            x[:, self._profile:self._profile + len(_PROFILE_SPECS)] = profile_features(table, query.profile, rows)
        if cands.intent is not None:
            x[:, self.intent_columns] = cands.intent
        return x

    def _text_features(self, x: np.ndarray, q: str, rows: np.ndarray, table: TrackTable) -> None:
        n = len(rows)
        q_toks = q.split()
        nq = len(set(q_toks))
        t = self._text
        if not q:
            return
        wanted = table.query_token_mask(q_toks)
        inter = np.stack([table.title_tokens.counts(rows, wanted), table.artist_tokens.counts(rows, wanted),
                          table.album_tokens.counts(rows, wanted), table.all_tokens.counts(rows, wanted)], axis=1)
        nf = np.stack([table.title_tokens.lengths(rows), table.artist_tokens.lengths(rows),
                       table.album_tokens.lengths(rows)], axis=1)
        denom = nq + nf - inter[:, :3]
        jac = np.divide(inter[:, :3], denom, out=np.zeros_like(denom), where=denom > 0)
        cov = inter / nq if nq else inter
        qh = string_hash(q)
        titles = [table.title[r] for r in rows.tolist()]
        artists = [table.artist[r] for r in rows.tolist()]
        q_padded = f" {q} "
        x[:, t + 0] = table.title_hash[rows] == qh
        x[:, t + 1] = [v.startswith(q) for v in titles]
        x[:, t + 2] = [bool(v) and f" {v} " in q_padded for v in titles]
        x[:, t + 3] = jac[:, 0]
        x[:, t + 4] = cov[:, 0]
        x[:, t + 5] = table.artist_hash[rows] == qh
        x[:, t + 6] = [v.startswith(q) for v in artists]
        x[:, t + 7] = [bool(v) and f" {v} " in q_padded for v in artists]
        x[:, t + 8] = jac[:, 1]
        x[:, t + 9] = cov[:, 1]
        x[:, t + 10] = table.album_hash[rows] == qh
        x[:, t + 11] = jac[:, 2]
        x[:, t + 12] = cov[:, 2]
        x[:, t + 14] = cov[:, 3]
        # Edit distances: one C++ call per target list (rapidfuzz) instead of n Python calls.
        x[:, self._edit] = cdist([q], titles, scorer=Levenshtein.normalized_distance, dtype=np.float32,
                                 workers=1)[0]
        at = cdist([q], [table.artist_title[r] for r in rows.tolist()], scorer=Levenshtein.normalized_distance,
                   dtype=np.float32, workers=1)[0]
        x[:, self._edit + 1] = at
        x[:, self._edit + 2] = table.base_title_hash[rows] == qh
        x[:, self._edit + 3] = cdist([q], [table.base_title[r] for r in rows.tolist()],
                                     scorer=Levenshtein.normalized_distance, dtype=np.float32, workers=1)[0]
        x[:, t + 13] = (at == 0) | np.fromiter((q == table.title_artist[r] for r in rows.tolist()), dtype=bool,
                                                count=n)


DEFAULT_REGISTRY = FeatureRegistry()
