"""A typo model for queries people type: deletions, transpositions, doubled/undoubled letters and
phonetic swaps ("taylor" -> "tayler"). Used to augment cold-start training queries and by the
traffic simulator. Seeded: the same rng gives the same typos."""

from __future__ import annotations

import math
import random

PHONETIC = [("ay", "ey"), ("or", "er"), ("ph", "f"), ("ck", "k"), ("c", "k"), ("ee", "ea"), ("ie", "y"),
            ("ou", "u"), ("s", "z"), ("x", "ks"), ("y", "i"), ("oo", "u"), ("er", "a"), ("th", "t")]


def typo_word(word: str, rng: random.Random) -> str:
    if len(word) < 4:
        return word
    kind = rng.random()
    if kind < 0.35:
        swaps = [(a, b) for a, b in PHONETIC if a in word] + [(b, a) for a, b in PHONETIC if b in word]
        if swaps:
            a, b = rng.choice(swaps)
            return word.replace(a, b, 1)
    i = rng.randrange(1, len(word) - 1)
    if kind < 0.6:
        return word[:i] + word[i + 1:]  # deletion
    if kind < 0.85:
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]  # transposition
    return word[:i] + word[i] + word[i:]  # doubled letter


def add_typos(query: str, rng: random.Random, rate: float = 0.5) -> str:
    """Misspells each word of 4+ letters with probability `rate`, at least one word if any can be."""
    words = query.split()
    long_idx = [i for i, w in enumerate(words) if len(w) >= 4]
    if not long_idx:
        return query
    hit = [i for i in long_idx if rng.random() < rate] or [rng.choice(long_idx)]
    for i in hit:
        words[i] = typo_word(words[i], rng)
    return " ".join(words)


def partial(query: str, rng: random.Random) -> str:
    """A prefix of the query, as typed by someone who stopped early (at least one word)."""
    words = query.split()
    if len(words) <= 1:
        return query[: max(3, len(query) - rng.randrange(0, 3))]
    return " ".join(words[: rng.randrange(1, len(words))])


def typed_prefix(query: str, rng: random.Random, min_share: float = 0.3) -> str:
    """What a searcher has typed when the results already answer: a cut at any character from
    min_share of the query (at least 3 characters) to one short of the end, so both "shake it o"
    and "shake it" occur. Queries under 4 characters stay whole."""
    if len(query) < 4:
        return query
    lo = max(3, math.ceil(min_share * len(query)))
    return query[: rng.randrange(min(lo, len(query) - 1), len(query))].rstrip()
