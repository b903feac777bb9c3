"""Session logs -> (previous query, next query) training pairs.

A session is one session_id's queries in time order. Consecutive distinct queries within
`max_gap_s` of each other form a pair: the paper's (prev_query, next_query) data, from which the
model derives (prev_query, prefix of next_query) rows. Repeats are counted, not dropped: a pair
many sessions share is more likely to come again.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class SessionPair:
    prev: str
    next: str
    count: float = 1.0


@dataclass(frozen=True, slots=True)
class LoggedQuery:
    session_id: str
    ts: float
    query: str  # normalized


def pairs_from_log(queries: Iterable[LoggedQuery], *, max_gap_s: float = 1800.0) -> list[SessionPair]:
    by_session: dict[str, list[LoggedQuery]] = {}
    for q in queries:
        if q.session_id and q.query:
            by_session.setdefault(q.session_id, []).append(q)
    counts: dict[tuple[str, str], float] = {}
    for items in by_session.values():
        items.sort(key=lambda q: q.ts)
        for a, b in itertools.pairwise(items):
            if a.query != b.query and b.ts - a.ts <= max_gap_s:
                counts[(a.query, b.query)] = counts.get((a.query, b.query), 0.0) + 1.0
    return [SessionPair(p, n, c) for (p, n), c in sorted(counts.items())]
