"""Wiring of `suggest` (session-aware autocompletion) into the service: the label set from the
catalog and the decision logs, cold-start session pairs from catalog relations, training,
versioned artifacts under <models_dir>/suggest/vNNNN, and loading for serving.

Everything the model sees is normalized with `retrievers.text.normalize`, the same function the
search pipeline uses for `query_norm`, so a suggestion is exactly what /search would receive.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from retrievers.text import normalize, split_featuring, strip_version
from services.artifacts import ArtifactStore
from services.catalog import Catalog, Track
from services.config import Settings
from services.jsonl_log import read_jsonl_dir
from services.models import ModelHolder, StoreSource
from suggest import Label, LoggedQuery, SessionPair, SuggestConfig, Suggestion, SuggestModel, pairs_from_log, pop_weight

log = logging.getLogger("ltrr.suggest")

LOGGED_QUERY_WEIGHT = 5.0  # one logged search of a text weighs like a popularity-~32 track
# Cold-start session pairs come from the most popular tracks only: rows grow ~20 per track and
# training time with them (all 28k tracks: minutes; 5k: well under one on 2 cores).
SESSION_TRACKS = 5000


def title_text(track: Track) -> str:
    """What people type for a title: without "(feat. X)" and " - Remastered 2011"."""
    return normalize(strip_version(split_featuring(track.title)[0]))


def album_text(track: Track) -> str:
    return normalize(strip_version(split_featuring(track.album)[0])) if track.album else ""


def catalog_labels(catalog: Catalog) -> list[Label]:
    """Titles, artists, "artist title" and albums, weighted by the catalog's popularity."""
    out: list[Label] = []
    artist_best: dict[str, float] = {}
    artist_n: dict[str, int] = {}
    album_best: dict[str, float] = {}
    for t in catalog.tracks:
        w = pop_weight(t.popularity)
        title, artist = title_text(t), normalize(t.artist)
        if title:
            out.append(Label(title, "track", t.track_id, w))
        if artist:
            artist_best[artist] = max(artist_best.get(artist, 0.0), w)
            artist_n[artist] = artist_n.get(artist, 0) + 1
            if title:
                out.append(Label(f"{artist} {title}", "track", t.track_id, 0.6 * w))
        album = album_text(t)
        if album and album != title:
            album_best[album] = max(album_best.get(album, 0.0), w)
    # An artist with many tracks is searched more than any one of them.
    out += [Label(a, "artist", None, w * (1.0 + math.log(artist_n[a]))) for a, w in artist_best.items()]
    out += [Label(a, "album", None, 0.4 * w) for a, w in album_best.items()]
    return out


def catalog_session_pairs(catalog: Catalog, *, max_tracks: int | None = None) -> list[SessionPair]:
    """Cold-start sessions predicted from catalog relations, before any is logged: after an
    artist, one of their titles, "artist title" or albums; after a title, its artist. The most
    popular `max_tracks` tracks only, when given (the rows grow ~20 per track)."""
    tracks: Sequence[Track] = catalog.tracks
    if max_tracks is not None:
        tracks = sorted(tracks, key=lambda t: -t.popularity)[:max_tracks]
    pairs: set[tuple[str, str]] = set()
    for t in tracks:
        title, artist, album = title_text(t), normalize(t.artist), album_text(t)
        if not title or not artist:
            continue
        pairs.add((artist, title))
        pairs.add((artist, f"{artist} {title}"))
        pairs.add((title, artist))
        if album and album != title:
            pairs.add((artist, album))
    return [SessionPair(p, n) for p, n in sorted(pairs) if p != n]


@dataclass
class LoggedData:
    query_counts: dict[str, int]
    pairs: list[SessionPair]
    bad_lines: int


def iter_logged_queries(logs_dir: Path) -> Iterator[tuple[LoggedQuery | None, str]]:
    for _, _, line in read_jsonl_dir(logs_dir, "decisions"):
        try:
            rec = json.loads(line)
            q = str(rec.get("query_norm") or normalize(str(rec.get("query") or "")))
            yield LoggedQuery(str(rec.get("session_id") or ""), float(rec.get("ts") or 0.0), q), q
        except (ValueError, TypeError, AttributeError):
            yield None, ""


def read_logged(logs_dir: Path) -> LoggedData:
    counts: dict[str, int] = {}
    logged: list[LoggedQuery] = []
    bad = 0
    for item, q in iter_logged_queries(logs_dir):
        if item is None:
            bad += 1
            continue
        if q:
            counts[q] = counts.get(q, 0) + 1
            logged.append(item)
    return LoggedData(counts, pairs_from_log(logged), bad)


def build_model(catalog: Catalog, *, logged: LoggedData | None = None, config: SuggestConfig | None = None,
                max_session_tracks: int | None = None, extra_pairs: Iterable[SessionPair] = ()) -> SuggestModel:
    labels = catalog_labels(catalog)
    pairs = list(catalog_session_pairs(catalog, max_tracks=max_session_tracks))
    if logged is not None:
        labels += [Label(q, "query", None, LOGGED_QUERY_WEIGHT * c) for q, c in logged.query_counts.items()]
        # Logged pairs become rows like the catalog's; how often a query was logged shows in its
        # label weight (the popularity rows and the final prior), since PECOS trains on binary Y.
        pairs += logged.pairs
    pairs += list(extra_pairs)
    return SuggestModel(config).train(labels, pairs)


# --- versioned artifacts (the one artifact store) -------------------------------------------------

def suggest_store(settings: Settings) -> ArtifactStore:
    return ArtifactStore(settings.models_dir / "suggest", "suggest")


def save_model(model: SuggestModel, store: ArtifactStore, *, promote: bool = True,
               report: dict[str, object] | None = None) -> str:
    """Publishes a trained model as the next version (promoted unless told otherwise)."""
    return store.publish(lambda d: model.write(d / "model"), {"labels": len(model), **_numbers(model.meta)},
                         promote=promote, report=report or {"reason": "built from the catalog and the logs"})


def _numbers(meta: dict[str, object]) -> dict[str, float]:
    return {k: float(v) for k, v in meta.items() if isinstance(v, int | float) and not isinstance(v, bool)}


class SuggestService:
    """What the /suggest route calls: normalizes, runs the model, reports its version."""

    def __init__(self, model: SuggestModel, version: str) -> None:
        self.model, self.version = model, version

    def suggest(self, prefix: str, prev_query: str | None, limit: int) -> list[Suggestion]:
        raw = prefix[:400]
        norm = normalize(raw)
        if not norm:
            return []
        typed = norm + " " if raw[-1:].isspace() else norm
        prev = normalize(prev_query[:400]) if prev_query else ""
        return self.model.suggest(typed, prev, limit)


def suggest_holder(settings: Settings) -> ModelHolder[SuggestService]:
    """The serving suggest model: verified, promoted version, hot-reloaded like the others; None
    until one is built (the route then answers 503)."""

    def load(path: Path, version: str) -> SuggestService:
        return SuggestService(SuggestModel.load(path / "model"), version)

    return ModelHolder("suggest", StoreSource(suggest_store(settings), load))


def load_suggest(settings: Settings) -> SuggestService | None:
    """The serving model, loaded once (tools and tests; the service uses suggest_holder)."""
    return suggest_holder(settings).current()


__all__ = ["SuggestService", "build_model", "catalog_labels",
           "catalog_session_pairs", "load_suggest", "read_logged", "suggest_holder", "suggest_store"]
