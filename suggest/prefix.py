"""Prefix consistency: a suggestion must extend what was typed.

Exact extension scores 1. A suggestion whose first word is one edit away from the typed first
word (two for long words) and that extends the rest exactly scores `fuzzy` instead: "tayler sw"
still reaches "taylor swift", while a 1-3 letter first word, where one edit reaches half the
vocabulary, must match exactly. The first character must always match; the label tree's top
trie layers are keyed on it, so a typo there could not be found anyway.
"""

from __future__ import annotations

from rapidfuzz.distance import Levenshtein

MIN_FUZZY_WORD = 4


def prefix_match(label: str, prefix: str, fuzzy: float = 0.5) -> float:
    if label.startswith(prefix):
        return 1.0
    if not prefix or not label or label[0] != prefix[0]:
        return 0.0
    head, sep, rest = prefix.partition(" ")
    if len(head) < MIN_FUZZY_WORD:
        return 0.0
    max_ed = 1 if len(head) < 8 else 2
    if sep:  # the first word is complete: compare whole words, the rest must extend exactly
        l_head, l_sep, l_rest = label.partition(" ")
        if not l_sep and rest:
            return 0.0
        if Levenshtein.distance(head, l_head, score_cutoff=max_ed) > max_ed:
            return 0.0
        return fuzzy if l_rest.startswith(rest) else 0.0
    # Still typing the first word: it must be within max_ed of some prefix of the label's first word.
    l_head = label.partition(" ")[0]
    n = len(head)
    for m in range(max(1, n - max_ed), min(len(l_head), n + max_ed) + 1):
        if Levenshtein.distance(head, l_head[:m], score_cutoff=max_ed) <= max_ed:
            return fuzzy
    return 0.0
