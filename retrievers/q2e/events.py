"""Feedback events: the event types Q2E learns from, the counter of a pair each one increments,
and the validation and timestamp cleaning both stores apply before an event touches a pair.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

EVENT_TYPES = ("click", "play", "like", "add_to_favorites", "skip")


@dataclass(frozen=True, slots=True)
class Q2EEvent:
    """One feedback event on (query, track); `query` is the raw or normalized query text."""

    event_id: str
    query: str
    track_id: str
    type: str
    timestamp: float


_EVENT_COUNTER = {"click": "clicks", "play": "plays", "like": "likes", "add_to_favorites": "favorites",
                  "skip": "skips"}


def _clean_ts(ts: float, now: float) -> float:
    # A client clock far in the future would freeze decay for that pair; bad values mean "now".
    if not isinstance(ts, (int, float)) or not math.isfinite(ts) or ts <= 0:
        return now
    return min(float(ts), now + 60.0)


def _validate(events: Sequence[Q2EEvent]) -> None:
    for e in events:
        if e.type not in _EVENT_COUNTER:
            raise ValueError(f"unknown Q2E event type {e.type!r} (event {e.event_id!r}); expected one of {EVENT_TYPES}")
        if not e.event_id or not e.track_id:
            raise ValueError("Q2E events need a non-empty event_id and track_id")
