"""The track catalog: a typed, validated loader, conversion to retriever documents, and a
synthetic catalog generator for scale benchmarks."""

from __future__ import annotations

import csv
import gzip
import io
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from retrievers.base import Document
from retrievers.text import normalize, split_featuring

log = logging.getLogger(__name__)

COLUMNS = [
    "track_id", "track_name", "track_artist", "track_popularity", "track_album_id", "track_album_name",
    "track_album_release_date", "danceability", "energy", "key", "loudness", "mode", "speechiness",
    "acousticness", "instrumentalness", "liveness", "valence", "tempo", "duration_ms", "genres", "subgenres",
]
AUDIO_FEATURES = ["danceability", "energy", "speechiness", "acousticness", "instrumentalness", "liveness",
                  "valence"]
MAX_FIELD_CHARS = 1000


class Track(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore", str_strip_whitespace=True)

    track_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_\-]+$")
    title: str = Field(min_length=1, max_length=MAX_FIELD_CHARS)
    artist: str = Field(min_length=1, max_length=MAX_FIELD_CHARS)
    popularity: int = Field(ge=0, le=100)
    album_id: str = Field(default="", max_length=64)
    album: str = Field(default="", max_length=MAX_FIELD_CHARS)
    release_date: str = ""
    year: int | None = Field(default=None, ge=1800, le=2100)
    danceability: float = Field(default=0.5, ge=0, le=1)
    energy: float = Field(default=0.5, ge=0, le=1)
    key: int = Field(default=-1, ge=-1, le=11)
    loudness: float = Field(default=-10.0, ge=-80, le=10)
    mode: int = Field(default=1, ge=0, le=1)
    speechiness: float = Field(default=0.0, ge=0, le=1)
    acousticness: float = Field(default=0.0, ge=0, le=1)
    instrumentalness: float = Field(default=0.0, ge=0, le=1)
    liveness: float = Field(default=0.0, ge=0, le=1)
    valence: float = Field(default=0.5, ge=0, le=1)
    tempo: float = Field(default=120.0, ge=0, le=400)
    duration_ms: int = Field(default=0, ge=0)
    genres: tuple[str, ...] = ()
    subgenres: tuple[str, ...] = ()

    @property
    def featured_artists(self) -> list[str]:
        return split_featuring(self.title)[1]

    def search_text(self) -> str:
        return " ".join([self.title, self.artist, self.album, " ".join(self.genres), " ".join(self.subgenres)])


class CatalogError(ValueError):
    """A row failed validation: names the file line and the field."""

    def __init__(self, path: str, line: int, field: str, message: str):
        super().__init__(f"{path}:{line}: field '{field}': {message}")
        self.line, self.field = line, field


_CSV_TO_TRACK = {"track_name": "title", "track_artist": "artist", "track_popularity": "popularity",
                 "track_album_id": "album_id", "track_album_name": "album",
                 "track_album_release_date": "release_date"}


def _split_tags(value: str) -> tuple[str, ...]:
    if not value:
        return ()
    return tuple(t for t in (p.strip() for p in value.split("|")) if t)


def _year(date: str) -> int | None:
    head = date.strip()[:4]
    return int(head) if head.isdigit() else None


_OPTIONAL_EMPTY_OK = frozenset({"album", "album_id", "release_date"})


def row_to_track(row: dict[str, str]) -> Track:
    data: dict[str, object] = {}
    for col, value in row.items():
        if col is None:
            raise ValueError("row has more cells than the header")
        if value == "" and col not in _OPTIONAL_EMPTY_OK:
            continue  # empty optional cells fall back to the model's defaults
        data[_CSV_TO_TRACK.get(col, col)] = value
    data["genres"] = _split_tags(str(data.get("genres") or ""))
    data["subgenres"] = _split_tags(str(data.get("subgenres") or ""))
    data["year"] = _year(str(data.get("release_date") or ""))
    return Track.model_validate(data)


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def iter_tracks(path: Path, *, skip_bad_rows: bool = False) -> Iterator[Track]:
    """Yields validated tracks. A bad row raises CatalogError (file line + field), or with
    skip_bad_rows is logged and skipped. Duplicate track ids keep the first row."""
    path = Path(path)
    seen: set[str] = set()
    with _open_text(path) as fh:
        reader = csv.DictReader(fh)
        missing = {"track_id", "track_name", "track_artist", "track_popularity"} - set(reader.fieldnames or [])
        if missing:
            raise CatalogError(str(path), 1, sorted(missing)[0], "required column missing from header")
        for row in reader:
            line = reader.line_num
            try:
                track = row_to_track(row)
            except ValidationError as e:
                err = e.errors()[0]
                field = ".".join(str(p) for p in err["loc"]) or "row"
                exc = CatalogError(str(path), line, field, err["msg"])
                if not skip_bad_rows:
                    raise exc from None
                log.warning("skipping bad row: %s", exc)
                continue
            except ValueError as e:
                exc = CatalogError(str(path), line, "row", str(e))
                if not skip_bad_rows:
                    raise exc from None
                log.warning("skipping bad row: %s", exc)
                continue
            if track.track_id in seen:
                log.debug("duplicate track_id %s at line %d ignored", track.track_id, line)
                continue
            seen.add(track.track_id)
            yield track


@dataclass
class Catalog:
    tracks: list[Track]

    def __post_init__(self) -> None:
        self.by_id = {t.track_id: t for t in self.tracks}

    def __len__(self) -> int:
        return len(self.tracks)

    def get(self, track_id: str) -> Track | None:
        return self.by_id.get(track_id)

    @classmethod
    def load(cls, path: Path, *, skip_bad_rows: bool = False) -> Catalog:
        return cls(list(iter_tracks(path, skip_bad_rows=skip_bad_rows)))

    def documents(self) -> list[Document]:
        return [track_document(t) for t in self.tracks]


def track_document(t: Track) -> Document:
    return Document(
        doc_id=t.track_id,
        # Tags stay "|"-joined so consumers can split them again; tokenizers treat "|" as a break.
        fields={"title": t.title, "artist": t.artist, "album": t.album,
                "genres": "|".join(t.genres), "subgenres": "|".join(t.subgenres)},
        popularity=t.popularity / 100.0,
        extra={"year": t.year, "tempo": t.tempo, **{f: getattr(t, f) for f in AUDIO_FEATURES}},
    )


def vocabulary(catalog: Catalog) -> dict[str, set[str]]:
    """Normalized word sets per field: the bandit's cheap query-understanding signal."""
    vocab: dict[str, set[str]] = {"title": set(), "artist": set(), "genre": set(), "all": set()}
    for t in catalog.tracks:
        vocab["title"].update(normalize(t.title).split())
        vocab["artist"].update(normalize(t.artist).split())
        vocab["genre"].update(normalize(" ".join(t.genres + t.subgenres)).split())
    vocab["all"] = vocab["title"] | vocab["artist"] | vocab["genre"] | {
        w for t in catalog.tracks for w in normalize(t.album).split()}
    return vocab


# --- synthetic catalogs ------------------------------------------------------------------------

def synthesize(real: Catalog, n: int, out: Path, *, seed: int = 0, progress: bool = True) -> None:
    """Writes n synthetic tracks whose field distributions come from the real catalog: title and
    artist words are drawn from the real word frequencies, title/artist lengths, genre pairs,
    audio features and popularity are resampled from real rows. Written in CSV blocks so 1M rows
    take seconds and constant memory."""
    from tqdm import tqdm

    rng = np.random.default_rng(seed)
    tracks = real.tracks
    title_words, title_p = _word_dist(t.title for t in tracks)
    artist_words, artist_p = _word_dist(t.artist for t in tracks)
    title_len = np.array([max(1, len(t.title.split())) for t in tracks]).clip(1, 6)
    pops = np.array([t.popularity for t in tracks], dtype=float)
    # Everything but title/artist/id/popularity is copied from a real row, so joint
    # distributions (genre x audio features x year) stay realistic.
    rest = [[r.album_id, r.album, r.release_date, r.danceability, r.energy, r.key, r.loudness, r.mode,
             r.speechiness, r.acousticness, r.instrumentalness, r.liveness, r.valence, r.tempo,
             r.duration_ms, "|".join(r.genres), "|".join(r.subgenres)] for r in tracks]
    n_artists = int(min(max(10, n // 8), 200_000))  # ~8 tracks per artist, like the real long tail
    a_len = rng.integers(1, 3, size=n_artists)
    a_words = rng.choice(artist_words, size=int(a_len.sum()), p=artist_p)
    a_cut = np.concatenate([[0], np.cumsum(a_len)])
    artist_names = [" ".join(a_words[a_cut[i]:a_cut[i + 1]]).title() for i in range(n_artists)]
    alphabet = np.frombuffer(b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789", dtype="S1")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    opener = gzip.open if out.suffix == ".gz" else open
    block = 50_000
    with opener(out, "wt", encoding="utf-8", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(COLUMNS)
        bar = tqdm(total=n, unit="track", desc="synth", disable=not progress)
        for start in range(0, n, block):
            m = min(block, n - start)
            src = rng.integers(0, len(tracks), size=m)
            lens = title_len[rng.integers(0, len(tracks), size=m)]
            words = rng.choice(title_words, size=int(lens.sum()), p=title_p).tolist()
            cut = np.concatenate([[0], np.cumsum(lens)]).tolist()
            ids = rng.choice(alphabet, size=(m, 22)).view("S22").ravel()
            art = rng.integers(0, n_artists, size=m).tolist()
            pop = np.clip(pops[src] + rng.normal(0, 5, size=m), 0, 100).astype(int).tolist()
            w.writerows(
                [ids[j].decode(), " ".join(words[cut[j]:cut[j + 1]]).title(), artist_names[art[j]], pop[j],
                 *rest[s]]
                for j, s in enumerate(src.tolist())
            )
            bar.update(m)
        bar.close()


def _word_dist(texts: Iterator[str]) -> tuple[np.ndarray, np.ndarray]:
    counts: dict[str, int] = {}
    for text in texts:
        for word in normalize(text).split():
            counts[word] = counts.get(word, 0) + 1
    words = np.array(list(counts), dtype=object)
    p = np.array(list(counts.values()), dtype=float)
    return words, p / p.sum()
