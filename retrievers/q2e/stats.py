"""What the memory keeps per (query, track) pair, and how it scores it.

Each pair keeps decayed counts of impressions, clicks, plays, likes, favourites and skips
(`TrackStats`), and its score is the mean of a Beta posterior whose prior is the prediction:

    alpha = s·strength + w_click·clicks + w_play·plays + w_like·likes + w_fav·favorites
    beta  = (1 - s)·strength + w_impression·max(0, impressions - max(clicks, plays)) + w_skip·skips
    score = alpha / (alpha + beta)

so evidence replaces the prediction as it accumulates, shown-but-not-engaged impressions and
skips push a score down, and a track first seen through feedback starts from a weak default
prior. It is a weighted engagement rate rather than a strict CTR (a click and a play of the same
item both count), which is what ranking wants. Counts decay exponentially with a configurable
half-life; each entry stores the time its counts refer to and is decayed lazily on read/update.
An event older than the entry's reference time is decayed to that time before being added, so
the result does not depend on the order in which events arrive.

The Redis store does the same arithmetic in Lua (`lua/common.lua`, `lua/pair.lua`) on the packed
form `TrackStats.pack` writes. `Q2EStats` and `Learned` are what the stores report about a query.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace

from retrievers.q2e.config import Q2EConfig


@dataclass(slots=True)
class TrackStats:
    """Decayed counts of one (query, track) pair, valid at time `ts`."""

    prior: float
    impressions: float = 0.0
    clicks: float = 0.0
    plays: float = 0.0
    likes: float = 0.0
    favorites: float = 0.0
    skips: float = 0.0
    ts: float = 0.0

    _COUNTS = ("impressions", "clicks", "plays", "likes", "favorites", "skips")

    def decayed(self, now: float, half_life_s: float) -> TrackStats:
        f = _decay(now - self.ts, half_life_s)
        if f == 1.0:
            return replace(self)
        return TrackStats(self.prior, *(getattr(self, c) * f for c in self._COUNTS), ts=now)

    def add(self, counter: str, amount: float, ts: float, half_life_s: float) -> None:
        if ts >= self.ts:
            f = _decay(ts - self.ts, half_life_s)
            for c in self._COUNTS:
                setattr(self, c, getattr(self, c) * f)
            self.ts = ts
            setattr(self, counter, getattr(self, counter) + amount)
        else:
            setattr(self, counter, getattr(self, counter) + amount * _decay(self.ts - ts, half_life_s))

    def pack(self) -> str:
        return ",".join(f"{v:.17g}" for v in (self.prior, *(getattr(self, c) for c in self._COUNTS), self.ts))

    @classmethod
    def unpack(cls, raw: str | bytes) -> TrackStats:
        s = raw.decode() if isinstance(raw, bytes) else raw
        v = [float(x) for x in s.split(",")]
        return cls(v[0], *v[1:7], ts=v[7])


@dataclass(frozen=True, slots=True)
class Q2EStats:
    """What the memory knows about a query: the bandit's "Q2E hit + evidence" context."""

    hit: bool  # the query (or its order-insensitive alias) has stored tracks
    query: str | None  # the stored query the lookup resolved to
    tracks: int = 0  # stored (query, track) pairs, predicted or observed
    tracks_with_evidence: int = 0
    events: int = 0  # feedback events ever applied (raw count)
    impressions: int = 0  # impression batches (searches) ever applied
    evidence: float = 0.0  # feedback events, decayed to now


def _decay(dt: float, half_life_s: float) -> float:
    if dt <= 0 or half_life_s <= 0 or not math.isfinite(half_life_s):
        return 1.0
    return 0.5 ** (dt / half_life_s)


def posterior(st: TrackStats, cfg: Q2EConfig) -> float:
    """Beta posterior mean of a pair's stats (already decayed to the time of interest)."""
    w = cfg.weights
    alpha = st.prior * cfg.prior_strength + w.click * st.clicks + w.play * st.plays + w.like * st.likes \
        + w.add_to_favorites * st.favorites
    neg = max(0.0, st.impressions - max(st.clicks, st.plays))
    beta = (1.0 - st.prior) * cfg.prior_strength + w.impression * neg + w.skip * st.skips
    total = alpha + beta
    return alpha / total if total > 0 else 0.0


@dataclass(frozen=True, slots=True)
class Learned:
    """A (query, track) pair the memory has feedback for, decayed to the lookup time."""

    track_id: str
    posterior: float
    positives: float  # decayed clicks + plays + likes + favorites
    skips: float


def learned_pairs(stats: Iterable[tuple[str, TrackStats]], cfg: Q2EConfig, now: float) -> list[Learned]:
    """Pairs with positive feedback, best posterior first (ties: more positives, then track id)."""
    out = []
    for tid, st in stats:
        d = st.decayed(now, cfg.half_life_s)
        pos = d.clicks + d.plays + d.likes + d.favorites
        if pos > 0:
            out.append(Learned(tid, posterior(d, cfg), pos, d.skips))
    out.sort(key=lambda x: (-x.posterior, -x.positives, x.track_id))
    return out
