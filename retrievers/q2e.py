"""Q2E: the query-to-entity memory index.

Maps a normalized query to scored tracks. At cold start the scores are *predictions* from
`retrievers.pseudo_queries` ("taylor swift love story" -> that track, 0.95 x popularity prior).
Feedback turns them into *observations*: each (query, track) keeps decayed counts of
impressions, clicks, plays, likes, favourites and skips, and its score is the mean of a Beta
posterior whose prior is the prediction:

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

Two stores implement `Q2EStore`: `MemoryQ2EStore` (library use, tests of the logic) and
`RedisQ2EStore` (service mode). Redis key layout, with `p` the configurable prefix:

| key                  | type   | content                                                                |
|----------------------|--------|------------------------------------------------------------------------|
| `p:z:<query>`        | ZSET   | track id -> score (the prior, until the pair has evidence)             |
| `p:h:<query>`        | HASH   | track id -> "prior,imp,clk,play,like,fav,skip,ts" (pairs with evidence);|
|                      |        | `#n` raw feedback events, `#i` impression batches, `#e`/`#t` decayed    |
|                      |        | feedback evidence and its reference time                               |
| `p:alias`            | HASH   | sorted-token key -> a stored query (only with `order_insensitive`)     |
| `p:seen:e:<event_id>`| STRING | idempotency marker per feedback event, with a TTL                      |
| `p:seen:s:<search_id>`| STRING| idempotency marker per impression batch, with a TTL                    |
| `p:meta`             | HASH   | seed version, seeding time, pair/query counts                          |

Pairs without evidence live only in the sorted set (their score *is* their prior), which halves
the memory of the ~350k cold-start pairs; the first event on a pair copies the prior from the
sorted set into the hash. Lookups, stats and updates are Lua scripts: one round trip each, and
every update batch is atomic, with the idempotency check (SET NX) inside the same script. The
scripts derive keys from the prefix, so they need a single Redis instance (not Cluster).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Protocol, Self, runtime_checkable

import redis

from retrievers.base import Candidate, Document, ranked
from retrievers.pseudo_queries import TEMPLATE_BASE, generate_all
from retrievers.text import normalize

EVENT_TYPES = ("click", "play", "like", "add_to_favorites", "skip")
_BAD_ID = re.compile(r"[\t\n]")
FORMAT_VERSION = 1


@dataclass(frozen=True, slots=True)
class EventWeights:
    """How much one event moves the posterior. Positive: click, play, like, add_to_favorites.
    Negative: skip, and each impression that did not lead to a click or play."""

    click: float = 1.0
    play: float = 1.0
    like: float = 2.0
    add_to_favorites: float = 2.0
    skip: float = 1.0
    impression: float = 0.25  # a shown-not-clicked result is weak evidence (position bias, scanning)


@dataclass(frozen=True, slots=True)
class Q2EConfig:
    prior_strength: float = 5.0  # pseudo-observations behind the predicted score
    default_prior: float = 0.05  # predicted score of a pair first seen through feedback
    half_life_s: float = 30 * 86400.0
    weights: EventWeights = field(default_factory=EventWeights)
    seen_ttl_s: int = 7 * 86400  # how long an event/search id is remembered for deduplication
    order_insensitive: bool = False  # second lookup by sorted tokens when the exact query misses
    max_query_chars: int = 256  # longer normalized queries are not remembered (never repeated)
    max_exact_evidence: int = 256  # above this many pairs with evidence, lookups rescore a window only
    moods: bool = True  # generate "chill dance pop"-style pseudo-queries at seeding

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> Q2EConfig:
        d = dict(d)
        weights = EventWeights(**d.pop("weights", {}))  # type: ignore[arg-type]
        return cls(weights=weights, **d)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Q2EEvent:
    """One feedback event on (query, track); `query` is the raw or normalized query text."""

    event_id: str
    query: str
    track_id: str
    type: str
    timestamp: float


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


_EVENT_COUNTER = {"click": "clicks", "play": "plays", "like": "likes", "add_to_favorites": "favorites",
                  "skip": "skips"}


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


def query_keys(query: str, cfg: Q2EConfig) -> tuple[str, str] | None:
    """(exact key, order-insensitive key) of a query, or None when it cannot be remembered.
    The second key (sorted tokens) is "" unless the config is order-insensitive."""
    if not isinstance(query, str):
        return None
    # Cheap guard before normalizing: a 10 kB query is never a repeated one.
    if len(query) > cfg.max_query_chars * 4:
        return None
    q = normalize(query)
    if not q or len(q) > cfg.max_query_chars:
        return None
    return q, (_sorted_key(q) if cfg.order_insensitive else "")


def _rank_key(kv: tuple[str, float]) -> tuple[float, str]:
    # Best score first, ties by track id descending: the order Redis' ZREVRANGE uses, so both
    # stores return identical lists.
    return kv[1], kv[0]


def _sorted_key(q: str) -> str:
    return " ".join(sorted(q.split()))


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


@runtime_checkable
class Q2EStore(Protocol):
    config: Q2EConfig

    def seed(self, pairs: Iterable[tuple[str, str, float]], *, version: str = "", progress: bool = False,
             total: int | None = None) -> int: ...

    def seed_version(self) -> str | None: ...

    def lookup(self, query: str, k: int, *, now: float | None = None) -> list[tuple[str, float]]: ...

    def lookup_many(self, queries: Sequence[str], k: int, *,
                    now: float | None = None) -> list[list[tuple[str, float]]]: ...

    def scores(self, query: str, track_ids: Sequence[str], *, now: float | None = None) -> dict[str, float]: ...

    def apply_events(self, events: Sequence[Q2EEvent], *, now: float | None = None) -> int: ...

    def impressions(self, query: str, track_ids: Sequence[str], search_id: str, *, ts: float | None = None) -> bool: ...

    def stats(self, query: str, *, now: float | None = None) -> Q2EStats: ...

    def track_stats(self, query: str, track_id: str) -> TrackStats | None: ...

    def learned(self, query: str, *, now: float | None = None) -> list[Learned]: ...

    def clear(self) -> None: ...


# --------------------------------------------------------------------------------------------
# In-memory store
# --------------------------------------------------------------------------------------------


@dataclass
class _MemQuery:
    priors: dict[str, float] = field(default_factory=dict)  # pairs without evidence
    stats: dict[str, TrackStats] = field(default_factory=dict)  # pairs with evidence
    events: int = 0
    impressions: int = 0
    evidence: float = 0.0
    evidence_ts: float = 0.0
    _sorted: list[tuple[str, float]] | None = None  # priors best-first, rebuilt lazily

    def sorted_priors(self) -> list[tuple[str, float]]:
        if self._sorted is None:
            self._sorted = sorted(self.priors.items(), key=_rank_key, reverse=True)
        return self._sorted


class MemoryQ2EStore:
    """Q2E in process memory: same semantics as the Redis store, for library use and tests.
    Thread-safe; the seen-id sets are bounded by `seen_ttl_s` like Redis' TTL'd markers."""

    def __init__(self, config: Q2EConfig | None = None):
        self.config = config or Q2EConfig()
        self._q: dict[str, _MemQuery] = {}
        self._alias: dict[str, str] = {}
        self._seen: dict[str, float] = {}  # id -> expiry
        self._version: str | None = None
        self._lock = threading.RLock()

    # seeding -------------------------------------------------------------------------------
    def seed(self, pairs: Iterable[tuple[str, str, float]], *, version: str = "", progress: bool = False,
             total: int | None = None) -> int:
        n = 0
        it = _progress(pairs, progress, total)
        with self._lock:
            for q, tid, s in it:
                mq = self._q.setdefault(q, _MemQuery())
                st = mq.stats.get(tid)
                if st is not None:
                    st.prior = float(s)
                else:
                    mq.priors[tid] = float(s)
                    mq._sorted = None
                if self.config.order_insensitive:
                    sk = _sorted_key(q)
                    if sk != q:
                        self._alias.setdefault(sk, q)
                n += 1
            self._version = version or None
        return n

    def seed_version(self) -> str | None:
        return self._version

    # reads ---------------------------------------------------------------------------------
    def _resolve(self, query: str) -> tuple[str, _MemQuery] | None:
        keys = query_keys(query, self.config)
        if keys is None:
            return None
        exact, alt = keys
        mq = self._q.get(exact)
        if mq is not None and (mq.priors or mq.stats):
            return exact, mq
        if self.config.order_insensitive:
            cands = (self._alias.get(alt), alt if alt != exact else None)
            for cand in cands:
                if cand is not None and (mq := self._q.get(cand)) is not None and (mq.priors or mq.stats):
                    return cand, mq
        return None

    def lookup(self, query: str, k: int, *, now: float | None = None) -> list[tuple[str, float]]:
        if k <= 0:
            return []
        now = time.time() if now is None else now
        with self._lock:
            r = self._resolve(query)
            if r is None:
                return []
            mq = r[1]
            # Pairs without evidence score exactly their prior, so the k best of those plus every
            # pair with evidence (rescored with decay) contain the true top k.
            scored = list(mq.sorted_priors()[:k])
            cfg = self.config
            scored.extend((t, posterior(st.decayed(now, cfg.half_life_s), cfg)) for t, st in mq.stats.items())
        scored.sort(key=_rank_key, reverse=True)
        return scored[:k]

    def lookup_many(self, queries: Sequence[str], k: int, *, now: float | None = None) -> list[list[tuple[str, float]]]:
        return [self.lookup(q, k, now=now) for q in queries]

    def scores(self, query: str, track_ids: Sequence[str], *, now: float | None = None) -> dict[str, float]:
        now = time.time() if now is None else now
        out: dict[str, float] = {}
        with self._lock:
            r = self._resolve(query)
            if r is None:
                return out
            mq = r[1]
            for t in track_ids:
                if (st := mq.stats.get(t)) is not None:
                    out[t] = posterior(st.decayed(now, self.config.half_life_s), self.config)
                elif t in mq.priors:
                    out[t] = mq.priors[t]
        return out

    def stats(self, query: str, *, now: float | None = None) -> Q2EStats:
        now = time.time() if now is None else now
        with self._lock:
            r = self._resolve(query)
            if r is None:
                return Q2EStats(hit=False, query=None)
            q, mq = r
            return Q2EStats(hit=True, query=q, tracks=len(mq.priors) + len(mq.stats),
                            tracks_with_evidence=len(mq.stats), events=mq.events, impressions=mq.impressions,
                            evidence=mq.evidence * _decay(now - mq.evidence_ts, self.config.half_life_s))

    def track_stats(self, query: str, track_id: str) -> TrackStats | None:
        keys = query_keys(query, self.config)
        with self._lock:
            mq = self._q.get(keys[0]) if keys else None
            st = mq.stats.get(track_id) if mq else None
            return replace(st) if st is not None else None

    def learned(self, query: str, *, now: float | None = None) -> list[Learned]:
        """Pairs of the exact query with positive feedback (see learned_pairs)."""
        keys = query_keys(query, self.config)
        now = time.time() if now is None else now
        with self._lock:
            mq = self._q.get(keys[0]) if keys else None
            items = [(t, replace(st)) for t, st in mq.stats.items()] if mq else []
        return learned_pairs(items, self.config, now)

    # writes --------------------------------------------------------------------------------
    def _first_time(self, marker: str, now: float) -> bool:
        exp = self._seen.get(marker)
        if exp is not None and exp > now:
            return False
        if len(self._seen) > 1_000_000:  # expire lazily so the set cannot grow without bound
            self._seen = {m: e for m, e in self._seen.items() if e > now}
        self._seen[marker] = now + self.config.seen_ttl_s
        return True

    def _pair(self, q: str, tid: str) -> tuple[_MemQuery, TrackStats]:
        mq = self._q.setdefault(q, _MemQuery())
        st = mq.stats.get(tid)
        if st is None:
            prior = mq.priors.pop(tid, None)
            if prior is not None:
                mq._sorted = None
            st = TrackStats(prior=self.config.default_prior if prior is None else prior, ts=0.0)
            mq.stats[tid] = st
        if self.config.order_insensitive:
            sk = _sorted_key(q)
            if sk != q:
                self._alias.setdefault(sk, q)
        return mq, st

    def apply_events(self, events: Sequence[Q2EEvent], *, now: float | None = None) -> int:
        _validate(events)
        now = time.time() if now is None else now
        hl = self.config.half_life_s
        applied = 0
        with self._lock:
            for e in events:
                keys = query_keys(e.query, self.config)
                if keys is None or not self._first_time("e:" + e.event_id, now):
                    continue
                ts = _clean_ts(e.timestamp, now)
                mq, st = self._pair(keys[0], e.track_id)
                st.add(_EVENT_COUNTER[e.type], 1.0, ts, hl)
                mq.events += 1
                if ts >= mq.evidence_ts:
                    mq.evidence = mq.evidence * _decay(ts - mq.evidence_ts, hl) + 1.0
                    mq.evidence_ts = ts
                else:
                    mq.evidence += _decay(mq.evidence_ts - ts, hl)
                applied += 1
        return applied

    def impressions(self, query: str, track_ids: Sequence[str], search_id: str, *, ts: float | None = None) -> bool:
        now = time.time()
        keys = query_keys(query, self.config)
        ids = list(dict.fromkeys(t for t in track_ids if t))
        if keys is None or not ids or not search_id:
            return False
        ts = _clean_ts(now if ts is None else ts, now)
        with self._lock:
            if not self._first_time("s:" + search_id, now):
                return False
            for t in ids:
                mq, st = self._pair(keys[0], t)
                st.add("impressions", 1.0, ts, self.config.half_life_s)
            mq.impressions += 1
        return True

    def clear(self) -> None:
        with self._lock:
            self._q.clear()
            self._alias.clear()
            self._seen.clear()
            self._version = None

    # persistence (the Redis store persists in Redis itself) -------------------------------
    def dump(self) -> dict[str, object]:
        with self._lock:
            return {
                "version": self._version,
                "alias": self._alias,
                "queries": {q: {"priors": mq.priors, "stats": {t: st.pack() for t, st in mq.stats.items()},
                                "events": mq.events, "impressions": mq.impressions, "evidence": mq.evidence,
                                "evidence_ts": mq.evidence_ts} for q, mq in self._q.items()},
            }

    @classmethod
    def restore(cls, data: Mapping[str, object], config: Q2EConfig) -> MemoryQ2EStore:
        store = cls(config)
        store._version = data.get("version")  # type: ignore[assignment]
        store._alias = dict(data.get("alias", {}))  # type: ignore[arg-type]
        for q, d in data.get("queries", {}).items():  # type: ignore[union-attr]
            stats = {t: TrackStats.unpack(s) for t, s in d["stats"].items()}
            store._q[q] = _MemQuery(priors=dict(d["priors"]), stats=stats,
                                    events=int(d["events"]), impressions=int(d["impressions"]),
                                    evidence=float(d["evidence"]), evidence_ts=float(d["evidence_ts"]))
        return store


# --------------------------------------------------------------------------------------------
# Redis store
# --------------------------------------------------------------------------------------------

# Shared Lua: config comes in ARGV so one cached script serves any configuration.
# cfg = {half_life, strength, default_prior, w_click, w_play, w_like, w_fav, w_skip, w_imp}
_LUA_COMMON = r"""
local function decay(dt, hl)
  if dt <= 0 or hl <= 0 then return 1.0 end
  return 0.5 ^ (dt / hl)
end
local function unpack_stats(raw)
  local v = {}
  for x in string.gmatch(raw, '[^,]+') do v[#v + 1] = tonumber(x) end
  return v  -- prior, imp, clk, play, like, fav, skip, ts
end
local function pack_stats(v)
  local parts = {}
  for i = 1, 8 do parts[i] = string.format('%.17g', v[i]) end
  return table.concat(parts, ',')
end
local function decayed(v, now, hl)
  local f = decay(now - v[8], hl)
  if f == 1.0 then return v end
  return {v[1], v[2] * f, v[3] * f, v[4] * f, v[5] * f, v[6] * f, v[7] * f, now}
end
local function posterior(v, c)
  local s = c[2]
  local alpha = v[1] * s + c[4] * v[3] + c[5] * v[4] + c[6] * v[5] + c[7] * v[6]
  local neg = v[2] - math.max(v[3], v[4])
  if neg < 0 then neg = 0 end
  local beta = (1 - v[1]) * s + c[9] * neg + c[8] * v[7]
  local total = alpha + beta
  if total <= 0 then return 0 end
  return alpha / total
end
local function read_cfg(first)
  local c = {}
  for i = 0, 8 do c[i + 1] = tonumber(ARGV[first + i]) end
  return c
end
-- Resolves a query to its stored key: exact, else (order-insensitive) via alias or sorted key.
local function resolve(p, q, sorted_q)
  if redis.call('EXISTS', p .. ':z:' .. q) == 1 then return q end
  if sorted_q ~= '' then
    local a = redis.call('HGET', p .. ':alias', sorted_q)
    if a and redis.call('EXISTS', p .. ':z:' .. a) == 1 then return a end
    if sorted_q ~= q and redis.call('EXISTS', p .. ':z:' .. sorted_q) == 1 then return sorted_q end
  end
  return nil
end
"""

# ARGV: prefix, query, sorted_query, k, now, max_exact, cfg[9]
_LUA_LOOKUP = _LUA_COMMON + r"""
local p, k, now, max_exact = ARGV[1], tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local c = read_cfg(7)
local q = resolve(p, ARGV[2], ARGV[3])
if not q then return {} end
local zk, hk = p .. ':z:' .. q, p .. ':h:' .. q
local nev = redis.call('HLEN', hk)
if nev > 0 then nev = nev - 4 end
local items, stats = {}, {}
if nev <= max_exact then
  -- Pairs without evidence score exactly their prior, so the top k + nev of the sorted set holds
  -- k of them; every pair with evidence is rescored with decay: the result is the exact top k.
  if nev > 0 then
    local all = redis.call('HGETALL', hk)
    for i = 1, #all, 2 do
      if string.sub(all[i], 1, 1) ~= '#' then stats[all[i]] = all[i + 1] end
    end
  end
  local z = redis.call('ZREVRANGE', zk, 0, k - 1 + nev, 'WITHSCORES')
  for i = 1, #z, 2 do
    if not stats[z[i]] then items[#items + 1] = {z[i], tonumber(z[i + 1])} end
  end
  for t, raw in pairs(stats) do
    items[#items + 1] = {t, posterior(decayed(unpack_stats(raw), now, c[1]), c)}
  end
else
  -- Too many pairs with evidence to rescore all: rescore a window (decay only moves a score
  -- back towards its prior, so the window misses little).
  local z = redis.call('ZREVRANGE', zk, 0, k - 1 + 64, 'WITHSCORES')
  local ids = {}
  for i = 1, #z, 2 do ids[#ids + 1] = z[i] end
  local raws = redis.call('HMGET', hk, unpack(ids))
  for i = 1, #ids do
    local s = tonumber(z[2 * i])
    if raws[i] then s = posterior(decayed(unpack_stats(raws[i]), now, c[1]), c) end
    items[#items + 1] = {ids[i], s}
  end
end
table.sort(items, function(a, b) if a[2] ~= b[2] then return a[2] > b[2] end return a[1] > b[1] end)
local out = {}
for i = 1, math.min(k, #items) do
  out[#out + 1] = items[i][1]
  out[#out + 1] = string.format('%.17g', items[i][2])
end
return out
"""

# ARGV: prefix, query, sorted_query, now, cfg[9], track ids...
_LUA_SCORES = _LUA_COMMON + r"""
local p, now = ARGV[1], tonumber(ARGV[4])
local c = read_cfg(5)
local q = resolve(p, ARGV[2], ARGV[3])
if not q or #ARGV < 14 then return {} end
local zk, hk = p .. ':z:' .. q, p .. ':h:' .. q
local out = {}
for i = 14, #ARGV do
  local t = ARGV[i]
  local raw = redis.call('HGET', hk, t)
  local s = nil
  if raw then
    s = posterior(decayed(unpack_stats(raw), now, c[1]), c)
  else
    local z = redis.call('ZSCORE', zk, t)
    if z then s = tonumber(z) end
  end
  if s then out[#out + 1] = t; out[#out + 1] = string.format('%.17g', s) end
end
return out
"""

# ARGV: prefix, query, sorted_query, now, half_life
_LUA_STATS = _LUA_COMMON + r"""
local p, now, hl = ARGV[1], tonumber(ARGV[4]), tonumber(ARGV[5])
local q = resolve(p, ARGV[2], ARGV[3])
if not q then return {} end
local zk, hk = p .. ':z:' .. q, p .. ':h:' .. q
local ntracks = redis.call('ZCARD', zk)
local nev = redis.call('HLEN', hk)
if nev > 0 then nev = nev - 4 end
local m = redis.call('HMGET', hk, '#n', '#i', '#e', '#t')
local ev = 0
if m[3] then ev = tonumber(m[3]) * decay(now - tonumber(m[4]), hl) end
return {q, ntracks, nev, tonumber(m[1] or 0), tonumber(m[2] or 0), string.format('%.17g', ev)}
"""

_LUA_PAIR = r"""
-- Loads (or creates) a pair's stats: the first event copies the prior out of the sorted set.
local function load_pair(hk, zk, t, default_prior)
  local raw = redis.call('HGET', hk, t)
  if raw then return unpack_stats(raw) end
  local z = redis.call('ZSCORE', zk, t)
  local prior = default_prior
  if z then prior = tonumber(z) end
  return {prior, 0, 0, 0, 0, 0, 0, 0}
end
local function add(v, idx, amount, ts, hl)
  if ts >= v[8] then
    local f = decay(ts - v[8], hl)
    for i = 2, 7 do v[i] = v[i] * f end
    v[8] = ts
    v[idx] = v[idx] + amount
  else
    v[idx] = v[idx] + amount * decay(v[8] - ts, hl)
  end
end
local function init_meta(hk)
  if redis.call('HEXISTS', hk, '#n') == 0 then
    redis.call('HSET', hk, '#n', 0, '#i', 0, '#e', 0, '#t', 0)
  end
end
local function alias(p, q, sorted_q)
  if sorted_q ~= '' then redis.call('HSETNX', p .. ':alias', sorted_q, q) end
end
"""

# ARGV: prefix, ttl, cfg[9], then per event: event_id, query, sorted_query, track, counter index, ts
_LUA_EVENTS = _LUA_COMMON + _LUA_PAIR + r"""
local p, ttl = ARGV[1], tonumber(ARGV[2])
local c = read_cfg(3)
local hl = c[1]
local applied = 0
for i = 12, #ARGV, 6 do
  local eid, q, sq, t = ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3]
  local idx, ts = tonumber(ARGV[i + 4]), tonumber(ARGV[i + 5])
  if redis.call('SET', p .. ':seen:e:' .. eid, '1', 'NX', 'EX', ttl) then
    local zk, hk = p .. ':z:' .. q, p .. ':h:' .. q
    init_meta(hk)
    local v = load_pair(hk, zk, t, c[3])
    add(v, idx, 1.0, ts, hl)
    redis.call('HSET', hk, t, pack_stats(v))
    redis.call('ZADD', zk, posterior(v, c), t)
    local m = redis.call('HMGET', hk, '#e', '#t')
    local e, et = tonumber(m[1]), tonumber(m[2])
    if ts >= et then e = e * decay(ts - et, hl) + 1; et = ts else e = e + decay(et - ts, hl) end
    redis.call('HSET', hk, '#e', string.format('%.17g', e), '#t', string.format('%.17g', et))
    redis.call('HINCRBY', hk, '#n', 1)
    alias(p, q, sq)
    applied = applied + 1
  end
end
return applied
"""

# ARGV: prefix, ttl, cfg[9], search_id, query, sorted_query, ts, track ids...
_LUA_IMPRESSIONS = _LUA_COMMON + _LUA_PAIR + r"""
local p, ttl = ARGV[1], tonumber(ARGV[2])
local c = read_cfg(3)
local sid, q, sq, ts = ARGV[12], ARGV[13], ARGV[14], tonumber(ARGV[15])
if not redis.call('SET', p .. ':seen:s:' .. sid, '1', 'NX', 'EX', ttl) then return 0 end
local zk, hk = p .. ':z:' .. q, p .. ':h:' .. q
init_meta(hk)
for i = 16, #ARGV do
  local t = ARGV[i]
  local v = load_pair(hk, zk, t, c[3])
  add(v, 2, 1.0, ts, c[1])
  redis.call('HSET', hk, t, pack_stats(v))
  redis.call('ZADD', zk, posterior(v, c), t)
end
redis.call('HINCRBY', hk, '#i', 1)
alias(p, q, sq)
return 1
"""

# ARGV: prefix, cfg[9], payload. The payload holds one line per query group,
# "query<TAB>sorted_query<TAB>track score track score ...": a handful of big string arguments
# instead of ~1M small ones, because packing arguments is what made seeding slow in redis-py.
_LUA_SEED = _LUA_COMMON + r"""
local p = ARGV[1]
local c = read_cfg(2)
local n_pairs = 0
for q, sq, rest in string.gmatch(ARGV[11], '([^\t\n]*)\t([^\t\n]*)\t([^\n]*)\n') do
  local zk, hk = p .. ':z:' .. q, p .. ':h:' .. q
  if sq ~= '' then redis.call('HSETNX', p .. ':alias', sq, q) end
  if redis.call('EXISTS', hk) == 0 then
    -- No evidence for this query: the sorted set holds the priors. ZADD in chunks because
    -- Lua's unpack has a small stack limit.
    local args = {}
    for t, s in string.gmatch(rest, '(%S+) (%S+)') do
      args[#args + 1] = s
      args[#args + 1] = t
      if #args >= 1000 then
        redis.call('ZADD', zk, unpack(args))
        n_pairs = n_pairs + #args / 2
        args = {}
      end
    end
    if #args > 0 then
      redis.call('ZADD', zk, unpack(args))
      n_pairs = n_pairs + #args / 2
    end
  else
    -- Pairs with evidence keep it; only their prior changes.
    for t, s in string.gmatch(rest, '(%S+) (%S+)') do
      local raw = redis.call('HGET', hk, t)
      if raw then
        local v = unpack_stats(raw)
        v[1] = tonumber(s)
        redis.call('HSET', hk, t, pack_stats(v))
        redis.call('ZADD', zk, posterior(v, c), t)
      else
        redis.call('ZADD', zk, s, t)
      end
      n_pairs = n_pairs + 1
    end
  end
end
return n_pairs
"""


def _s(x: bytes | str) -> str:
    return x.decode() if isinstance(x, bytes) else x


class RedisQ2EStore:
    """Q2E in Redis (service mode). Takes a client so the library never starts servers itself;
    durability is Redis' own (AOF). Safe to share between threads and processes."""

    SEED_BATCH_PAIRS = 10_000
    MAX_K = 5000

    def __init__(self, client: redis.Redis, config: Q2EConfig | None = None, *, prefix: str = "q2e"):
        self.client = client
        self.config = config or Q2EConfig()
        self.prefix = prefix
        self._lookup = client.register_script(_LUA_LOOKUP)
        self._scores = client.register_script(_LUA_SCORES)
        self._stats = client.register_script(_LUA_STATS)
        self._events = client.register_script(_LUA_EVENTS)
        self._impressions = client.register_script(_LUA_IMPRESSIONS)
        self._seed = client.register_script(_LUA_SEED)

    def _cfg_args(self) -> list[float]:
        c, w = self.config, self.config.weights
        return [c.half_life_s, c.prior_strength, c.default_prior, w.click, w.play, w.like, w.add_to_favorites,
                w.skip, w.impression]

    @property
    def meta_key(self) -> str:
        return f"{self.prefix}:meta"

    # seeding -------------------------------------------------------------------------------
    def seed(self, pairs: Iterable[tuple[str, str, float]], *, version: str = "", progress: bool = False,
             total: int | None = None) -> int:
        """Bulk-loads predicted pairs: grouped by query, a few thousand pairs per script call and
        the calls pipelined, so ~350k pairs take seconds. Existing evidence is kept."""
        by_query: dict[str, list[tuple[str, float]]] = defaultdict(list)
        for q, tid, s in pairs:
            if not q or _BAD_ID.search(q) or not tid or _BAD_ID.search(tid) or " " in tid:
                raise ValueError(f"cannot seed pair ({q!r}, {tid!r}): empty, or a tab/newline/space in the id")
            by_query[q].append((tid, float(s)))
        n_pairs = sum(len(v) for v in by_query.values())
        head = [self.prefix, *self._cfg_args()]
        bar = _progress(None, progress, n_pairs, desc="seed q2e")
        pipe = self.client.pipeline(transaction=False)
        lines: list[str] = []
        in_batch = pending = 0
        for q, items in by_query.items():
            sq = _sorted_key(q) if self.config.order_insensitive else ""
            sq = "" if sq == q else sq
            lines.append(f"{q}\t{sq}\t{' '.join(f'{t} {s!r}' for t, s in items)}\n")
            in_batch += len(items)
            if in_batch >= self.SEED_BATCH_PAIRS:
                self._seed(keys=[], args=[*head, "".join(lines)], client=pipe)
                if bar is not None:
                    bar.update(in_batch)
                lines, in_batch, pending = [], 0, pending + 1
                if pending >= 8:  # bounded pipeline: steady progress, bounded client memory
                    pipe.execute()
                    pending = 0
        if lines:
            self._seed(keys=[], args=[*head, "".join(lines)], client=pipe)
            if bar is not None:
                bar.update(in_batch)
        pipe.hset(self.meta_key, mapping={"seed_version": version, "seeded_at": time.time(), "pairs": n_pairs,
                                          "queries": len(by_query), "format": FORMAT_VERSION})
        pipe.execute()
        if bar is not None:
            bar.close()
        return n_pairs

    def seed_version(self) -> str | None:
        v = self.client.hget(self.meta_key, "seed_version")
        return _s(v) if v else None

    # reads ---------------------------------------------------------------------------------
    def _lookup_args(self, query: str, k: int, now: float) -> list[object] | None:
        keys = query_keys(query, self.config)
        if keys is None or k <= 0:
            return None
        # Lua's unpack() takes at most ~8k values; no retriever asks for more than a few hundred.
        k = min(int(k), self.MAX_K)
        return [self.prefix, keys[0], keys[1], k, now, self.config.max_exact_evidence, *self._cfg_args()]

    @staticmethod
    def _pairs(raw: Sequence[bytes | str]) -> list[tuple[str, float]]:
        return [(_s(raw[i]), float(raw[i + 1])) for i in range(0, len(raw), 2)]

    def lookup(self, query: str, k: int, *, now: float | None = None) -> list[tuple[str, float]]:
        args = self._lookup_args(query, k, time.time() if now is None else now)
        if args is None:
            return []
        return self._pairs(self._lookup(keys=[], args=args))

    def lookup_many(self, queries: Sequence[str], k: int, *, now: float | None = None) -> list[list[tuple[str, float]]]:
        """All lookups in one pipelined round trip."""
        now = time.time() if now is None else now
        all_args = [self._lookup_args(q, k, now) for q in queries]
        pipe = self.client.pipeline(transaction=False)
        for a in all_args:
            if a is not None:
                self._lookup(keys=[], args=a, client=pipe)
        replies = iter(pipe.execute() if any(a is not None for a in all_args) else [])
        return [self._pairs(next(replies)) if a is not None else [] for a in all_args]

    def scores(self, query: str, track_ids: Sequence[str], *, now: float | None = None) -> dict[str, float]:
        """Scores of given tracks at a query (ranker features for other retrievers' candidates)."""
        keys = query_keys(query, self.config)
        ids = [t for t in track_ids if t]
        if keys is None or not ids:
            return {}
        now = time.time() if now is None else now
        raw = self._scores(keys=[], args=[self.prefix, keys[0], keys[1], now, *self._cfg_args(), *ids])
        return dict(self._pairs(raw))

    def stats(self, query: str, *, now: float | None = None) -> Q2EStats:
        keys = query_keys(query, self.config)
        if keys is None:
            return Q2EStats(hit=False, query=None)
        now = time.time() if now is None else now
        r = self._stats(keys=[], args=[self.prefix, keys[0], keys[1], now, self.config.half_life_s])
        if not r:
            return Q2EStats(hit=False, query=None)
        return Q2EStats(hit=int(r[1]) > 0, query=_s(r[0]), tracks=int(r[1]), tracks_with_evidence=int(r[2]),
                        events=int(r[3]), impressions=int(r[4]), evidence=float(r[5]))

    def track_stats(self, query: str, track_id: str) -> TrackStats | None:
        keys = query_keys(query, self.config)
        if keys is None:
            return None
        raw = self.client.hget(f"{self.prefix}:h:{keys[0]}", track_id)
        return TrackStats.unpack(raw) if raw else None

    def learned(self, query: str, *, now: float | None = None) -> list[Learned]:
        """Pairs of the exact query with positive feedback (see learned_pairs): one HGETALL of the
        query's evidence hash, which holds only pairs that were served or acted on."""
        keys = query_keys(query, self.config)
        if keys is None:
            return []
        raw = self.client.hgetall(f"{self.prefix}:h:{keys[0]}")
        items = [(_s(t), TrackStats.unpack(v)) for t, v in raw.items() if not _s(t).startswith("#")]
        return learned_pairs(items, self.config, time.time() if now is None else now)

    # writes --------------------------------------------------------------------------------
    EVENT_BATCH = 500
    # Slot of each counter in the packed stats, 1-based as Lua indexes them.
    _COUNTER_INDEX: ClassVar[dict[str, int]] = {"clicks": 3, "plays": 4, "likes": 5, "favorites": 6, "skips": 7}

    def apply_events(self, events: Sequence[Q2EEvent], *, now: float | None = None) -> int:
        """Applies a batch atomically (per script call of up to EVENT_BATCH events); an event id
        already applied within `seen_ttl_s` is skipped. Returns how many events were applied."""
        _validate(events)
        now = time.time() if now is None else now
        head = [self.prefix, int(self.config.seen_ttl_s), *self._cfg_args()]
        calls: list[list[object]] = []
        body: list[object] = []
        for e in events:
            keys = query_keys(e.query, self.config)
            if keys is None:
                continue
            sq = _sorted_key(keys[0]) if self.config.order_insensitive else ""
            body.extend((e.event_id, keys[0], "" if sq == keys[0] else sq, e.track_id,
                         self._COUNTER_INDEX[_EVENT_COUNTER[e.type]], _clean_ts(e.timestamp, now)))
            if len(body) >= 6 * self.EVENT_BATCH:
                calls.append(body)
                body = []
        if body:
            calls.append(body)
        if not calls:
            return 0
        if len(calls) == 1:
            return int(self._events(keys=[], args=head + calls[0]))
        pipe = self.client.pipeline(transaction=False)
        for b in calls:
            self._events(keys=[], args=head + b, client=pipe)
        return sum(int(x) for x in pipe.execute())

    def impressions(self, query: str, track_ids: Sequence[str], search_id: str, *, ts: float | None = None) -> bool:
        """Counts one impression for each shown track, once per search id. True if applied."""
        keys = query_keys(query, self.config)
        ids = list(dict.fromkeys(t for t in track_ids if t))
        if keys is None or not ids or not search_id:
            return False
        now = time.time()
        sq = _sorted_key(keys[0]) if self.config.order_insensitive else ""
        args = [self.prefix, int(self.config.seen_ttl_s), *self._cfg_args(), search_id, keys[0],
                "" if sq == keys[0] else sq, _clean_ts(now if ts is None else ts, now), *ids]
        return bool(self._impressions(keys=[], args=args))

    def clear(self) -> None:
        """Deletes every key under the prefix (SCAN + UNLINK, never FLUSHDB: the DB is shared)."""
        batch: list[bytes | str] = []
        for key in self.client.scan_iter(match=f"{self.prefix}:*", count=5000):
            batch.append(key)
            if len(batch) >= 5000:
                self.client.unlink(*batch)
                batch = []
        if batch:
            self.client.unlink(*batch)


def _progress(it: Iterable | None, enabled: bool, total: int | None, desc: str = "seed q2e") -> Any:
    """A tqdm bar when asked for. With `it` None, returns the bar (or None) for manual updates."""
    if not enabled:
        return it
    from tqdm.auto import tqdm

    if it is None:
        return tqdm(total=total, desc=desc, unit="pair")
    return tqdm(it, total=total, desc=desc, unit="pair")


# --------------------------------------------------------------------------------------------
# Retriever
# --------------------------------------------------------------------------------------------


def seed_fingerprint(docs: Sequence[Document], config: Q2EConfig) -> str:
    """Identifies what seeding would write: the documents' ids, fields, popularity and mood
    features, the template scores and the mood switch. Unchanged -> no need to reseed."""
    h = hashlib.sha1(usedforsecurity=False)
    h.update(json.dumps([TEMPLATE_BASE, config.moods, FORMAT_VERSION], sort_keys=True).encode())
    for d in docs:
        h.update(json.dumps([d.doc_id, dict(d.fields), d.popularity, dict(d.extra)], sort_keys=True,
                            default=str).encode())
    return h.hexdigest()


class Q2ERetriever:
    """Retriever over a Q2E store. build() seeds predicted pairs; feedback goes through
    `apply_events` / `impressions` (delegated to the store) and shows up in the next lookup.

    Persistence: for a Redis store the data lives in Redis (durable through its AOF), so
    save(path) writes only a small JSON (config, prefix, Redis URL, seed version) and load(path)
    reconnects; pass `client=` to load() when the URL saved is not the one to use (the embedded
    Redis picks a free port per start). For the in-memory store save/load carry the data too.
    """

    name = "q2e"
    MANIFEST = "q2e.json"

    def __init__(self, store: Q2EStore | None = None, config: Q2EConfig | None = None):
        if store is None:
            store = MemoryQ2EStore(config)
        elif config is not None and config != store.config:
            raise ValueError("pass the config to the store, not twice with different values")
        self.store = store
        self.config = store.config

    def build(self, docs: Sequence[Document], *, progress: bool = False, force: bool = False) -> int:
        """Seeds the store from metadata-generated pseudo-queries. Skips (returns 0) when the
        store already holds this exact seeding, so a restarted service does not reseed."""
        version = seed_fingerprint(docs, self.config)
        if not force and self.store.seed_version() == version:
            return 0
        pqs = generate_all(docs, moods=self.config.moods)
        return self.store.seed(((p.query, p.doc_id, p.score) for p in pqs), version=version, progress=progress,
                               total=len(pqs))

    def retrieve(self, query: str, k: int) -> list[Candidate]:
        return ranked(self.store.lookup(query, k))

    def retrieve_batch(self, queries: Sequence[str], k: int) -> list[list[Candidate]]:
        return [ranked(r) for r in self.store.lookup_many(queries, k)]

    def stats(self, query: str) -> Q2EStats:
        return self.store.stats(query)

    def scores(self, query: str, track_ids: Sequence[str]) -> dict[str, float]:
        return self.store.scores(query, track_ids)

    def apply_events(self, events: Sequence[Q2EEvent]) -> int:
        return self.store.apply_events(events)

    def impressions(self, query: str, track_ids: Sequence[str], search_id: str, *, ts: float | None = None) -> bool:
        return self.store.impressions(query, track_ids, search_id, ts=ts)

    def save(self, path: Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        manifest: dict[str, object] = {"format": FORMAT_VERSION, "config": self.config.to_dict(),
                                       "seed_version": self.store.seed_version()}
        if isinstance(self.store, RedisQ2EStore):
            kw = self.store.client.connection_pool.connection_kwargs
            manifest.update(backend="redis", prefix=self.store.prefix,
                            redis={"host": kw.get("host", "localhost"), "port": kw.get("port", 6379),
                                   "db": kw.get("db", 0)})
        elif isinstance(self.store, MemoryQ2EStore):
            manifest["backend"] = "memory"
            (path / "q2e_memory.json").write_text(json.dumps(self.store.dump()))
        else:
            raise TypeError(f"don't know how to save a {type(self.store).__name__}")
        (path / self.MANIFEST).write_text(json.dumps(manifest, indent=2))

    @classmethod
    def load(cls, path: Path, *, client: redis.Redis | None = None) -> Self:
        path = Path(path)
        manifest = json.loads((path / cls.MANIFEST).read_text())
        if manifest.get("format") != FORMAT_VERSION:
            raise ValueError(f"{path}: Q2E format {manifest.get('format')} != {FORMAT_VERSION}")
        config = Q2EConfig.from_dict(manifest["config"])
        if manifest["backend"] == "redis":
            if client is None:
                r = manifest["redis"]
                client = redis.Redis(host=r["host"], port=int(r["port"]), db=int(r["db"]))
            store: Q2EStore = RedisQ2EStore(client, config, prefix=manifest["prefix"])
        else:
            store = MemoryQ2EStore.restore(json.loads((path / "q2e_memory.json").read_text()), config)
        return cls(store)
