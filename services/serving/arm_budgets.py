"""How long a search waits for each retriever: the explicit timeout policy of the pipeline.

* Each arm's deadline comes from its own measured latency: `factor` x its p95 over its last
  `window` calls, at least `floor_ms`, at most the cap (`Settings.retriever_timeout_ms`, also the
  deadline until an arm has `min_samples` measurements). A fast arm that hangs is cut early; a slow
  arm gets the time it normally needs; an arm that times out often has its p95 pushed up by its
  own timeouts, so the deadline rises toward the cap instead of cutting it every time.
* An arm past its deadline is dropped from the union: counted (ltrr_retriever_failures_total
  {reason="timeout"}, ltrr_searches_degraded_total), listed in the decision record's `failed` (the
  bandit's reward only credits what the chosen arms found, so an arm that keeps timing out is
  learned as worse) and in the search's debug output with every deadline used.
* When no chosen arm produced anything in time, the search answers from the cheapest good arm:
  the lowest median latency among arms that found candidates for at least `good_share` of their
  recent calls (in practice lexical; Q2E is fast but empty for queries it never saw), with its own
  deadline — not from whatever happened to finish.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterable

import numpy as np


class ArmBudgets:
    def __init__(self, cap_ms: float, *, factor: float = 4.0, floor_ms: float = 40.0, window: int = 256,
                 min_samples: int = 32, good_share: float = 0.9):
        if not (cap_ms > 0 and factor > 0 and floor_ms >= 0 and window >= min_samples >= 1):
            raise ValueError("invalid retriever budget settings")
        self.cap_ms, self.factor, self.floor_ms = cap_ms, factor, min(floor_ms, cap_ms)
        self.window, self.min_samples, self.good_share = window, min_samples, good_share
        self._ms: dict[str, deque[float]] = {}
        self._found: dict[str, deque[bool]] = {}
        self._deadline: dict[str, float] = {}
        self._median: dict[str, float] = {}
        self._since: dict[str, int] = {}
        self._lock = threading.Lock()

    def observe(self, arm: str, ms: float, found: bool) -> None:
        """One call of `arm`: how long it took (a timeout counts with the time it was given) and
        whether it returned any candidate."""
        with self._lock:
            ms_q = self._ms.setdefault(arm, deque(maxlen=self.window))
            ms_q.append(ms)
            self._found.setdefault(arm, deque(maxlen=self.window)).append(found)
            self._since[arm] = self._since.get(arm, 0) + 1
            # Percentiles are recomputed every 16 calls, not per search: 256 floats sort in
            # microseconds, but the search path runs this for every arm.
            if len(ms_q) >= self.min_samples and (arm not in self._deadline or self._since[arm] >= 16):
                a = np.fromiter(ms_q, dtype=float)
                p50, p95 = np.percentile(a, [50, 95])
                self._deadline[arm] = float(min(self.cap_ms, max(self.floor_ms, self.factor * p95)))
                self._median[arm] = float(p50)
                self._since[arm] = 0

    def deadline_ms(self, arm: str) -> float:
        return self._deadline.get(arm, self.cap_ms)

    def _good_by_cost(self, arms: Iterable[str]) -> list[str]:
        """The arms that usually find something, by measured median latency, cheapest first."""
        good = []
        with self._lock:
            for arm in arms:
                found = self._found.get(arm)
                if arm in self._median and found and sum(found) >= self.good_share * len(found):
                    good.append((self._median[arm], arm))
        return [a for _, a in sorted(good)]

    def by_cost(self, arms: Iterable[str], default: str) -> list[str]:
        """Every arm, cheapest good one first (measured median latency among those that usually
        find something), then `default`, then the rest in the order given."""
        arms = list(arms)
        return list(dict.fromkeys([*self._good_by_cost(arms), *([default] if default in arms else []), *arms]))

    def cheapest_good(self, arms: Iterable[str], default: str) -> str:
        """The arm with the lowest measured median latency among those that usually find
        something; `default` until enough is measured."""
        good = self._good_by_cost(arms)
        return good[0] if good else default
