"""Does a query name an artist or an album? Exact and typo-tolerant name matching over the
catalog's entity names, and the words around a name that say what kind of result is wanted
("taylor swift songs", "thriller album").

A query *names* an entity when what is left of it is the entity's normalized name (or a form of
it: without a leading "the", "acdc" for "AC/DC"), or that name with typos: the same number of
words, each equal or, for words of 4+ letters, within 1 edit (4-5 letters) or 2 edits (6+ letters,
"tayler" / "taylor") of optimal string alignment distance; at most 2 edits in all, or one per
word of 4+ letters when there are more. A typed word that is itself a catalog word is a typo only
of a word TYPO_RARITY times as common, and a one-word query needs 5+ letters to be read as a typo.
A query that merely shares a word with a name ("love" and "Love Story") names nothing. (Which
words are left, and whether a named entity comes first: services.serving.entities.)

Candidates for the typo match come from a deletion index over the names' words (every word and
each of its one-letter deletions -> the words it comes from, as sorted hashes; word and word count
-> names), so a lookup touches the few names with a word one or two edits away, not every name:
tens of microseconds per query.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

Want = Literal["artist", "album"]

# Words around a name that ask for a kind of result. Only whole words at the start or the end
# of the query count, so "songs" inside a title ("Songs About Jane") is still part of the name.
_ARTIST_SUFFIXES = (("top", "songs"), ("best", "songs"), ("all", "songs"), ("songs",), ("song",), ("tracks",),
                    ("music",), ("discography",))
_ARTIST_PREFIXES = (("songs", "by"), ("music", "by"), ("tracks", "by"), ("songs", "of"), ("music", "of"))
_ALBUM_SUFFIXES = (("album",), ("albums",), ("lp",), ("ep",))
_ALBUM_PREFIXES = (("album",), ("the", "album"))
MAX_NAME_WORDS = 8
TYPO_RARITY = 10  # a known word is read as a typo only of a word this many times as common


@dataclass(frozen=True)
class Intent:
    """A query split into the name it may hold and the kind of result its other words ask for."""

    core: str  # the normalized query without its intent words
    want: Want | None  # "artist" for "... songs", "album" for "... album", None otherwise


def parse_intent(qnorm: str) -> Intent:
    """'taylor swift songs' -> Intent('taylor swift', 'artist'); 'thriller album' -> ('thriller',
    'album'); a query that is only an intent word ('songs') keeps it as its core."""
    words = qnorm.split()
    for want, suffixes, prefixes in (("artist", _ARTIST_SUFFIXES, _ARTIST_PREFIXES),
                                     ("album", _ALBUM_SUFFIXES, _ALBUM_PREFIXES)):
        for suf in suffixes:
            if len(words) > len(suf) and tuple(words[-len(suf):]) == suf:
                return Intent(" ".join(words[: -len(suf)]), want)  # type: ignore[arg-type]
        for pre in prefixes:
            if len(words) > len(pre) and tuple(words[: len(pre)]) == pre:
                return Intent(" ".join(words[len(pre):]), want)  # type: ignore[arg-type]
    return Intent(qnorm, None)


def osa_distance(a: str, b: str, limit: int) -> int:
    """Optimal string alignment distance (insertions, deletions, substitutions, adjacent
    transpositions), or limit + 1 as soon as it must exceed `limit`."""
    if a == b:
        return 0
    if abs(len(a) - len(b)) > limit:
        return limit + 1
    prev2: list[int] = []
    prev = list(range(len(b) + 1))
    for i in range(1, len(a) + 1):
        cur = [i] + [0] * len(b)
        for j in range(1, len(b) + 1):
            cost = 0 if a[i - 1] == b[j - 1] else 1
            v = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + cost)
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                v = min(v, prev2[j - 2] + 1)
            cur[j] = v
        if min(cur) > limit:
            return limit + 1
        prev2, prev = prev, cur
    return prev[-1]


def word_tolerance(word: str) -> int:
    """Edits a typed word may be away from a name's word: none under 4 letters (too many short
    words are one edit apart), 1 for 4-5 letters, 2 from 6."""
    n = len(word)
    return 0 if n < 4 else 1 if n < 6 else 2


def _deletions(word: str) -> set[str]:
    return {word} | {word[:i] + word[i + 1:] for i in range(len(word))}


def name_keys(norm: str) -> set[str]:
    """The exact forms a name is looked up by: itself, without a leading 'the', and for names of
    initials ('ac dc', 'r e m', 'm i a') without spaces. Only those: 'sum me r' squeezed would be
    'summer'."""
    keys = {norm}
    if norm.startswith("the ") and len(norm) > 4:
        keys.add(norm[4:])
    words = norm.split()
    if len(words) > 1 and all(len(w) <= 2 for w in words):
        keys.add("".join(words))
    return keys


@dataclass(frozen=True)
class NameMatch:
    index: int  # the entity's index in the matcher's name list
    edits: int  # 0: the query is the name; more: a typo match


class NameMatcher:
    """Exact and typo-tolerant lookup of normalized names (one entry per entity, by index)."""

    def __init__(self, names: Sequence[str], known_words: Mapping[str, int] | None = None):
        """`names`: normalized, one per entity. `known_words`: how often each word occurs in other text
        of the catalog (song titles), added to the names' own counts: a typed word that is itself
        common is not read as a typo of a rarer one ("taylor" is not "txylor")."""
        self.names = list(names)
        vocab: dict[str, str] = {}  # one string object per distinct word, shared by every name using it
        self.words = [tuple(vocab.setdefault(w, w) for w in n.split()) for n in self.names]
        self.sizes = [sum(len(w) for w in ws) for ws in self.words]  # letters, spaces not counted
        exact: dict[str, list[int]] = defaultdict(list)
        # (word, the name's word count) -> names
        postings: dict[tuple[str, int], list[int]] = defaultdict(list)
        for i, norm in enumerate(self.names):
            if not norm:
                continue
            for key in name_keys(norm):
                exact[key].append(i)
            words = self.words[i]
            if len(words) <= MAX_NAME_WORDS:
                for w in set(words):
                    if len(w) >= 4:
                        postings[(w, len(words))].append(i)
        self.exact = {k: tuple(v) for k, v in exact.items()}
        self.postings = {k: tuple(v) for k, v in postings.items()}
        # One-letter deletion -> the name words it comes from, as two numpy arrays sorted by the
        # deletion's hash (a dict of ~120k strings to lists held ~25 MB; these ~2 MB). A hash
        # collision only adds a candidate, which the distance check then drops.
        self.vocab = sorted({w for w, _ in self.postings})
        pairs = sorted((hash(d), j) for j, w in enumerate(self.vocab) for d in _deletions(w))
        self._del_hash = np.fromiter((h for h, _ in pairs), dtype=np.int64, count=len(pairs))
        self._del_word = np.fromiter((j for _, j in pairs), dtype=np.int32, count=len(pairs))
        self.freq: dict[str, int] = dict(known_words or {})
        for ws in self.words:
            for w in set(ws):
                self.freq[w] = self.freq.get(w, 0) + 1

    def _near(self, words: Sequence[str]) -> set[str]:
        """The name words within one deletion (each side) of a typed word of 4+ letters."""
        keys = np.fromiter((hash(d) for w in words if len(w) >= 4 for d in _deletions(w)), dtype=np.int64)
        lo = np.searchsorted(self._del_hash, keys, side="left")
        hi = np.searchsorted(self._del_hash, keys, side="right")
        spans = zip(lo.tolist(), hi.tolist(), strict=True)
        return {self.vocab[j] for a, b in spans for j in self._del_word[a:b].tolist()}

    def match(self, core: str, *, fuzzy: bool = True) -> list[NameMatch]:
        """Names the normalized `core` is, exactly (edits 0) or else with typos, fewest edits first.
        With `fuzzy=False` only exact forms count."""
        if not core:
            return []
        hits = self.exact.get(core)
        if hits:
            return [NameMatch(i, 0) for i in hits]
        if not fuzzy:
            return []
        return self._typo(core.split())

    def _may_mean(self, typed: str, word: str) -> bool:
        """A typed word can be a typo of `word` unless it is a word of its own at least a tenth
        as common."""
        return self.freq.get(typed, 0) * TYPO_RARITY < self.freq.get(word, 0)

    def _typo(self, words: list[str]) -> list[NameMatch]:
        n = len(words)
        if n == 0 or n > MAX_NAME_WORDS or not any(len(w) >= 4 for w in words):
            return []
        if n == 1 and len(words[0]) < 5:
            # A lone 4-letter word is one edit from too many names ("etna", "ladi", "magi"): in
            # the dev sets, two thirds of the misspelt song titles that put an artist first did
            # it this way.
            return []
        budget = max(2, sum(len(w) >= 4 for w in words))  # about one edit per long word, at least 2
        near = self._near(words)
        size = sum(len(w) for w in words)
        candidates = {i for v in near for i in self.postings.get((v, n), ())
                      if abs(self.sizes[i] - size) <= budget}
        out: list[NameMatch] = []
        memo: dict[tuple[str, str], int] = {}  # names share words: each pair is measured once
        for i in candidates:
            pairs = [(typed, word) for typed, word in zip(words, self.words[i], strict=True) if typed != word]
            if not pairs or any(word_tolerance(w) == 0 or not self._may_mean(t, w) for t, w in pairs):
                continue
            edits = 0
            for typed, word in pairs:
                d = memo.get((typed, word))
                if d is None:
                    d = memo[(typed, word)] = osa_distance(typed, word, word_tolerance(word))
                edits += d if d <= word_tolerance(word) else budget + 1
                if edits > budget:
                    break
            if edits <= budget:
                out.append(NameMatch(i, edits))
        out.sort(key=lambda m: (m.edits, m.index))
        return out


def split_points(words: Sequence[str]) -> Iterable[tuple[str, str]]:
    """('queen greatest hits') -> ('queen', 'greatest hits'), ('queen greatest', 'hits'): every
    way to read a query as two names one after the other."""
    for k in range(1, len(words)):
        yield " ".join(words[:k]), " ".join(words[k:])
