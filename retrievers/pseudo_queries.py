"""Cold-start query generation: a metadata-driven stand-in for doc2query.

No generative model can be downloaded here, so for every track we write the queries people type
for it, from its own metadata, and predict how likely a searcher of that query wants this track:

| template                    | example                          | base score |
|-----------------------------|----------------------------------|-----------|
| title (version stripped)    | "love story"                     | 0.60      |
| artist title / title artist | "taylor swift love story"        | 0.95      |
| artist                      | "taylor swift"                   | 0.35      |
| album                       | "fearless"                       | 0.30      |
| artist + genre/subgenre     | "taylor swift country"           | 0.25      |
| genre / subgenre (+ mood)   | "dance pop", "chill dance pop"   | 0.05      |

The predicted score is base x popularity prior (0.3 + 0.7·popularity), so that at a shared query
("taylor swift") the popular tracks rank first, as clicks later will confirm or correct. Q2E
seeds its Beta priors from these scores; XR-Linear and the cold-start ranker train on the pairs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from retrievers.base import Document
from retrievers.text import normalize, split_featuring, strip_version

TEMPLATE_BASE = {
    "title": 0.60,
    "artist_title": 0.95,
    "title_artist": 0.95,
    "artist": 0.35,
    "album": 0.30,
    "artist_genre": 0.25,
    "genre": 0.05,
    "mood_genre": 0.04,
}

# Common music words people add to topic queries; mapped to the audio feature they describe so
# the mood templates are only generated for tracks that fit ("chill" = low energy...).
MOOD_WORDS: dict[str, tuple[str, str, float]] = {
    "chill": ("energy", "<", 0.45),
    "sad": ("valence", "<", 0.3),
    "happy": ("valence", ">", 0.7),
    "party": ("danceability", ">", 0.75),
    "dance": ("danceability", ">", 0.75),
    "workout": ("energy", ">", 0.85),
    "acoustic": ("acousticness", ">", 0.6),
    "instrumental": ("instrumentalness", ">", 0.5),
}


@dataclass(frozen=True, slots=True)
class PseudoQuery:
    query: str  # normalized
    doc_id: str
    score: float  # predicted P(this track is wanted | query), in (0, 1]
    template: str


def _prior(popularity: float) -> float:
    return 0.3 + 0.7 * max(0.0, min(1.0, popularity))


def generate(doc: Document, *, moods: bool = True) -> Iterator[PseudoQuery]:
    f = doc.fields
    title_raw = f.get("title", "")
    main_title, _ = split_featuring(title_raw)
    title = normalize(strip_version(main_title))
    artist = normalize(f.get("artist", ""))
    album = normalize(f.get("album", ""))
    genres = [g for g in (normalize(x) for x in _tags(f.get("genres", ""), f.get("subgenres", ""))) if g]
    prior = _prior(doc.popularity)
    out: dict[str, tuple[float, str]] = {}

    def add(q: str, template: str) -> None:
        if q and len(q) <= 200:
            score = TEMPLATE_BASE[template] * prior
            if out.get(q, (0.0, ""))[0] < score:
                out[q] = (score, template)

    add(title, "title")
    if artist:
        add(f"{artist} {title}", "artist_title")
        add(f"{title} {artist}", "title_artist")
        add(artist, "artist")
    if album and album != title:
        add(album, "album")
    for g in genres:
        add(g, "genre")
        if artist:
            add(f"{artist} {g}", "artist_genre")
        if moods:
            for word, (feat, op, thr) in MOOD_WORDS.items():
                v = doc.extra.get(feat)
                if isinstance(v, (int, float)) and (v < thr if op == "<" else v > thr):
                    add(f"{word} {g}", "mood_genre")
    for q, (score, template) in out.items():
        yield PseudoQuery(q, doc.doc_id, score, template)


def _tags(genres: str, subgenres: str) -> list[str]:
    # Document fields hold space-joined tags; subgenres are multi-word, so re-split on the
    # original separators when the catalog kept them, else treat the whole field as one tag.
    tags: list[str] = []
    for raw in (genres, subgenres):
        parts = raw.split("|") if "|" in raw else [raw]
        tags.extend(p for p in parts if p.strip())
    return tags


def generate_all(docs: Sequence[Document], *, moods: bool = True) -> list[PseudoQuery]:
    return [pq for d in docs for pq in generate(d, moods=moods)]
