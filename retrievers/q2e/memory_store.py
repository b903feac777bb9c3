"""`MemoryQ2EStore`: Q2E in process memory, with the same semantics (and the same result
order) as the Redis store, for library use and tests of the logic. It persists through
`dump` / `restore`, which the retriever's save/load use.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

from retrievers.q2e.config import Q2EConfig
from retrievers.q2e.events import _EVENT_COUNTER, Q2EEvent, _clean_ts, _validate
from retrievers.q2e.keys import _sorted_key, query_keys
from retrievers.q2e.stats import Learned, Q2EStats, TrackStats, _decay, learned_pairs, posterior
from retrievers.q2e.store import _progress


def _rank_key(kv: tuple[str, float]) -> tuple[float, str]:
    # Best score first, ties by track id descending: the order Redis' ZREVRANGE uses, so both
    # stores return identical lists.
    return kv[1], kv[0]


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
