"""Filters and facets of /search: what a request may narrow the catalog to, as numpy columns.

`SearchFilters` is the request's contract (pydantic, strict, every range checked: an inverted one
is a 422). `CatalogColumns` holds one column per filterable field over the whole catalog, built
once at start-up, so a filter is a few vector comparisons (~0.1 ms for 28k tracks) giving the
allowed rows. The pipeline (services.serving.pipeline) asks each chosen retriever for more than
usual when a filter is set, keeps what is allowed, and, when that leaves fewer tracks than the
page holds, adds the best allowed tracks by an exact scan (dense similarity to the query over
the allowed rows, or popularity without a dense arm): a filtered search never answers with an
empty page while matching tracks exist.

Facets count the ranked candidates (after filtering) per genre and per decade.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Annotated, Literal

import numpy as np
from annotated_types import Interval
from pydantic import BaseModel, ConfigDict, Field, model_validator

from services.catalog import Track
from services.serving.json_types import JSON_INTEGER

AUDIO_FEATURES = ("danceability", "energy", "valence", "acousticness", "instrumentalness", "speechiness",
                  "liveness")
Facet = Literal["genre", "decade"]
FACET_VALUES = 20  # per facet, most frequent first
Year = Annotated[int, Interval(ge=1800, le=2100), JSON_INTEGER]
Popularity = Annotated[int, Interval(ge=0, le=100), JSON_INTEGER]


class SearchFilters(BaseModel):
    """Every field is optional; a track must satisfy all the given ones. `genre` and `subgenre`
    take one tag or a comma list (any of them), case-insensitive, as the catalog spells them."""

    model_config = ConfigDict(extra="forbid", strict=True)

    genre: str | None = Field(default=None, min_length=1, max_length=256, examples=["rock"])
    subgenre: str | None = Field(default=None, min_length=1, max_length=256, examples=["album rock"])
    year_from: Year | None = None
    year_to: Year | None = None
    min_popularity: Popularity | None = None
    duration_min_s: float | None = Field(default=None, ge=0, le=36_000)
    duration_max_s: float | None = Field(default=None, ge=0, le=36_000)
    tempo_min: float | None = Field(default=None, ge=0, le=400, description="beats per minute")
    tempo_max: float | None = Field(default=None, ge=0, le=400)
    danceability_min: float | None = Field(default=None, ge=0, le=1)
    danceability_max: float | None = Field(default=None, ge=0, le=1)
    energy_min: float | None = Field(default=None, ge=0, le=1)
    energy_max: float | None = Field(default=None, ge=0, le=1)
    valence_min: float | None = Field(default=None, ge=0, le=1, description="musical positiveness")
    valence_max: float | None = Field(default=None, ge=0, le=1)
    acousticness_min: float | None = Field(default=None, ge=0, le=1)
    acousticness_max: float | None = Field(default=None, ge=0, le=1)
    instrumentalness_min: float | None = Field(default=None, ge=0, le=1)
    instrumentalness_max: float | None = Field(default=None, ge=0, le=1)
    speechiness_min: float | None = Field(default=None, ge=0, le=1)
    speechiness_max: float | None = Field(default=None, ge=0, le=1)
    liveness_min: float | None = Field(default=None, ge=0, le=1)
    liveness_max: float | None = Field(default=None, ge=0, le=1)

    @model_validator(mode="after")
    def _ranges(self) -> SearchFilters:
        for lo, hi in self.ranges():
            a, b = getattr(self, lo), getattr(self, hi)
            if a is not None and b is not None and a > b:
                raise ValueError(f"{lo} ({a}) is above {hi} ({b})")
        return self

    @staticmethod
    def ranges() -> list[tuple[str, str]]:
        return [("year_from", "year_to"), ("duration_min_s", "duration_max_s"), ("tempo_min", "tempo_max"),
                *((f"{f}_min", f"{f}_max") for f in AUDIO_FEATURES)]

    @property
    def empty(self) -> bool:
        return not self.model_dump(exclude_none=True)

    def genres(self) -> list[str]:
        return _tags(self.genre)

    def subgenres(self) -> list[str]:
        return _tags(self.subgenre)


def _tags(value: str | None) -> list[str]:
    return [t.strip().lower() for t in (value or "").split(",") if t.strip()]


class CatalogColumns:
    """The filterable fields of every track as numpy columns, in catalog order."""

    def __init__(self, tracks: Sequence[Track]):
        self.ids = [t.track_id for t in tracks]
        self.row = {tid: i for i, tid in enumerate(self.ids)}
        n = len(tracks)
        self.year = np.array([t.year or 0 for t in tracks], dtype=np.int16)
        self.popularity = np.array([t.popularity for t in tracks], dtype=np.int16)
        self.duration_s = np.array([t.duration_ms / 1000.0 for t in tracks], dtype=np.float32)
        self.tempo = np.array([t.tempo for t in tracks], dtype=np.float32)
        self.audio = {f: np.array([getattr(t, f) for t in tracks], dtype=np.float32) for f in AUDIO_FEATURES}
        self.genre_tags: dict[str, np.ndarray] = {}
        self.subgenre_tags: dict[str, np.ndarray] = {}
        for i, t in enumerate(tracks):
            for g in t.genres:
                self.genre_tags.setdefault(g.lower(), np.zeros(n, dtype=bool))[i] = True
            for g in t.subgenres:
                self.subgenre_tags.setdefault(g.lower(), np.zeros(n, dtype=bool))[i] = True
        self.genre_of = [tuple(g.lower() for g in t.genres) for t in tracks]

    def __len__(self) -> int:
        return len(self.ids)

    def mask(self, f: SearchFilters) -> np.ndarray:
        """Allowed rows. A genre or subgenre no track has allows nothing (the page is then empty,
        which is the truth; GET /search's `facets=genre` lists the catalog's spelling)."""
        m = np.ones(len(self.ids), dtype=bool)
        for tags, columns in ((f.genres(), self.genre_tags), (f.subgenres(), self.subgenre_tags)):
            if tags:
                any_of = np.zeros(len(self.ids), dtype=bool)
                for tag in tags:
                    col = columns.get(tag)
                    if col is not None:
                        any_of |= col
                m &= any_of
        if f.year_from is not None or f.year_to is not None:
            m &= self.year > 0  # an unknown year matches no year range
        if f.year_from is not None:
            m &= self.year >= f.year_from
        if f.year_to is not None:
            m &= self.year <= f.year_to
        if f.min_popularity is not None:
            m &= self.popularity >= f.min_popularity
        for column, lo, hi in ((self.duration_s, f.duration_min_s, f.duration_max_s),
                               (self.tempo, f.tempo_min, f.tempo_max),
                               *((self.audio[a], getattr(f, f"{a}_min"), getattr(f, f"{a}_max"))
                                 for a in AUDIO_FEATURES)):
            if lo is not None:
                m &= column >= lo
            if hi is not None:
                m &= column <= hi
        return m

    def allowed(self, mask: np.ndarray, track_ids: Sequence[str]) -> list[bool]:
        row = self.row
        return [bool(mask[row[t]]) if t in row else False for t in track_ids]

    def facets(self, track_ids: Sequence[str], which: Sequence[Facet]) -> dict[str, dict[str, int]]:
        """Counts over the given tracks, the FACET_VALUES most frequent values per facet."""
        rows = [self.row[t] for t in track_ids if t in self.row]
        out: dict[str, dict[str, int]] = {}
        for facet in dict.fromkeys(which):
            if facet == "genre":
                counts = Counter(g for r in rows for g in self.genre_of[r])
            else:
                counts = Counter(f"{int(self.year[r]) // 10 * 10}s" for r in rows if self.year[r] > 0)
            out[facet] = dict(counts.most_common(FACET_VALUES))
        return out
