"""The baseline and fast path: most-popular completions of a prefix.

A prefix trie over label texts, stored the compact way: the texts sorted, so the completions of
a prefix are one contiguous range found by two binary searches, and the top-k of a range is a
partial sort of its weights. Ranges too wide to sort per request (short prefixes: "t" covers
thousands of labels) have their top-k precomputed when the trie is built; every wider range is
the range of some shorter prefix, so only a few thousand are stored whatever the label count.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import numpy as np

_MAX_CHAR = "\U0010ffff"


class PopularityTrie:
    def __init__(self, texts: Sequence[str], weights: Sequence[float] | np.ndarray, *,
                 top_k: int = 20, wide: int = 512) -> None:
        if any(texts[i] > texts[i + 1] for i in range(len(texts) - 1)):
            raise ValueError("PopularityTrie needs texts sorted")
        self.texts = list(texts)
        self.weights = np.asarray(weights, dtype=np.float64)
        self.top_k, self.wide = top_k, wide
        self._top: dict[str, np.ndarray] = {}
        self._precompute()

    def _precompute(self) -> None:
        # Walk prefix lengths upward; a prefix is stored only while its range stays wide.
        frontier = {""}
        depth = 0
        while frontier:
            nxt: set[str] = set()
            for p in frontier:
                lo, hi = self.range(p)
                if hi - lo <= self.wide:
                    continue
                self._top[p] = self._sorted_top(lo, hi, self.top_k)
                for t in self.texts[lo:hi]:
                    if len(t) > depth:
                        nxt.add(t[:depth + 1])
            frontier = nxt
            depth += 1

    def range(self, prefix: str) -> tuple[int, int]:
        lo = bisect.bisect_left(self.texts, prefix)
        hi = bisect.bisect_left(self.texts, prefix + _MAX_CHAR, lo)
        return lo, hi

    def _sorted_top(self, lo: int, hi: int, k: int) -> np.ndarray:
        w = self.weights[lo:hi]
        if hi - lo > k:
            part = np.argpartition(-w, k - 1)[:k]
        else:
            part = np.arange(hi - lo)
        # Ties broken by text order (the index), so results are deterministic.
        order = np.lexsort((part, -w[part]))
        return part[order] + lo

    def complete(self, prefix: str, k: int) -> list[int]:
        """Label indices of the k heaviest labels that start with prefix, heaviest first."""
        if k <= 0:
            return []
        stored = self._top.get(prefix)
        if stored is not None and k <= len(stored):
            return stored[:k].tolist()
        lo, hi = self.range(prefix)
        if lo == hi:
            return []
        return self._sorted_top(lo, hi, k).tolist()

    def __len__(self) -> int:
        return len(self.texts)
