"""Music query understanding: which genres / subgenres, decade or year, and which moods or
activities a topic query names ("sad love songs", "80s rock", "gym rap", "latin summer"), with
each mood/activity mapped to target audio-feature values and ranges.

How the mapping is derived (nothing here is fitted on the dev playlists the bench scores):
- Genres and subgenres: the catalog's own tag vocabulary (its `genres` / `subgenres` fields). A
  query n-gram equal to a genre name selects that genre; equal to a subgenre name, that subgenre;
  a single word that is a whole word of subgenre names ("house", "soul", "trap") selects those
  subgenres. A few spellings people type are aliased ("rnb", "hiphop").
- Decades / years: "80s", "1980s", "80's", "eighties", "2019" -> a release-year range.
- Moods and activities (`CONCEPTS`): each has trigger words (what people type) and, where
  Spotify's published feature definitions settle it, a prior direction (valence *is* "musical
  positiveness": sad -> low valence; energy, danceability, acousticness, instrumentalness likewise).
  The catalog then refines it: the tracks whose title or album contains a trigger word (the
  catalog's playlist-like text; the catalog has no playlist names) are compared with the whole
  catalog per feature, as an effect size d = (mean_seed - mean_all) / sd_all. Features with
  |d| >= MIN_EFFECT and at least MIN_SEED seed tracks add d to the direction, so "chill" learns
  higher acousticness and "workout" a faster tempo from data, and "love", which has no prior,
  is defined by data alone.
  Per feature the direction w becomes a target on the catalog's percentile scale (the features
  are skewed: most tracks have instrumentalness ~0 and energy > 0.6, so raw units would make
  "calm" mean "average"): TARGET_QUANTILE (w > 0) or 1 - TARGET_QUANTILE (w < 0), weighted |w|,
  with a range of +-PCT_SPREAD percentiles, reported in raw units too.
  `explain()` prints the resulting table.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from retrievers.text import normalize

# Audio features this module reasons about, all in [0, 1] except tempo (BPM).
FEATURES = ("valence", "energy", "danceability", "tempo", "acousticness", "instrumentalness", "speechiness",
            "liveness")
MIN_SEED = 30
MIN_EFFECT = 0.1
PRIOR_WEIGHT = 0.5
TARGET_QUANTILE = 0.85
PCT_SPREAD = 0.25


@dataclass(frozen=True)
class Concept:
    name: str
    triggers: tuple[str, ...]  # normalized words / phrases people type
    prior: Mapping[str, float] = field(default_factory=dict)  # feature -> +1 / -1 (Spotify definitions)


CONCEPTS: tuple[Concept, ...] = (
    Concept("sad", ("sad", "sadness", "depressing", "depressed", "heartbreak", "heartbroken", "crying", "tears",
                    "melancholy", "lonely", "broken", "cry"), {"valence": -1}),
    Concept("happy", ("happy", "feel good", "feelgood", "upbeat", "cheerful", "joy", "good vibes"),
            {"valence": +1}),
    Concept("chill", ("chill", "chillout", "chilled", "relax", "relaxing", "calm", "mellow", "lounge", "lofi",
                      "lo fi", "easy"), {"energy": -1}),
    Concept("party", ("party", "club", "dance", "dancing", "fiesta", "bangers", "banger", "dancefloor"),
            {"danceability": +1, "energy": +1}),
    Concept("workout", ("workout", "gym", "training", "running", "run", "cardio", "fitness", "pump", "beast mode",
                        "motivation", "lifting"), {"energy": +1}),
    Concept("energetic", ("energy", "energetic", "hype", "intense", "power"), {"energy": +1}),
    Concept("sleep", ("sleep", "sleeping", "bedtime", "lullaby", "asleep"),
            {"energy": -1, "acousticness": +1}),
    Concept("focus", ("focus", "study", "studying", "concentration", "reading", "coding"),
            {"instrumentalness": +1, "speechiness": -1, "energy": -1}),
    Concept("acoustic", ("acoustic", "unplugged"), {"acousticness": +1}),
    Concept("instrumental", ("instrumental", "instrumentals"), {"instrumentalness": +1, "speechiness": -1}),
    Concept("love", ("love", "romantic", "romance", "valentine", "valentines", "sexy"), {}),
    Concept("summer", ("summer", "beach", "sun", "sunny", "tropical", "vacation", "holiday"), {"valence": +1}),
    Concept("live", ("live", "concert"), {"liveness": +1}),
)

GENRE_ALIASES = {"rnb": "r and b", "randb": "r and b", "hiphop": "hip hop", "electronic": "edm",
                 "reggaeton": "reggaeton", "raps": "rap"}
_DECADE_WORDS = {"fifties": 1950, "sixties": 1960, "seventies": 1970, "eighties": 1980, "nineties": 1990}
_DECADE = re.compile(r"^(?:(19|20)?(\d)0)s$")  # "80s", "1980s" (normalize turns "80's" into "80s")
_YEAR = re.compile(r"^(19[5-9]\d|20[0-4]\d)$")
# Words too generic to pick subgenres by a partial match ("pop" is a genre; "new" in "new jack swing").
_NO_PARTIAL = frozenset({"new", "music", "songs", "song", "hits", "mix", "the", "and", "of", "big", "room",
                         "wave", "permanent", "contemporary", "urban", "album", "classic", "hip", "hop", "post",
                         "teen", "southern", "latin", "pop", "dance", "indie", "progressive", "jack"})


@dataclass(frozen=True)
class FeatureTarget:
    feature: str
    target_pct: float  # target on the catalog percentile scale, 0..1
    weight: float
    target: float  # the same in raw feature units (documentation, tests)
    low: float  # raw value at target_pct - PCT_SPREAD
    high: float  # raw value at target_pct + PCT_SPREAD


@dataclass(frozen=True)
class ParsedQuery:
    genres: tuple[str, ...] = ()
    subgenres: tuple[str, ...] = ()
    years: tuple[int, int] | None = None
    concepts: tuple[str, ...] = ()
    targets: tuple[FeatureTarget, ...] = ()
    rest: tuple[str, ...] = ()  # words nothing above explained

    @property
    def empty(self) -> bool:
        return not (self.genres or self.subgenres or self.years or self.targets)


@dataclass
class QueryUnderstanding:
    """Built once from the catalog's columns; `parse` is pure and cheap (a few dict lookups)."""

    genres: dict[str, str]  # normalized name -> catalog tag
    subgenres: dict[str, str]
    concept_targets: dict[str, tuple[FeatureTarget, ...]]
    concept_evidence: dict[str, dict[str, object]]

    @classmethod
    def fit(cls, genre_tags: Sequence[Sequence[str]], subgenre_tags: Sequence[Sequence[str]],
            texts: Sequence[str], features: Mapping[str, np.ndarray]) -> QueryUnderstanding:
        """genre_tags / subgenre_tags / texts (title + album) per track; features: name -> array
        over the same tracks (any subset of FEATURES)."""
        genres = {normalize(g): g for tags in genre_tags for g in tags if normalize(g)}
        subgenres = {normalize(g): g for tags in subgenre_tags for g in tags if normalize(g)}
        joined = [f" {normalize(t)} " for t in texts]
        words = [frozenset(j.split()) for j in joined]
        feats = {f: np.asarray(v, dtype=np.float64) for f, v in features.items() if f in FEATURES}
        stats = {f: (float(v.mean()), float(v.std()) or 1.0) for f, v in feats.items()}
        targets: dict[str, tuple[FeatureTarget, ...]] = {}
        evidence: dict[str, dict[str, object]] = {}
        for c in CONCEPTS:
            singles = {t for t in c.triggers if " " not in t}
            phrases = [f" {t} " for t in c.triggers if " " in t]
            seed = np.fromiter((not singles.isdisjoint(w) for w in words), dtype=bool, count=len(words))
            if phrases:
                seed |= np.fromiter((any(p in j for p in phrases) for j in joined), dtype=bool, count=len(joined))
            n = int(seed.sum())
            effects = {f: (float(v[seed].mean()) - stats[f][0]) / stats[f][1] for f, v in feats.items()} if n else {}
            direction: dict[str, float] = {}
            for f in feats:
                w = PRIOR_WEIGHT * c.prior.get(f, 0.0)
                d = effects.get(f, 0.0)
                if n >= MIN_SEED and abs(d) >= MIN_EFFECT:
                    w += d
                if w != 0.0:
                    direction[f] = w
            out = []
            for f, w in direction.items():
                q = TARGET_QUANTILE if w > 0 else 1.0 - TARGET_QUANTILE
                raw = np.quantile(feats[f], [q, max(0.0, q - PCT_SPREAD), min(1.0, q + PCT_SPREAD)])
                out.append(FeatureTarget(f, q, abs(w), *(float(x) for x in raw)))
            targets[c.name] = tuple(sorted(out, key=lambda x: -x.weight))
            evidence[c.name] = {"seed_tracks": n, "effects": {f: round(d, 3) for f, d in effects.items()},
                                "prior": dict(c.prior)}
        return cls(genres, subgenres, targets, evidence)

    def parse(self, query: str) -> ParsedQuery:
        words = normalize(query).split()
        used = [False] * len(words)
        genres: list[str] = []
        subgenres: list[str] = []
        concepts: list[str] = []
        years: tuple[int, int] | None = None
        triggers = {t: c.name for c in CONCEPTS for t in c.triggers}
        # Longest n-grams first, so "hip hop" beats "hop" and "feel good" beats "good".
        for n in (3, 2, 1):
            for i in range(len(words) - n + 1):
                if any(used[i:i + n]):
                    continue
                gram = " ".join(words[i:i + n])
                gram = GENRE_ALIASES.get(gram, gram)
                hit = True
                if gram in self.genres:
                    genres.append(self.genres[gram])
                elif gram in triggers:
                    if triggers[gram] not in concepts:
                        concepts.append(triggers[gram])
                elif n == 1 and (span := _years(gram)) is not None:
                    # Several years or decades name a range: "80s 90s", "1987 - 2002".
                    years = span if years is None else (min(years[0], span[0]), max(years[1], span[1]))
                elif (n > 1 or (gram not in _NO_PARTIAL and len(gram) > 2)) and (
                        parts := self._subgenres_with(gram)):
                    # "hip hop" -> hip hop, southern hip hop, latin hip hop; "house" -> the house subgenres.
                    subgenres.extend(parts)
                else:
                    hit = False
                if hit:
                    used[i:i + n] = [True] * n
        targets = _merge_targets([self.concept_targets.get(c, ()) for c in concepts])
        rest = tuple(w for w, u in zip(words, used, strict=True) if not u)
        return ParsedQuery(tuple(dict.fromkeys(genres)), tuple(dict.fromkeys(subgenres)), years, tuple(concepts),
                           targets, rest)

    def _subgenres_with(self, gram: str) -> list[str]:
        padded = f" {gram} "
        return [tag for name, tag in self.subgenres.items() if padded in f" {name} "]

    def explain(self) -> str:
        """The mood/activity -> audio-feature table, with the evidence each row came from."""
        lines = ["| concept | seed tracks | targets (feature: target [range] weight) |", "|---|---|---|"]
        for c in CONCEPTS:
            ts = "; ".join(f"{t.feature}: {t.target:.3g} [{t.low:.3g}, {t.high:.3g}] (p{100 * t.target_pct:.0f}) "
                           f"w={t.weight:.2f}"
                           for t in self.concept_targets[c.name])
            lines.append(f"| {c.name} | {self.concept_evidence[c.name]['seed_tracks']} | {ts} |")
        return "\n".join(lines)


def _years(word: str) -> tuple[int, int] | None:
    if word in _DECADE_WORDS:
        start = _DECADE_WORDS[word]
        return start, start + 9
    m = _DECADE.match(word)
    if m:
        century, decade = m.group(1), int(m.group(2))
        if century is None:
            century = "19" if decade >= 3 else "20"  # "80s" -> 1980s, "10s" -> 2010s
        start = int(century) * 100 + decade * 10
        return start, start + 9
    if _YEAR.match(word):
        return int(word), int(word)
    return None


def _merge_targets(groups: Sequence[Sequence[FeatureTarget]]) -> tuple[FeatureTarget, ...]:
    """Several concepts ("sad love"): per feature the weight-averaged target, weights summed."""
    by_feature: dict[str, list[FeatureTarget]] = {}
    for group in groups:
        for t in group:
            by_feature.setdefault(t.feature, []).append(t)
    out = []
    for f, ts in by_feature.items():
        w = sum(t.weight for t in ts)
        pct = sum(t.target_pct * t.weight for t in ts) / w
        raw = sum(t.target * t.weight for t in ts) / w
        out.append(FeatureTarget(f, pct, w, raw, min(t.low for t in ts), max(t.high for t in ts)))
    return tuple(sorted(out, key=lambda t: -t.weight))
