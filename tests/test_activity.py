"""ActivityRecorder on a real Redis: per-minute counters, window/bin aggregation, histogram
percentiles against exact ones, rewards and lag, TTL."""

from __future__ import annotations

import numpy as np
import pytest

from services.activity import (
    LAG_EDGES_S,
    LATENCY_EDGES_MS,
    MAX_MINUTES,
    TTL_S,
    ActivityRecorder,
    bucket_index,
    is_explored,
    percentile,
)
from services.keys import Keys

NOW = 1_800_000_000.0 + 45  # 45 s into a minute


def _search(rec: ActivityRecorder, client, action: str, explored: bool, ts: float, total_ms: float = 5.0) -> None:
    pipe = client.pipeline(transaction=False)
    rec.record_search(pipe, action, explored, {"bandit": 0.04, "retrieve": total_ms * 0.6, "total": total_ms}, ts)
    pipe.execute()


def test_counts_shares_and_exploration_over_the_window(redis_client):
    rec = ActivityRecorder(redis_client)
    for _ in range(6):
        _search(rec, redis_client, "lexical@100", False, NOW)
    for _ in range(3):
        _search(rec, redis_client, "dense+lexical@100", True, NOW - 60)
    _search(rec, redis_client, "xr@100", True, NOW - 120)
    _search(rec, redis_client, "q2e@100", False, NOW - 11 * 60)  # outside a 10-minute window

    s = rec.series(10, now=NOW)
    assert s["minutes"] == 10 and s["bin_minutes"] == 1 and len(s["bins"]) == 10
    t = s["totals"]
    assert t["searches"] == 10 and t["explored"] == 4
    assert t["exploration_rate"] == pytest.approx(0.4)
    assert set(t["actions"]) == {"lexical@100", "dense+lexical@100", "xr@100"}
    assert t["actions"]["lexical@100"]["chosen"] == 6
    assert t["actions"]["lexical@100"]["share"] == pytest.approx(0.6)
    assert sum(a["share"] for a in t["actions"].values()) == pytest.approx(1.0)
    # Bins are oldest first and the last one is the current minute.
    last, prev, before = s["bins"][-1], s["bins"][-2], s["bins"][-3]
    assert last["start"] == int(NOW // 60) * 60 and s["end"] == last["start"] + 60
    assert (last["searches"], prev["searches"], before["searches"]) == (6, 3, 1)
    assert prev["exploration_rate"] == 1.0 and last["exploration_rate"] == 0.0
    assert all(b["searches"] == 0 and b["exploration_rate"] is None for b in s["bins"][:-3])
    # The search 11 minutes ago shows up once the window covers it.
    assert rec.series(12, now=NOW)["totals"]["searches"] == 11


def test_bins_merge_minutes_and_window_is_capped(redis_client):
    rec = ActivityRecorder(redis_client)
    for m in range(120):
        _search(rec, redis_client, "lexical@100", m % 4 == 0, NOW - m * 60)
    s = rec.series(120, bins=60, now=NOW)
    assert s["bin_minutes"] == 2 and len(s["bins"]) == 60
    assert all(b["searches"] == 2 for b in s["bins"])
    assert s["bins"][1]["start"] - s["bins"][0]["start"] == 120
    assert s["totals"]["searches"] == 120 and s["totals"]["explored"] == 30
    # An uneven split still covers the whole window, ending at the current minute.
    s = rec.series(90, bins=60, now=NOW)
    assert s["bin_minutes"] == 2 and len(s["bins"]) == 45 and s["totals"]["searches"] == 90
    assert rec.series(10 * MAX_MINUTES, bins=10, now=NOW)["minutes"] == MAX_MINUTES


def test_latency_percentiles_match_exact_ones_within_a_bucket(redis_client):
    rec = ActivityRecorder(redis_client)
    rng = np.random.default_rng(7)
    values = rng.lognormal(mean=np.log(6.0), sigma=0.6, size=3000)
    pipe = redis_client.pipeline(transaction=False)
    for i, v in enumerate(values):
        rec.record_search(pipe, "lexical@100", False, {"total": float(v)}, NOW - (i % 30) * 60)
    pipe.execute()
    lat = rec.series(30, now=NOW)["totals"]["latency_ms"]["total"]
    assert lat["count"] == 3000
    assert lat["mean"] == pytest.approx(values.mean(), rel=1e-6)
    assert sum(lat["histogram"]) == 3000 and len(lat["histogram"]) == len(LATENCY_EDGES_MS) + 1
    for q in (50, 95, 99):
        exact = float(np.percentile(values, q))
        i = bucket_index(LATENCY_EDGES_MS, exact)
        lo = LATENCY_EDGES_MS[i - 1] if i else 0.0
        hi = LATENCY_EDGES_MS[i] if i < len(LATENCY_EDGES_MS) else LATENCY_EDGES_MS[-1]
        assert lo <= lat[f"p{q}"] <= hi, (q, exact, lat[f"p{q}"])
    assert lat["p50"] < lat["p95"] < lat["p99"]


def test_rewards_lag_and_both_call_styles(redis_client):
    rec = ActivityRecorder(redis_client)
    for _ in range(4):
        _search(rec, redis_client, "lexical@100", False, NOW)
    # Through a client (own pipeline) ...
    rec.record_reward(redis_client, "lexical@100", 1.0, 2.0, NOW)
    rec.record_reward(redis_client, "lexical@100", 0.0, None, NOW)  # join window closed: no lag
    # ... and piggybacking on a caller's pipeline: nothing is written before execute().
    pipe = redis_client.pipeline(transaction=False)
    rec.record_reward(pipe, "lexical@100", 0.7, 8.0, NOW)
    rec.record_reward(pipe, "dense@100", -0.3, 40.0, NOW - 60)
    assert rec.series(5, now=NOW)["totals"]["rewarded"] == 2
    pipe.execute()

    t = rec.series(5, now=NOW)["totals"]
    lex, dense = t["actions"]["lexical@100"], t["actions"]["dense@100"]
    assert (lex["rewarded"], dense["rewarded"], t["rewarded"]) == (3, 1, 4)
    assert lex["reward_rate"] == pytest.approx(1.7 / 3)
    assert lex["positive_rate"] == pytest.approx(2 / 3)
    assert dense["chosen"] == 0 and dense["share"] == 0 and dense["reward_rate"] == pytest.approx(-0.3)
    assert t["reward_rate"] == pytest.approx(1.4 / 4)
    assert t["lag_n"] == 3 and t["lag_mean_s"] == pytest.approx(50 / 3)
    assert 5 <= t["lag_p50_s"] <= 10  # the middle lag (8 s) lies in the (5, 10] bucket
    assert sum(t["lag_histogram"]) == 3 and len(t["lag_histogram"]) == len(LAG_EDGES_S) + 1


def test_keys_expire_after_48h_and_use_the_prefix(redis_client):
    rec = ActivityRecorder(redis_client, Keys(prefix="other"))
    _search(rec, redis_client, "lexical@100", False, NOW)
    key = f"other:activity:{int(NOW // 60)}"
    assert redis_client.exists(key)
    assert TTL_S - 60 <= redis_client.ttl(key) <= TTL_S
    assert ActivityRecorder(redis_client).series(5, now=NOW)["totals"]["searches"] == 0


def test_non_finite_timings_are_ignored(redis_client):
    rec = ActivityRecorder(redis_client)
    pipe = redis_client.pipeline(transaction=False)
    rec.record_search(pipe, "lexical@100", False, {"total": float("nan"), "rank": 1.5}, NOW)
    pipe.execute()
    lat = rec.series(1, now=NOW)["totals"]["latency_ms"]
    assert set(lat) == {"rank"} and lat["rank"]["count"] == 1


def test_percentile_and_exploration_helpers():
    edges = (1.0, 2.0, 4.0)
    assert percentile(edges, [0, 0, 0, 0], 50) is None
    assert percentile(edges, [10, 0, 0, 0], 50) == pytest.approx(0.5)
    assert percentile(edges, [0, 10, 10, 0], 50) == pytest.approx(2.0)
    assert percentile(edges, [0, 10, 10, 0], 75) == pytest.approx(3.0)
    assert percentile(edges, [0, 0, 0, 5], 99) == 4.0  # overflow: a lower bound
    assert bucket_index(edges, 2.0) == 1 and bucket_index(edges, 2.01) == 2 and bucket_index(edges, 9) == 3
    assert not is_explored([0.7, 0.2, 0.1], 0)
    assert is_explored([0.7, 0.2, 0.1], 2)
    assert not is_explored([0.5, 0.5], 1)  # a tie with the top is the policy's choice
    assert not is_explored([], 0)
