"""What the service did, minute by minute, for the learning view (`GET /stats/learning`).

Prometheus counters answer "how much since the process started" per process; the page needs "what
happened over the last hour across every replica", so searches and rewards are also counted in
Redis, in one hash per unix minute (`<prefix>:activity:<minute>`, kept 48 h):

    searches, explored                          searches, and those whose chosen action was not the
                                                policy's most probable one
    action:<key>                                searches that chose that action
    rewarded:<key>, reward_sum:<key>,           finalized decisions of that action, their summed
    reward_pos:<key>                            reward, and how many had reward > 0
    lag_sum, lag_n, lag:<i>                     feedback lag in seconds (the worker passes: from the
                                                first feedback event of a search to the bandit
                                                learning from it): sum, count, histogram
    lat:<stage>:<i>, lat_sum:<stage>            per-stage latency histogram over LATENCY_EDGES_MS

Histograms use fixed bucket edges, so any set of minutes can be summed and its percentiles read
off the sum (interpolated inside a bucket, like Prometheus' histogram_quantile). Recording only
adds commands to a pipeline the caller already sends, so it costs a search no extra round trip.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Iterable, Mapping, Sequence

import redis
from redis.client import Pipeline

from services.keys import Keys

TTL_S = 48 * 3600
MAX_MINUTES = TTL_S // 60
# Upper edges (inclusive); one more bucket counts everything above the last edge.
LATENCY_EDGES_MS: tuple[float, ...] = (0.05, 0.1, 0.25, 0.5, 1, 1.5, 2, 3, 4, 5, 6, 8, 10, 12.5, 15, 20, 25, 30,
                                       40, 50, 75, 100, 150, 250, 500, 1000, 2500)
LAG_EDGES_S: tuple[float, ...] = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1800, 3600,
                                 7200)
PERCENTILES = (50, 95, 99)


def bucket_index(edges: Sequence[float], value: float) -> int:
    """Index of the first edge >= value (len(edges) for the overflow bucket)."""
    return bisect.bisect_left(edges, value)


def percentile(edges: Sequence[float], counts: Sequence[int], q: float) -> float | None:
    """The q-th percentile (0-100) of a histogram, linearly interpolated inside its bucket. Values in
    the overflow bucket are reported as the last edge (a lower bound). None when empty."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = q / 100.0 * total
    seen = 0.0
    for i, c in enumerate(counts):
        if c and seen + c >= rank:
            if i >= len(edges):
                return float(edges[-1])
            lo = 0.0 if i == 0 else float(edges[i - 1])
            return lo + (float(edges[i]) - lo) * max(0.0, rank - seen) / c
        seen += c
    return float(edges[-1])


def is_explored(probabilities: Sequence[float], chosen: int) -> bool:
    """True when the chosen action is not (one of) the policy's most probable: an exploration step."""
    if not probabilities:
        return False
    return probabilities[chosen] < max(probabilities) - 1e-12


def minute_of(ts: float) -> int:
    return int(ts // 60)


class ActivityRecorder:
    def __init__(self, client: redis.Redis | None, keys: Keys | None = None, *, ttl_s: int = TTL_S):
        self.redis = client
        self.keys = keys or Keys()
        self.ttl_s = ttl_s

    def key(self, minute: int) -> str:
        return f"{self.keys.prefix}:activity:{minute}"

    # --- writing ------------------------------------------------------------------------------
    def record_search(self, pipe: Pipeline, action_key: str, explored: bool, timings_ms: Mapping[str, float],
                      ts: float) -> None:
        """Adds one search's counters to `pipe` (the caller executes it)."""
        k = self.key(minute_of(ts))
        pipe.hincrby(k, "searches", 1)
        pipe.hincrby(k, f"action:{action_key}", 1)
        if explored:
            pipe.hincrby(k, "explored", 1)
        for stage, ms in timings_ms.items():
            if ms is None or not math.isfinite(ms):
                continue
            pipe.hincrby(k, f"lat:{stage}:{bucket_index(LATENCY_EDGES_MS, ms)}", 1)
            pipe.hincrbyfloat(k, f"lat_sum:{stage}", float(ms))
        pipe.expire(k, self.ttl_s)

    def record_reward(self, pipe_or_client: Pipeline | redis.Redis, action_key: str, reward: float,
                      lag_s: float | None, ts: float) -> None:
        """Counts one finalized decision's reward. Given a pipeline, adds to it; given a client, sends
        its own pipeline. `lag_s` is the feedback lag, from the first feedback event of the search
        to this update (None for a search nobody acted on: it has a reward of 0 but no lag)."""
        own = not isinstance(pipe_or_client, Pipeline)
        pipe = pipe_or_client.pipeline(transaction=False) if own else pipe_or_client
        k = self.key(minute_of(ts))
        pipe.hincrby(k, f"rewarded:{action_key}", 1)
        pipe.hincrbyfloat(k, f"reward_sum:{action_key}", float(reward))
        if reward > 0:
            pipe.hincrby(k, f"reward_pos:{action_key}", 1)
        if lag_s is not None and math.isfinite(lag_s) and lag_s >= 0:
            pipe.hincrbyfloat(k, "lag_sum", float(lag_s))
            pipe.hincrby(k, "lag_n", 1)
            pipe.hincrby(k, f"lag:{bucket_index(LAG_EDGES_S, lag_s)}", 1)
        pipe.expire(k, self.ttl_s)
        if own:
            pipe.execute()

    # --- reading ------------------------------------------------------------------------------
    def read_minutes(self, first: int, last: int) -> list[dict[str, float]]:
        """Raw counters of minutes first..last inclusive, oldest first (empty dicts where nothing happened)."""
        if self.redis is None:
            raise redis.ConnectionError("no redis client")
        pipe = self.redis.pipeline(transaction=False)
        for m in range(first, last + 1):
            pipe.hgetall(self.key(m))
        return [{k.decode(): float(v) for k, v in raw.items()} for raw in pipe.execute()]

    def series(self, minutes: int, *, bins: int = 60, now: float | None = None) -> dict:
        """The last `minutes` minutes (including the current one) in at most `bins` equal time bins,
        plus totals over the whole window. Shape: see services.serving.routes_ui.ActivitySeries."""
        minutes = max(1, min(int(minutes), MAX_MINUTES))
        now = time.time() if now is None else now
        last = minute_of(now)
        step = max(1, math.ceil(minutes / max(1, bins)))
        n_bins = math.ceil(minutes / step)
        first = last - n_bins * step + 1
        raw = self.read_minutes(first, last)
        groups = [_merge(raw[i * step:(i + 1) * step]) for i in range(n_bins)]
        out_bins = [_summarize(g, start=(first + i * step) * 60, with_hist=False) for i, g in enumerate(groups)]
        total = _summarize(_merge(groups), start=first * 60, with_hist=True)
        return {"minutes": minutes, "bin_minutes": step, "start": first * 60, "end": (last + 1) * 60,
                "now": now, "bins": out_bins, "totals": total,
                "latency_edges_ms": list(LATENCY_EDGES_MS), "lag_edges_s": list(LAG_EDGES_S)}


def _merge(minutes: Iterable[Mapping[str, float]]) -> dict[str, float]:
    out: dict[str, float] = {}
    for m in minutes:
        for k, v in m.items():
            out[k] = out.get(k, 0.0) + v
    return out


def _hist(counters: Mapping[str, float], prefix: str, n: int) -> list[int]:
    return [int(counters.get(f"{prefix}{i}", 0)) for i in range(n + 1)]


def _summarize(c: Mapping[str, float], *, start: int, with_hist: bool) -> dict:
    """Counters of one time span -> the numbers the charts draw."""
    searches = int(c.get("searches", 0))
    explored = int(c.get("explored", 0))
    keys = sorted({k.split(":", 1)[1] for k in c if k.startswith(("action:", "rewarded:"))})
    actions = {}
    for a in keys:
        chosen = int(c.get(f"action:{a}", 0))
        rewarded = int(c.get(f"rewarded:{a}", 0))
        rsum = c.get(f"reward_sum:{a}", 0.0)
        actions[a] = {
            "chosen": chosen, "share": chosen / searches if searches else None,
            "rewarded": rewarded, "reward_sum": round(rsum, 6),
            "reward_rate": rsum / rewarded if rewarded else None,
            "positive_rate": c.get(f"reward_pos:{a}", 0.0) / rewarded if rewarded else None,
        }
    rewarded_all = sum(a["rewarded"] for a in actions.values())
    reward_all = sum(a["reward_sum"] for a in actions.values())
    lag_n = int(c.get("lag_n", 0))
    lag_hist = _hist(c, "lag:", len(LAG_EDGES_S))
    stages = sorted({k.split(":")[1] for k in c if k.startswith("lat_sum:")})
    latency = {}
    for st in stages:
        hist = _hist(c, f"lat:{st}:", len(LATENCY_EDGES_MS))
        n = sum(hist)
        entry: dict = {"count": n, "mean": c.get(f"lat_sum:{st}", 0.0) / n if n else None}
        for q in PERCENTILES:
            entry[f"p{q}"] = percentile(LATENCY_EDGES_MS, hist, q)
        if with_hist:
            entry["histogram"] = hist
        latency[st] = entry
    out = {
        "start": start, "searches": searches, "explored": explored,
        "exploration_rate": explored / searches if searches else None,
        "actions": actions, "rewarded": rewarded_all,
        "reward_rate": reward_all / rewarded_all if rewarded_all else None,
        "lag_n": lag_n, "lag_mean_s": c.get("lag_sum", 0.0) / lag_n if lag_n else None,
        "lag_p50_s": percentile(LAG_EDGES_S, lag_hist, 50), "lag_p95_s": percentile(LAG_EDGES_S, lag_hist, 95),
        "latency_ms": latency,
    }
    if with_hist:
        out["lag_histogram"] = lag_hist
    return out
