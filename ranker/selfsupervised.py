"""Cold-start training data for the ranker from metadata pseudo-queries, before any clicks exist.

Each (pseudo query, source track) pair says "someone typing this query wants this track". The
caller runs retrieval and featurization for a query (this library never calls retrievers) and
returns the candidate ids and feature rows; the source track is labeled relevant and every other
candidate 0. Pairs sharing a query are merged into one group with several positives, so a track
that is relevant for "taylor swift" is never taught as a negative for the same query.

Sampling happens *before* the caller's candidate function runs, because retrieval plus
featurization is the expensive part: `max_groups` bounds both that and training time.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from ranker.model import RankData

# Graded labels by pseudo-query template (retrievers.pseudo_queries template names): an
# "artist title" query names exactly one track; an "artist" query is satisfied by many.
TEMPLATE_GRADES: dict[str, int] = {
    "artist_title": 3, "title_artist": 3, "title": 2, "album": 1, "artist": 1,
    "artist_genre": 1, "genre": 1, "mood_genre": 1,
}


@dataclass(frozen=True, slots=True)
class PseudoPair:
    query: str  # normalized, like serving's query_norm
    track_id: str
    template: str | None = None


# query -> (candidate track ids, feature rows (n, d) in registry order)
CandidateFn = Callable[[str], tuple[Sequence[str], np.ndarray]]


def sample_queries(pairs: Iterable[PseudoPair], max_groups: int, *, seed: int = 0,
                   grades: Mapping[str, int] | None = TEMPLATE_GRADES) -> dict[str, dict[str, int]]:
    """Merges pairs by query into {query: {track_id: grade}} and keeps a uniform random sample of at
    most `max_groups` queries. With `grades=None` every positive is 1; unknown templates get 1."""
    merged: dict[str, dict[str, int]] = {}
    for p in pairs:
        g = 1 if grades is None or p.template is None else int(grades.get(p.template, 1))
        pos = merged.setdefault(p.query, {})
        pos[p.track_id] = max(pos.get(p.track_id, 0), g)
    queries = sorted(merged)  # sorted first so the sample depends on the seed, not on input order
    if len(queries) > max_groups:
        queries = random.Random(seed).sample(queries, max_groups)
    return {q: merged[q] for q in queries}


def build_training_set(groups: Mapping[str, Mapping[str, int]], candidates: CandidateFn,
                       *, max_candidates: int | None = None) -> tuple[RankData, dict[str, int]]:
    """Labels each query's candidates: the grade for its source tracks, 0 for the rest. Groups whose
    candidates contain no source track (retrieval missed it) are dropped, since lambdarank has no
    positive to learn from; they are counted in the returned stats as `dropped_no_positive`."""
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    sizes: list[int] = []
    stats = {"queries": 0, "groups": 0, "rows": 0, "dropped_no_positive": 0}
    for q, positives in groups.items():
        stats["queries"] += 1
        ids, x = candidates(q)
        if max_candidates is not None:
            ids, x = ids[:max_candidates], x[:max_candidates]
        if len(ids) != len(x):
            raise ValueError(f"candidate function returned {len(ids)} ids but {len(x)} feature rows for {q!r}")
        y = np.fromiter((positives.get(t, 0) for t in ids), dtype=np.int32, count=len(ids))
        if y.size == 0 or y.max() <= 0:
            stats["dropped_no_positive"] += 1
            continue
        xs.append(np.asarray(x, dtype=np.float32))
        ys.append(y)
        sizes.append(len(ids))
    stats["groups"] = len(sizes)
    stats["rows"] = int(sum(sizes))
    d = xs[0].shape[1] if xs else 0
    return RankData(X=np.concatenate(xs) if xs else np.zeros((0, d), dtype=np.float32),
                    y=np.concatenate(ys) if ys else np.zeros(0, dtype=np.int32),
                    group=np.array(sizes, dtype=np.int64)), stats


def build(pairs: Iterable[PseudoPair], candidates: CandidateFn, *, max_groups: int = 5000, seed: int = 0,
          grades: Mapping[str, int] | None = TEMPLATE_GRADES,
          max_candidates: int | None = None) -> tuple[RankData, dict[str, int]]:
    """sample_queries + build_training_set: the usual one-call cold-start path."""
    return build_training_set(sample_queries(pairs, max_groups, seed=seed, grades=grades), candidates,
                              max_candidates=max_candidates)
