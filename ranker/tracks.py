"""Per-track columns the featurizer reads, built once from the catalog: the query-independent half
of every feature, laid out so one search's candidates are a row-index array, not Python objects.

Text fields become token-id lists in CSR form (one array of ids, one of row offsets), so "how many
query tokens does each candidate's title hold" is a gather and a bincount over ~300 rows instead
of 300 frozenset intersections. Tags (genres and subgenres) are a multi-hot uint8 matrix, audio
features are z-scored float32 columns, artists are small integer ids: the pseudo-relevance
profile (ranker.profile) is arithmetic on these.

Inputs must already be normalized by the caller with the function used at indexing time
(`retrievers.text.normalize` in this project); this module only splits on spaces.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

NAN = float("nan")


@dataclass(frozen=True, slots=True)
class TrackRecord:
    """What the table needs of one track (normalized strings; tags as the catalog spells them)."""

    track_id: str
    title: str
    artist: str
    album: str = ""
    tags: tuple[str, ...] = ()  # genres and subgenres
    popularity: float = NAN  # 0..1
    year: int | None = None
    artist_key: str = ""  # the recording's primary artist; "" = the artist string
    audio: tuple[float, ...] = ()  # the same audio features, in the same order, for every track
    base_title: str = ""  # the title people type: no version suffix, no "feat." ("" = the title)


@dataclass
class TokenColumn:
    """One text field as CSR token ids: the ids of row r are ids[offsets[r]:offsets[r + 1]],
    each distinct (a title that says "love love" holds "love" once)."""

    ids: np.ndarray  # int32
    offsets: np.ndarray  # int64, len rows + 1

    def counts(self, rows: np.ndarray, wanted: np.ndarray) -> np.ndarray:
        """Per row in `rows`, how many of its tokens are marked in the boolean `wanted` (by id)."""
        starts = self.offsets[rows]
        lengths = self.offsets[rows + 1] - starts
        total = int(lengths.sum())
        if total == 0:
            return np.zeros(len(rows), dtype=np.float32)
        # Positions of every token of every requested row, in one vectorized gather.
        owner = np.repeat(np.arange(len(rows)), lengths)
        first = np.repeat(starts - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths)
        tokens = self.ids[first + np.arange(total)]
        return np.bincount(owner[wanted[tokens]], minlength=len(rows)).astype(np.float32)

    def lengths(self, rows: np.ndarray) -> np.ndarray:
        return (self.offsets[rows + 1] - self.offsets[rows]).astype(np.float32)


@dataclass
class TrackTable:
    """Columns over every track, row i = track_ids[i]."""

    track_ids: list[str]
    row_of: dict[str, int]
    title: list[str]
    base_title: list[str]  # what people type for the title ("memories", not "memories dillon francis remix")
    artist: list[str]
    album: list[str]
    artist_title: list[str]  # "artist title", for the edit distance to what people type
    title_artist: list[str]
    vocab: dict[str, int]
    title_tokens: TokenColumn
    artist_tokens: TokenColumn
    album_tokens: TokenColumn
    all_tokens: TokenColumn  # union of the three, so a token in two fields counts once
    title_hash: np.ndarray  # int64 hash of the normalized string: exact matches without string compares
    base_title_hash: np.ndarray
    artist_hash: np.ndarray
    album_hash: np.ndarray
    popularity: np.ndarray  # float32, NaN unknown
    year: np.ndarray  # float32, NaN unknown
    tag_names: list[str]
    tags: np.ndarray  # uint8 (rows, len(tag_names)) multi-hot
    artist_id: np.ndarray  # int32, one id per primary artist
    audio: np.ndarray  # float32 (rows, n_audio) z-scored over the table; empty second axis if absent
    extra: dict[str, object] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.track_ids)

    def rows(self, track_ids: Sequence[str]) -> np.ndarray:
        """Row indices of known ids (unknown ids must be filtered by the caller)."""
        return np.fromiter((self.row_of[t] for t in track_ids), dtype=np.int64, count=len(track_ids))

    def tag_index(self, tag: str) -> int | None:
        try:
            return self.tag_names.index(tag)
        except ValueError:
            return None

    @classmethod
    def build(cls, records: Iterable[TrackRecord]) -> TrackTable:
        recs = list(records)
        vocab: dict[str, int] = {}
        cols: dict[str, tuple[list[int], list[int]]] = {k: ([], [0]) for k in ("title", "artist", "album", "all")}

        def add(kind: str, toks: Iterable[str]) -> None:
            ids, offsets = cols[kind]
            ids.extend(vocab.setdefault(t, len(vocab)) for t in dict.fromkeys(toks))
            offsets.append(len(ids))

        tag_names = sorted({t for r in recs for t in r.tags})
        tag_col = {t: i for i, t in enumerate(tag_names)}
        tags = np.zeros((len(recs), len(tag_names)), dtype=np.uint8)
        artist_ids: dict[str, int] = {}
        artist_id = np.zeros(len(recs), dtype=np.int32)
        n_audio = len(recs[0].audio) if recs else 0
        audio = np.full((len(recs), n_audio), np.nan, dtype=np.float32)
        for i, r in enumerate(recs):
            t, a, b = r.title.split(), r.artist.split(), r.album.split()
            add("title", t)
            add("artist", a)
            add("album", b)
            add("all", [*t, *a, *b])
            for g in r.tags:
                tags[i, tag_col[g]] = 1
            artist_id[i] = artist_ids.setdefault(r.artist_key or r.artist, len(artist_ids))
            if len(r.audio) == n_audio and n_audio:
                audio[i] = r.audio
        if n_audio:
            mean, sd = np.nanmean(audio, axis=0), np.nanstd(audio, axis=0)
            audio = ((audio - mean) / np.where(sd > 0, sd, 1.0)).astype(np.float32)

        def column(kind: str) -> TokenColumn:
            ids, offsets = cols[kind]
            return TokenColumn(np.asarray(ids, dtype=np.int32), np.asarray(offsets, dtype=np.int64))

        titles = [r.title for r in recs]
        bases = [r.base_title or r.title for r in recs]
        artists = [r.artist for r in recs]
        albums = [r.album for r in recs]
        return cls(
            track_ids=[r.track_id for r in recs], row_of={r.track_id: i for i, r in enumerate(recs)},
            title=titles, base_title=bases, artist=artists, album=albums,
            artist_title=[f"{r.artist} {r.title}".strip() for r in recs],
            title_artist=[f"{r.title} {r.artist}".strip() for r in recs],
            vocab=vocab, title_tokens=column("title"), artist_tokens=column("artist"),
            album_tokens=column("album"), all_tokens=column("all"),
            title_hash=_hashes(titles), base_title_hash=_hashes(bases), artist_hash=_hashes(artists),
            album_hash=_hashes(albums),
            popularity=np.array([r.popularity for r in recs], dtype=np.float32),
            year=np.array([NAN if r.year is None else r.year for r in recs], dtype=np.float32),
            tag_names=tag_names, tags=tags, artist_id=artist_id, audio=audio)

    def query_token_mask(self, tokens: Iterable[str]) -> np.ndarray:
        """Boolean mask over the vocabulary marking the query's known tokens."""
        mask = np.zeros(len(self.vocab) + 1, dtype=bool)
        for t in tokens:
            i = self.vocab.get(t)
            if i is not None:
                mask[i] = True
        return mask


def string_hash(s: str) -> int:
    """Stable 63-bit hash of a string (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.blake2b(s.encode("utf-8"), digest_size=8).digest(), "little") >> 1


def _hashes(values: Sequence[str]) -> np.ndarray:
    return np.fromiter((string_hash(v) for v in values), dtype=np.int64, count=len(values))
