"""Load and soak test of the running API with wrk (issue: reliability): a mixed search + feedback
load at 16 and at 50 concurrent connections over loopback, 60 s each, then a 10-minute soak at 10
connections with the server's RSS sampled every minute (it should level off, not climb).

It serves a private copy of a data dir built exactly as the README's first command builds it
(`ltrr index build` + `ltrr train coldstart`, default settings: bench_clicks' base, one API
worker per core), so the numbers are a new deployment's. Searches follow bench_search's Zipf
stream over the dev topic and spearfish queries (each wrk thread from its own offset). Per phase
it reports requests/s, latency percentiles, errors and non-2xx answers, and from /metrics the
share of searches that lost a retriever to its deadline (services.serving.arm_budgets), the
deadlines in force at the end, the share of searches shed to the cheapest retriever or refused
with 503 by admission control (services.serving.admission), and the retrieval cache's hit rate.

    python -m bench.bench_load [--quick]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import urllib.parse
import urllib.request
from pathlib import Path

import httpx

from bench.bench_clicks import base_data_dir, serve_copy
from bench.bench_search import _wrk, cache_counts, process_tree, zipf_stream
from bench.common import write_result

KEY = "bench-load-key"


def rss_mb(pid: int, redis: bool = False) -> float:
    """Proportional set size of the server's Python processes (every worker, the parent, the
    trainers; pages they share, such as the mapped indexes, count once), or with `redis=True` of
    its redis-server alone: Redis grows by design while its per-search keys fill their TTLs
    (ranked 10 min, served 1 h), which says nothing about a leak in the API processes."""
    total = 0
    for p in process_tree(pid):
        try:
            is_redis = "redis" in Path(f"/proc/{p}/comm").read_text()
            if is_redis != redis:
                continue
            for line in open(f"/proc/{p}/smaps_rollup"):
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024 if total else float("nan")


def mixed_script(base: str, tmp: Path) -> Path:
    qs = zipf_stream(20_000, seed=7)
    searches = []
    for q in qs[:40]:
        with urllib.request.urlopen(base + "/search?" + urllib.parse.urlencode({"q": q, "limit": 10})) as r:
            body = json.loads(r.read())
        searches += [(body["search_id"], h["track_id"], h["position"]) for h in body["results"] if h["type"] == "track"]
    bodies = []
    for b in range(50):
        evs = [{"event_id": f"load-{b}-{i}", "search_id": s, "track_id": t, "position": p,
                "type": ["click", "play", "skip"][i % 3]}
               for i, (s, t, p) in enumerate(searches[b * 7 % len(searches):][:10])]
        bodies.append(json.dumps({"events": evs}))
    paths = ",".join(json.dumps("/search?" + urllib.parse.urlencode({"q": q, "limit": 10})) for q in qs)
    lua = (f"local paths = {{{paths}}}\nlocal bodies = {{{','.join('[[' + b + ']]' for b in bodies)}}}\n"
           "local n = 0\n"
           "function setup(thread)\n  thread:set('tid', n)\n  n = n + 1\nend\n"
           "function init(args)\n  i = math.floor((tid or 0) * #paths / 2)\nend\n"
           "request = function()\n  i = i + 1\n"
           "  if i % 5 == 0 then\n"
           f"    return wrk.format('POST', '/feedback', {{['Content-Type'] = 'application/json', "
           f"['X-API-Key'] = '{KEY}'}}, bodies[(i % #bodies) + 1])\n"
           "  end\n  return wrk.format('GET', paths[(i % #paths) + 1])\nend\n")
    out = tmp / "mixed.lua"
    out.write_text(lua)
    return out


def scrape(base: str) -> dict[str, float]:
    """The counters a phase is judged by, summed over labels."""
    text = httpx.get(base + "/metrics", timeout=10).text
    out: dict[str, float] = {}
    for name in ("ltrr_bandit_actions_total", "ltrr_searches_degraded_total", "ltrr_searches_shed_total",
                 "ltrr_searches_rejected_total"):
        out[name] = sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+]+)$", text, re.M))
    out["timeouts"] = sum(float(v) for v in re.findall(
        r'^ltrr_retriever_failures_total{[^}]*reason="timeout"[^}]*} ([0-9.e+]+)$', text, re.M))
    for arm, v in re.findall(r'^ltrr_retriever_deadline_seconds{[^}]*retriever="(\w+)"[^}]*} ([0-9.e+]+)$', text,
                             re.M):
        out[f"deadline_ms_{arm}"] = round(float(v) * 1000, 2)
    return out


def phase(base: str, script: Path, seconds: int, conns: int) -> dict[str, object]:
    before = scrape(base)
    h0, m0 = cache_counts(base)
    res: dict[str, object] = dict(_wrk(base, script, seconds, conns))
    after = scrape(base)
    h1, m1 = cache_counts(base)
    res["cache_hit_rate"] = (h1 - h0) / max(1.0, h1 - h0 + m1 - m0)
    searches = after["ltrr_bandit_actions_total"] - before["ltrr_bandit_actions_total"]
    degraded = after["ltrr_searches_degraded_total"] - before["ltrr_searches_degraded_total"]
    res.update({"searches": int(searches), "searches_degraded": int(degraded),
                "degraded_share": degraded / searches if searches else float("nan"),
                # Shed: answered by the cheapest good retriever alone because the queue was long
                # (services.serving.admission); rejected: 503 because it was full.
                "shed_share": (after["ltrr_searches_shed_total"] - before["ltrr_searches_shed_total"]) / searches
                if searches else float("nan"),
                "searches_rejected": int(after["ltrr_searches_rejected_total"]
                                         - before["ltrr_searches_rejected_total"]),
                "retriever_timeouts": int(after["timeouts"] - before["timeouts"]),
                "deadlines_ms": {k.removeprefix("deadline_ms_"): v for k, v in after.items()
                                 if k.startswith("deadline_ms_")}})
    return res


def run(quick: bool = False) -> dict[str, object]:
    if shutil.which("wrk") is None:
        res: dict[str, object] = {"skipped": "wrk not installed (bench/run.sh installs it with apt-get)"}
        write_result("load", res)
        return res
    base_dir = base_data_dir()
    seconds = 20 if quick else 60
    with serve_copy(base_dir, {"LTRR_API_KEYS": KEY}) as (base, data):
        pid = _serve_pid(data)
        script = mixed_script(base, data.parent)
        _wrk(base, script, 5, 8)  # warm caches before the RSS baseline
        rss_before = rss_mb(pid)
        load16 = phase(base, script, seconds, 16)
        load50 = phase(base, script, seconds, 50)
        rss_after_load = rss_mb(pid)
        soak_min = 1 if quick else 10
        curve = [{"minute": 0, "rss_mb": rss_after_load, "redis_pss_mb": rss_mb(pid, redis=True)}]
        soak_parts = []
        for m in range(1, soak_min + 1):
            soak_parts.append(phase(base, script, 60, 10))
            curve.append({"minute": m, "rss_mb": rss_mb(pid), "redis_pss_mb": rss_mb(pid, redis=True)})
        n = sum(int(p["searches"]) for p in soak_parts)
        soak = {"minutes": soak_min, "connections": 10,
                "requests_per_s": sum(float(p["requests_per_s"]) for p in soak_parts) / len(soak_parts),
                "non_2xx": sum(int(p["non_2xx"]) for p in soak_parts),
                "socket_errors": sum(int(p["socket_errors"]) for p in soak_parts),
                "degraded_share": sum(int(p["searches_degraded"]) for p in soak_parts) / n if n else float("nan"),
                "shed_share": sum(float(p["shed_share"]) * int(p["searches"]) for p in soak_parts) / n
                if n else float("nan")}
        half = curve[len(curve) // 2]["rss_mb"]
        res = {"data_dir": "README-built, default settings (bench_clicks base), private copy",
               "mix": "80% GET /search, 20% POST /feedback (batches of 10 events)",
               "load_16_connections": load16, "load_50_connections": load50, "soak": soak,
               "rss_mb": {"before": rss_before, "after_load": rss_after_load, "after_soak": curve[-1]["rss_mb"]},
               "rss_curve": curve, "rss_growth_during_soak_mb": curve[-1]["rss_mb"] - rss_after_load,
               "rss_growth_second_half_mb": curve[-1]["rss_mb"] - half}
    write_result("load", res)
    return res


def _serve_pid(data: Path) -> int:
    """The `ltrr serve` process started on this data dir (found by its environment)."""
    want = f"LTRR_DATA_DIR={data}".encode()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            env = (proc / "environ").read_bytes().split(b"\0")
            if b"services.cli" in (proc / "cmdline").read_bytes() and want in env:
                return int(proc.name)
        except OSError:
            continue
    raise RuntimeError(f"no ltrr serve process for {data}")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    print(json.dumps(run(ap.parse_args().quick), indent=2, default=float))
