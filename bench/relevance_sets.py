"""The dev relevance sets every relevance number in the project is measured on.

- **topic**: the real playlist names of `../shared/data/queries/playlists_dev.tsv`, each with the
  tracks of that playlist as relevant (graded 1). Broad queries ("sad love songs", "gym rap").
- **spearfish**: queries for one song, built from the catalog with a fixed seed, in the shapes
  people type them. One sample of distinct recordings (uniform over recordings, so the long tail is
  in it, as it is in real traffic); for each sampled recording:
  - `artist_title`: "<artist> <title>", e.g. "taylor swift shake it off"
  - `title`: "shake it off"
  - `partial_title`: a prefix of the title as typed by someone who has not finished, cut at a
    random character between 40% and the end, so both mid-word cuts ("shake it o") and first
    words ("shake it") occur. Titles under 5 characters are not cut; a prefix that is itself the
    full title of another song ("love" from "Love Story") is dropped, since that song is a
    correct answer to it.
  - `title_typo`, `artist_title_typo`: the same with `services.offline.typos.add_typos` misspellings
    (each 4+ letter word with probability 0.5, at least one).
  The title is the part people type: no version suffix ("- Remastered 2011", "(feat. X)").
  Relevant = the sampled track or any version of the same recording
  (`services.serving.recordings.recording_key`: same base title and same primary artist).
- **entity**: queries for an artist or an album, built from the catalog's entities
  (services.serving.entities.EntityIndex) with a fixed seed; relevant = the entity (for an album,
  any edition: same artist, same name). Artists sampled uniformly (long tail included):
  `artist` ("taylor swift"), `artist_typo` (add_typos, "tayler swift"), `artist_songs`
  ("taylor swift songs"). Albums sampled uniformly among the ones a query can ask for by name:
  not a single named like its one song ("Blinding Lights" is that song's query), not a name more
  than GENERIC_ALBUM artists use ("Greatest Hits"), not named like its artist ("Bon Iver": the
  artist answers that name): `album` ("1989"), `album_typo`,
  `artist_album` ("taylor swift 1989"), `album_word` ("1989 album").
"""

from __future__ import annotations

import math
import random
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Literal

from bench.common import load_playlists
from services.catalog import Catalog, Track
from services.offline.typos import add_typos
from services.serving.recordings import base_title, primary_artist, recording_key

SpearfishKind = Literal["artist_title", "title", "partial_title", "title_typo", "artist_title_typo"]
EntityQueryKind = Literal["artist", "artist_typo", "artist_songs", "album", "album_typo", "artist_album", "album_word"]
ENTITY_KINDS: tuple[EntityQueryKind, ...] = ("artist", "artist_typo", "artist_songs", "album", "album_typo",
                                             "artist_album", "album_word")
SPEARFISH_KINDS: tuple[SpearfishKind, ...] = ("artist_title", "title", "partial_title", "title_typo",
                                              "artist_title_typo")
DEFAULT_SEED = 20261201
PARTIAL_MIN_CHARS = 5
PARTIAL_MIN_SHARE = 0.4


@dataclass(frozen=True)
class RelevanceQuery:
    qid: str
    text: str
    kind: str  # "topic" or one of SPEARFISH_KINDS
    relevant: dict[str, int] = field(hash=False)


def topic_set() -> list[RelevanceQuery]:
    queries, qrels = load_playlists()
    return [RelevanceQuery(qid, text, "topic", qrels[qid]) for qid, text in queries.items() if qid in qrels]


def partial_prefix(title: str, rng: random.Random) -> str | None:
    """A prefix of `title` (normalized) someone stopped typing at; None if the title is too short."""
    if len(title) < PARTIAL_MIN_CHARS:
        return None
    lo = max(3, math.ceil(PARTIAL_MIN_SHARE * len(title)))
    cut = rng.randrange(lo, len(title))  # strictly shorter than the title
    prefix = title[:cut].rstrip()
    return prefix if len(prefix) >= 3 else None


def spearfish_set(catalog: Catalog, n_per_kind: int = 300, seed: int = DEFAULT_SEED) -> list[RelevanceQuery]:
    """n_per_kind sampled recordings, one query of each kind per recording (fewer for partial and
    typo kinds when a title cannot be cut or misspelled). Deterministic for a catalog and seed."""
    versions: dict[str, list[Track]] = defaultdict(list)
    for t in catalog.tracks:
        versions[recording_key(t.title, t.artist)].append(t)
    all_titles = {base_title(t.title) for t in catalog.tracks}
    rng = random.Random(seed)
    keys = sorted(versions)
    sample = rng.sample(keys, min(n_per_kind, len(keys)))
    out: list[RelevanceQuery] = []
    for i, key in enumerate(sample):
        track = rng.choice(versions[key])
        title, artist = base_title(track.title), primary_artist(track.artist)
        if not title:
            continue
        relevant = {t.track_id: 1 for t in versions[key]}
        texts: dict[str, str | None] = {"artist_title": f"{artist} {title}", "title": title}
        prefix = partial_prefix(title, rng)
        texts["partial_title"] = prefix if prefix and prefix not in all_titles else None
        typo = add_typos(title, rng)
        texts["title_typo"] = typo if typo != title else None
        typo = add_typos(f"{artist} {title}", rng)
        texts["artist_title_typo"] = typo if typo != f"{artist} {title}" else None
        for kind in SPEARFISH_KINDS:
            text = texts[kind]
            if text:
                out.append(RelevanceQuery(f"sf-{i:04d}-{kind}", text, kind, relevant))
    return out


def entity_set(catalog: Catalog, n_per_kind: int = 300, seed: int = DEFAULT_SEED) -> list[RelevanceQuery]:
    """n_per_kind artists and n_per_kind albums, one query of each of their kinds (fewer for typo
    kinds when a name cannot be misspelt). Deterministic for a catalog and seed."""
    from services.serving.entities import EntityIndex

    index = EntityIndex.from_catalog(catalog)
    rng = random.Random(seed + 17)
    artists = sorted(e.entity_id for e in index.entities if e.kind == "artist")
    editions: dict[tuple[str, str], list[str]] = defaultdict(list)
    for e in index.entities:
        if e.kind == "album":
            editions[(e.artist_norm, e.norm)].append(e.entity_id)
    albums = sorted(e.entity_id for e in index.entities
                    if e.kind == "album" and not (e.title_track and e.n_recordings <= 1)
                    and e.norm not in index.generic_album_names and e.norm != e.artist_norm)
    out: list[RelevanceQuery] = []
    for i, eid in enumerate(rng.sample(artists, min(n_per_kind, len(artists)))):
        e = index.by_id[eid]
        typo = add_typos(e.norm, rng)
        texts = {"artist": e.norm, "artist_typo": typo if typo != e.norm else None, "artist_songs": f"{e.norm} songs"}
        out += [RelevanceQuery(f"ent-a{i:04d}-{k}", t, k, {eid: 1}) for k, t in texts.items() if t]
    for i, eid in enumerate(rng.sample(albums, min(n_per_kind, len(albums)))):
        e = index.by_id[eid]
        typo = add_typos(e.norm, rng)
        relevant = {x: 1 for x in editions[(e.artist_norm, e.norm)]}
        texts = {"album": e.norm, "album_typo": typo if typo != e.norm else None,
                 "artist_album": f"{e.artist_norm} {e.norm}", "album_word": f"{e.norm} album"}
        out += [RelevanceQuery(f"ent-b{i:04d}-{k}", t, k, relevant) for k, t in texts.items() if t]
    return out
