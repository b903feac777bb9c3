"""Artists and albums as search results: the entity index built from the catalog at start-up,
and the plan of one search's entity hits (which, where), the pipeline's single hook.

**Entities.** One artist per primary artist (services.serving.recordings.primary_artist: "Big Moe
featuring Z-Ro" is Big Moe's), id `artist:<slug of the normalized name>`; one album per catalog
album id, id `album:<album_id>`. Each carries its recordings' best versions, most popular first
(one per recording, services.serving.recordings.recording_key); the first TOP_TRACKS are its top
tracks, the ones a client plays.

**Which entity a query asks for** (services.serving.entity_names says when a query *names* one):
- a named artist comes first (position 1), unless the query is also the exact title of a more
  popular track ("iris": the Goo Goo Dolls' song, not the band Iris): then it comes after the
  first SECONDARY_AFTER tracks;
- a named album comes first unless its name is also a song's title: a single ("Blinding Lights",
  the album of one song) is no hit, an album named like one of its artist's songs ("Lover") comes
  after the first SECONDARY_AFTER tracks, and so does an album of several songs named like another
  artist's song ("Malibu"), unless the query names the artist too ("anderson paak malibu"): then
  it comes first; a name shared by more than GENERIC_ALBUM artists ("Greatest Hits") names no
  album unless the query also names the artist ("queen greatest hits");
- "... songs" / "songs by ..." ask for the artist, "... album" for the album: that one comes first;
- a typo match is tried only when the query is no exact name or song title at all;
- of several named entities the best (exact before typo, artist before album, then popularity) is
  first and at most MAX_NAMED - 1 others follow the first SECONDARY_AFTER tracks. A query that
  names nothing gets no entity hit when tracks are asked for.
When the request asks for no tracks (`types=artist`), the hits are the named entities and then the
artists / albums of the ranked tracks, in the order of their best track.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter, defaultdict
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import Literal

from logged.records import EntityKind, ServedEntity
from retrievers.text import normalize
from services.catalog import Catalog, Track
from services.decision_store import Ranked
from services.serving.entity_names import Intent, NameMatch, NameMatcher, parse_intent, split_points
from services.serving.recordings import base_title, primary_credit

HitType = Literal["track", "artist", "album"]
HIT_TYPES: tuple[HitType, ...] = ("track", "artist", "album")
Match = Literal["name", "typo", "tracks"]
TOP_TRACKS = 5  # top tracks an entity hit carries
MAX_RECORDINGS = 50  # recordings kept per entity: a filtered search picks its top tracks among them
SECONDARY_AFTER = 3  # named entities that are not first come after this many tracks
MAX_NAMED = 3  # named entity hits per search, when tracks are asked for
GENERIC_ALBUM = 3  # an album name used by more artists than this names no one album by itself

Allowed = Callable[[Sequence[str]], Sequence[bool]]  # which track ids a filter lets through


@dataclass(frozen=True, slots=True)
class Entity:
    entity_id: str
    kind: EntityKind
    name: str  # as written in the catalog
    artist: str  # the artist itself, or the album's (most frequent) primary artist, as written
    norm: str  # normalized name, what queries are matched against
    artist_norm: str
    recordings: tuple[str, ...]  # best version of each recording, most popular first
    n_recordings: int
    popularity: int  # of its most popular track
    year: int | None  # albums: release year
    genres: tuple[str, ...]
    title_track: bool  # albums: named like one of its songs (a single, or a title track)
    title_key: str  # the name as a song title (services.serving.recordings.base_title): "taste" for
    # the single "Taste (feat. Offset)"; the artist's name for an artist

    @property
    def tracks(self) -> tuple[str, ...]:
        return self.recordings[:TOP_TRACKS]


def artist_entity_id(norm: str) -> str:
    """'taylor swift' -> 'artist:taylor-swift'. Names with characters outside a-z0-9 ('beyoncé'
    is already folded, '香取慎吾' is not) or very long ones get a short hash so ids stay unique."""
    slug = re.sub(r"[^a-z0-9]+", "-", norm).strip("-")[:48].strip("-")
    if slug.replace("-", " ") != norm:
        digest = hashlib.sha256(norm.encode()).hexdigest()
        slug = f"{slug}-{digest[:8]}" if slug else digest[:12]
    return f"artist:{slug}"


@dataclass(frozen=True, slots=True)
class _Row:
    """What the index needs of one track, computed once (names are normalized per track, not per
    entity: the build would otherwise normalize every title three times)."""

    track: Track
    credit: str  # primary artist as written
    artist: str  # primary artist, normalized
    title: str  # base title, normalized
    recording: str  # services.serving.recordings.recording_key


def _best_versions(rows: Sequence[_Row]) -> list[Track]:
    """One track per recording (its most popular version), most popular first."""
    best: dict[str, Track] = {}
    for r in rows:
        if r.recording not in best or r.track.popularity > best[r.recording].popularity:
            best[r.recording] = r.track
    return sorted(best.values(), key=lambda t: (-t.popularity, t.title))


def _genres(rows: Sequence[_Row]) -> tuple[str, ...]:
    counts: dict[str, int] = {}
    for r in rows:
        for g in r.track.genres:
            counts[g] = counts.get(g, 0) + 1
    return tuple(sorted(counts, key=lambda g: -counts[g])[:3])


class EntityIndex:
    """Every artist and album of a catalog, their names for matching, and track -> entity maps."""

    def __init__(self, entities: Sequence[Entity], track_entities: dict[str, tuple[str, ...]],
                 title_popularity: dict[str, int], artist_titles: set[tuple[str, str]]):
        self.entities = list(entities)
        self.by_id = {e.entity_id: e for e in self.entities}
        self.track_entities = track_entities  # track id -> (artist id, album id or nothing)
        self.title_popularity = title_popularity  # normalized song title -> its most popular track's
        self.artist_titles = artist_titles  # (primary artist, song title) for titles some album has
        title_words: dict[str, int] = {}
        for title in title_popularity:
            for w in set(title.split()):
                title_words[w] = title_words.get(w, 0) + 1
        self.matcher = NameMatcher([e.norm for e in self.entities], title_words)
        artists_per_album_name: dict[str, set[str]] = defaultdict(set)
        self.by_artist_album: dict[tuple[str, str], list[int]] = defaultdict(list)
        for i, e in enumerate(self.entities):
            if e.kind == "album":
                artists_per_album_name[e.norm].add(e.artist_norm)
                self.by_artist_album[(e.artist_norm, e.norm)].append(i)
        self.generic_album_names = {n for n, a in artists_per_album_name.items() if len(a) > GENERIC_ALBUM}

    def __len__(self) -> int:
        return len(self.entities)

    def get(self, entity_id: str) -> Entity | None:
        return self.by_id.get(entity_id)

    @classmethod
    def from_catalog(cls, catalog: Catalog) -> EntityIndex:
        by_artist: dict[str, list[_Row]] = defaultdict(list)
        by_album: dict[str, list[_Row]] = defaultdict(list)
        titles: dict[str, int] = {}
        for t in catalog.tracks:
            credit = primary_credit(t.artist)
            title = base_title(t.title)
            artist = normalize(credit) or normalize(t.artist)  # = primary_artist(t.artist)
            row = _Row(t, credit, artist, title, f"{title}\x1f{artist}")  # = recording_key(t.title, t.artist)
            by_artist[artist].append(row)
            if t.album_id:
                by_album[t.album_id].append(row)
            titles[title] = max(titles.get(title, 0), t.popularity)
        entities: list[Entity] = []
        track_entities: dict[str, list[str]] = defaultdict(list)
        for norm, rows in by_artist.items():
            if not norm:
                continue
            best = _best_versions(rows)
            # The name as credited alone ("Taylor Swift"), not from a "feat." credit.
            name = Counter(r.credit for r in rows).most_common(1)[0][0]
            e = Entity(artist_entity_id(norm), "artist", name, name, norm, norm,
                       tuple(t.track_id for t in best[:MAX_RECORDINGS]), len(best), best[0].popularity, None,
                       _genres(rows), False, norm)
            entities.append(e)
            for r in rows:
                track_entities[r.track.track_id].append(e.entity_id)
        for album_id, rows in by_album.items():
            best = _best_versions(rows)
            norm = normalize(best[0].album)  # may be "" ("???"): listed, never named
            lead = Counter(r.artist for r in rows).most_common(1)[0][0] if len(rows) > 1 else rows[0].artist
            artist = next(r.credit for r in rows if r.artist == lead)
            # A single's album is often the song's full title ("Taste (feat. Offset)", "Otro Trago
            # (Remix)"): compared as song titles, without version and featuring parts.
            key = base_title(best[0].album)
            e = Entity(f"album:{album_id}", "album", best[0].album, artist, norm, lead,
                       tuple(t.track_id for t in best[:MAX_RECORDINGS]), len(best), best[0].popularity, best[0].year,
                       _genres(rows), any(r.title in (norm, key) for r in rows), key)
            entities.append(e)
            for r in rows:
                track_entities[r.track.track_id].append(e.entity_id)
        # Only the songs titled like an album matter to _asks_for.
        album_keys = {e.title_key for e in entities if e.kind == "album"}
        artist_titles = {(r.artist, r.title) for rows in by_artist.values() for r in rows if r.title in album_keys}
        return cls(entities, {k: tuple(v) for k, v in track_entities.items()}, titles, artist_titles)


@dataclass(frozen=True)
class PlacedEntity:
    """One entity hit of a search: its absolute position, why it is there, the top tracks served."""

    position: int
    entity: Entity
    tracks: tuple[str, ...]
    match: Match
    score: float  # named: 1 - 0.1 x typo edits; by tracks: its best track's ranker score

    def served(self) -> ServedEntity:
        return ServedEntity(entity_id=self.entity.entity_id, kind=self.entity.kind, position=self.position,
                            tracks=list(self.tracks), match=self.match)


@dataclass
class EntityPlan:
    """Where one search's entity hits go among its ranked tracks (positions are absolute)."""

    placed: list[PlacedEntity] = field(default_factory=list)
    with_tracks: bool = True

    def within(self, n: int) -> list[PlacedEntity]:
        return [p for p in self.placed if p.position <= n]

    def tracks_within(self, n: int) -> int:
        """How many tracks the first `n` positions hold."""
        return n - len(self.within(n)) if self.with_tracks else 0

    def track_positions(self, k: int) -> list[int]:
        """The absolute positions of the first `k` tracks."""
        taken = {p.position for p in self.placed}
        out: list[int] = []
        pos = 0
        while len(out) < k:
            pos += 1
            if pos not in taken:
                out.append(pos)
        return out

    def ranked(self, tracks: Ranked, depth: int) -> Ranked:
        """The kept ranking (later pages are cut from it) with the entity hits at their positions."""
        if not self.placed and self.with_tracks:
            return tracks
        rows = list(zip(tracks.ids, tracks.scores, tracks.found_by, strict=True)) if self.with_tracks else []
        at = {p.position: p for p in self.placed}
        ids: list[str] = []
        scores: list[float] = []
        found_by: list[list[str]] = []
        it = iter(rows)
        for pos in range(1, depth + 1):
            p = at.get(pos)
            if p is not None:
                ids.append(p.entity.entity_id)
                scores.append(p.score)
                found_by.append([])
                continue
            row = next(it, None)
            if row is None:
                break
            ids.append(row[0])
            scores.append(row[1])
            found_by.append(row[2])
        kept = set(ids)
        return Ranked(query=tracks.query, ids=ids, scores=scores, found_by=found_by,
                      versions={k: v for k, v in tracks.versions.items() if k in kept},
                      entities={p.entity.entity_id: (p.match, list(p.tracks)) for p in self.placed
                                if p.entity.entity_id in kept})


@dataclass(frozen=True)
class _Named:
    entity: Entity
    edits: int
    first: bool  # the query asks for it (may come first) rather than only naming it


class EntityPlanner:
    """Per search: the entity hits the query asks for and their positions (see the module doc)."""

    def __init__(self, index: EntityIndex):
        self.index = index

    def plan(self, qnorm: str, types: Collection[str], ranked_ids: Sequence[str], ranked_scores: Sequence[float],
             *, depth: int, allowed: Allowed | None = None) -> EntityPlan:
        """`ranked_ids` / `ranked_scores`: the search's ranked tracks (at least `depth` deep when
        there are that many), `allowed`: the request's filter, if any."""
        kinds = [k for k in ("artist", "album") if k in types]
        with_tracks = "track" in types
        if not kinds or not len(self.index):
            return EntityPlan([], with_tracks)
        named = [n for n in self.named(qnorm) if n.entity.kind in kinds]
        firsts = [n for n in named if n.first]
        if with_tracks:
            # One entity first, the few others after the tracks that answer the query best.
            lead = firsts[:1]
            rest = [n for n in named if n not in lead][: MAX_NAMED - len(lead)]
            n_tracks = len(ranked_ids)
            seq: list[tuple[Entity, Match, float] | None] = [_hit(n) for n in lead]
            seq += [None] * min(SECONDARY_AFTER, n_tracks) + [_hit(n) for n in rest]
            seq += [None] * (n_tracks - min(SECONDARY_AFTER, n_tracks))
        else:
            seq = [_hit(n) for n in firsts + [n for n in named if not n.first]]
            seq += [(self.index.by_id[eid], "tracks", float(s)) for eid, s in self._by_tracks(ranked_ids, ranked_scores,
                                                                                               kinds)]
        placed: list[PlacedEntity] = []
        seen: set[str] = set()
        pos = 0
        for item in seq:
            if pos >= depth:
                break
            if item is None:  # a track's slot
                pos += 1
                continue
            entity, match, score = item
            tracks = self._top_tracks(entity, allowed)
            if entity.entity_id in seen or not tracks:
                continue
            seen.add(entity.entity_id)
            pos += 1
            placed.append(PlacedEntity(pos, entity, tracks, match, score))
        return EntityPlan(placed, with_tracks)

    def named(self, qnorm: str) -> list[_Named]:
        """The entities the query names, best first, each marked whether it may come first."""
        ix = self.index
        # The whole query as a name first ("dorrough music" is an artist, "... the album" an
        # album), then without its intent words ("taylor swift songs").
        intent = parse_intent(qnorm)
        if intent.core != qnorm and self._matches(qnorm, fuzzy=False):
            intent = Intent(qnorm, None)
        # An exact song title is a better reading of the query than a misspelt name.
        matches = self._matches(intent.core, fuzzy=intent.core not in ix.title_popularity)
        out: dict[str, _Named] = {}
        editions: dict[tuple[str, str], Entity] = {}  # one album per artist and name (not its deluxe too)
        for m, paired in matches:
            e = ix.entities[m.index]
            if e.kind == "album":
                other = editions.setdefault((e.artist_norm, e.norm), e)
                if other is not e and (other.n_recordings, other.popularity) >= (e.n_recordings, e.popularity):
                    continue
                editions[(e.artist_norm, e.norm)] = e
                out.pop(other.entity_id, None)
            if intent.want is not None and e.kind != intent.want:
                continue
            first = self._asks_for(e, intent.want, paired, intent.core if m.edits == 0 else e.title_key)
            if first is None:
                continue
            prev = out.get(e.entity_id)
            if prev is None or (m.edits, not first) < (prev.edits, not prev.first):
                out[e.entity_id] = _Named(e, m.edits, first)
        return sorted(out.values(), key=lambda n: (not n.first, n.edits, n.entity.kind != "artist",
                                                   -n.entity.popularity, n.entity.entity_id))

    def _matches(self, core: str, *, fuzzy: bool) -> list[tuple[NameMatch, bool]]:
        """(match, read as "<artist> <album>") for every entity `core` names."""
        ix = self.index
        out = [(m, False) for m in ix.matcher.match(core, fuzzy=fuzzy)]
        for a, b in split_points(core.split()):  # "<artist> <album>" or "<album> <artist>"
            pairs = ix.by_artist_album.get((a, b), []) + ix.by_artist_album.get((b, a), [])
            out += [(NameMatch(i, 0), True) for i in pairs]
        return out

    def _asks_for(self, e: Entity, want: str | None, paired: bool, typed: str) -> bool | None:
        """True: the entity may come first; False: it comes after the best tracks; None: no hit.
        Whether its name, or what was typed for it ("revival" for "The Revival"), is also a song's
        title decides most of it (a typo of the name is as much a typo of the song)."""
        titles = self.index.title_popularity
        title_pop = max(titles.get(e.title_key, -1), titles.get(typed, -1))
        title_pop = None if title_pop < 0 else title_pop
        if want == e.kind:
            return not (e.kind == "album" and e.norm in self.index.generic_album_names and not paired)
        if e.kind == "artist":
            return title_pop is None or e.popularity >= title_pop
        if e.norm in self.index.generic_album_names and not paired:
            return None
        if e.title_track or (e.artist_norm, e.title_key) in self.index.artist_titles:
            # A single is its song; an album named like one of its artist's songs ("Lover") is
            # that song's album: the song comes first.
            return None if e.n_recordings <= 1 else False
        if paired or title_pop is None:
            return True  # named with its artist, it is not another artist's song of that name
        # Another artist's song has its name ("Malibu"): the songs first, then an album of several
        # songs; a one-song album of that name is no hit.
        return False if e.n_recordings > 1 else None

    def _by_tracks(self, ids: Sequence[str], scores: Sequence[float], kinds: Sequence[str]) -> list[tuple[str, float]]:
        """Artists / albums of the ranked tracks, in the order of their best-ranked track."""
        out: dict[str, float] = {}
        for tid, s in zip(ids, scores, strict=True):
            for eid in self.index.track_entities.get(tid, ()):
                if eid not in out and eid.split(":", 1)[0] in kinds:
                    out[eid] = s
        return list(out.items())

    @staticmethod
    def _top_tracks(e: Entity, allowed: Allowed | None) -> tuple[str, ...]:
        if allowed is None:
            return e.tracks
        return tuple(t for t, ok in zip(e.recordings, allowed(e.recordings), strict=True) if ok)[:TOP_TRACKS]


def _hit(n: _Named) -> tuple[Entity, Match, float]:
    return n.entity, ("name" if n.edits == 0 else "typo"), round(1.0 - 0.1 * n.edits, 3)
