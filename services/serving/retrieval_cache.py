"""Per-arm retrieval cache: (arm, model, query, k) -> candidates, a bounded LRU.

Music search traffic is Zipfian: the same few thousand queries make up much of it, and for an
arm whose answer is a pure function of its model and the query, running it again gives the same
list. So `SearchPipeline._retrieve` asks here first.

* Keys use the query exactly as the arm receives it (the API trims it), not a normalized form:
  the dense encoder sees punctuation and the lexical arm a trailing space (prefix search), so two
  spellings that normalize alike may retrieve differently, and a cache must never answer what the
  arm would not.
* Only arms listed as cacheable: lexical, dense, structured and XR-Linear answer from files loaded at
  start-up (XR from a hot-reloaded version). The click memory (q2e) is not cached: it changes
  with every feedback event, and costs ~0.2 ms.
* The model is part of the key: the retriever object serving the arm (its id) and its `version`
  attribute, both read once per search, so a hot-reloaded XR-Linear model, or any retriever
  swapped into the pipeline, starts from an empty cache; the runtime also drops an arm's entries
  when it swaps the arm (`invalidate`), so the old model's lists do not linger until evicted.
* Bounded by entries, not bytes: one entry is up to k candidates whose ids are the catalog's own
  strings, ~9 kB at k=100 (BENCHMARKS.md).
* Stored as three plain tuples (ids, scores, ranks), not Candidate objects: tuples of strings and
  numbers drop out of the garbage collector's tracking, while a full cache of Candidates held
  ~400k tracked objects that every full collection walked with the GIL held (hundreds of ms, the
  p99 of a loaded server). A hit builds its Candidates again, ~40 us per 100.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Collection

from retrievers.base import Candidate, Retriever

CACHEABLE_ARMS = frozenset({"lexical", "dense", "xr", "structured"})

Key = tuple[str, int, str | None, str, int]
Entry = tuple[tuple[str, ...], tuple[float, ...], tuple[int, ...]]


class RetrievalCache:
    def __init__(self, max_entries: int, arms: Collection[str] = CACHEABLE_ARMS):
        self.max_entries = max_entries
        self.arms = frozenset(arms)
        self._d: OrderedDict[Key, Entry] = OrderedDict()
        self._lock = threading.Lock()  # searches run on several threads
        self.hits = 0
        self.misses = 0

    def enabled(self, arm: str) -> bool:
        return self.max_entries > 0 and arm in self.arms

    @staticmethod
    def key(arm: str, retriever: Retriever, query: str, k: int) -> Key:
        # Hot-reloaded retrievers (XR-Linear) carry a `version`; the others are fixed for the process.
        return arm, id(retriever), getattr(retriever, "version", None), query, k

    def get(self, key: Key) -> list[Candidate] | None:
        with self._lock:
            got = self._d.get(key)
            if got is None:
                self.misses += 1
                return None
            self._d.move_to_end(key)
            self.hits += 1
        ids, scores, ranks = got
        return [Candidate(t, s, r) for t, s, r in zip(ids, scores, ranks, strict=True)]

    def put(self, key: Key, candidates: list[Candidate]) -> None:
        value = (tuple(c.track_id for c in candidates), tuple(c.score for c in candidates),
                 tuple(c.rank for c in candidates))
        with self._lock:
            self._d[key] = value
            self._d.move_to_end(key)
            while len(self._d) > self.max_entries:
                self._d.popitem(last=False)

    def invalidate(self, arm: str) -> int:
        """Drops every entry of `arm` (its model changed); returns how many."""
        with self._lock:
            stale = [k for k in self._d if k[0] == arm]
            for k in stale:
                del self._d[k]
        return len(stale)

    def __len__(self) -> int:
        return len(self._d)

    def hit_rate(self) -> float | None:
        n = self.hits + self.misses
        return self.hits / n if n else None
