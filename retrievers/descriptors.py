"""Words that say what a track sounds like and when it is from, for the dense retriever's
document text: "2010s, energetic, danceable".

A topic query names a mood or an era ("sad songs", "chill 90s r&b", "gym"), and the catalog's
text (title, artist, album, tags) rarely does. The audio features do: each word below is given
to the tracks in the catalog's own top (or bottom) share of one feature, so the thresholds are
fitted on the catalog being indexed, not on absolute values that mean different things in
different catalogs. The words are the ones query understanding reads (retrievers.query_understanding):
a query's "sad" meets a track's "sad" in embedding space.

| word | given to tracks whose ... |
|---|---|
| sad / happy | valence is in the bottom / top 20% |
| chill / energetic | energy is in the bottom / top 20% |
| danceable | danceability is in the top 20% |
| acoustic | acousticness is in the top 20% |
| instrumental | instrumentalness is in the top 10% |
| slow / fast | tempo is in the bottom / top 15% |

plus the release decade ("1980s") when the year is known.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from retrievers.base import Document

# (feature, low quantile, word below it, high quantile, word above it)
RULES: tuple[tuple[str, float | None, str | None, float | None, str | None], ...] = (
    ("valence", 0.2, "sad", 0.8, "happy"),
    ("energy", 0.2, "chill", 0.8, "energetic"),
    ("danceability", None, None, 0.8, "danceable"),
    ("acousticness", None, None, 0.8, "acoustic"),
    ("instrumentalness", None, None, 0.9, "instrumental"),
    ("tempo", 0.15, "slow", 0.85, "fast"),
)


@dataclass(frozen=True)
class Descriptors:
    """Fitted thresholds: feature -> (low cut or None, high cut or None)."""

    cuts: dict[str, tuple[float | None, float | None]]

    @classmethod
    def fit(cls, docs: Sequence[Document]) -> Descriptors:
        cuts: dict[str, tuple[float | None, float | None]] = {}
        for feature, lo_q, _, hi_q, _ in RULES:
            values = np.array([v for d in docs if isinstance(v := d.extra.get(feature), int | float)], dtype=float)
            if len(values) < 20:  # too few tracks carry the feature to say what is high or low
                continue
            cuts[feature] = (float(np.quantile(values, lo_q)) if lo_q is not None else None,
                             float(np.quantile(values, hi_q)) if hi_q is not None else None)
        return cls(cuts)

    def words(self, doc: Document) -> list[str]:
        out: list[str] = []
        year = doc.extra.get("year")
        if isinstance(year, int) and year > 0:
            out.append(f"{year // 10 * 10}s")
        for feature, _, lo_word, _, hi_word in RULES:
            cut = self.cuts.get(feature)
            v = doc.extra.get(feature)
            if cut is None or not isinstance(v, int | float):
                continue
            lo, hi = cut
            if lo is not None and lo_word and v <= lo:
                out.append(lo_word)
            if hi is not None and hi_word and v >= hi:
                out.append(hi_word)
        return out
