"""`RedisQ2EStore`: Q2E in Redis (service mode), and the Lua scripts it runs.

Redis key layout, with `p` the configurable prefix:

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

The scripts live in `lua/` and are put together once, at import: `common.lua` (decay, packing,
the posterior, query resolution) starts every script, `pair.lua` (loading and updating one pair)
follows it in the two write scripts, and then comes the script's own file.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from importlib import resources
from typing import ClassVar

import redis

from retrievers.q2e.config import FORMAT_VERSION, Q2EConfig
from retrievers.q2e.events import _EVENT_COUNTER, Q2EEvent, _clean_ts, _validate
from retrievers.q2e.keys import _sorted_key, query_keys
from retrievers.q2e.stats import Learned, Q2EStats, TrackStats, learned_pairs
from retrievers.q2e.store import _progress

_BAD_ID = re.compile(r"[\t\n]")


def _lua(name: str) -> str:
    """The text of `lua/<name>.lua`, after a newline: parts are concatenated into scripts, and
    the newline keeps each part on lines of its own."""
    return "\n" + resources.files("retrievers.q2e").joinpath("lua", f"{name}.lua").read_text(encoding="utf-8")


# Shared Lua (lua/common.lua): config comes in ARGV so one cached script serves any configuration.
# cfg = {half_life, strength, default_prior, w_click, w_play, w_like, w_fav, w_skip, w_imp}
_LUA_COMMON = _lua("common")

# ARGV: prefix, query, sorted_query, k, now, max_exact, cfg[9]
_LUA_LOOKUP = _LUA_COMMON + _lua("lookup")

# ARGV: prefix, query, sorted_query, now, cfg[9], track ids...
_LUA_SCORES = _LUA_COMMON + _lua("scores")

# ARGV: prefix, query, sorted_query, now, half_life
_LUA_STATS = _LUA_COMMON + _lua("stats")

# Shared by the write scripts (lua/pair.lua): loading, updating and aliasing one pair.
_LUA_PAIR = _lua("pair")

# ARGV: prefix, ttl, cfg[9], then per event: event_id, query, sorted_query, track, counter index, ts
_LUA_EVENTS = _LUA_COMMON + _LUA_PAIR + _lua("events")

# ARGV: prefix, ttl, cfg[9], search_id, query, sorted_query, ts, track ids...
_LUA_IMPRESSIONS = _LUA_COMMON + _LUA_PAIR + _lua("impressions")

# ARGV: prefix, cfg[9], payload. The payload holds one line per query group,
# "query<TAB>sorted_query<TAB>track score track score ...": a handful of big string arguments
# instead of ~1M small ones, because packing arguments is what made seeding slow in redis-py.
_LUA_SEED = _LUA_COMMON + _lua("seed")


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
