"""End-to-end /search on a new deployment (issue 16): over HTTP with wrk and in process, on a
private copy of a data dir built exactly as the README's first command builds it (bench_clicks'
base: cold-start models), with the default settings (LTRR_WORKERS = the core count).

Queries: real traffic repeats itself (a Zipf law), so the main stream samples a pool of ~1,760
distinct queries (the dev playlist names and the spearfish set of bench/relevance_sets.py: titles,
artist + title, partial titles, typos) with probability ~ 1/rank; one more phase sends only
queries never sent before (every title and "artist title" of the catalog, clean and misspelled),
the worst case for the per-arm retrieval cache. Each wrk thread walks its own stretch of the
stream. Reported per phase: requests/s at 16 connections, latency percentiles, errors, the
retrieval cache's hit rate (from /metrics) and the server's CPU milliseconds per request (the
process tree: API workers, Redis, trainer), a figure that depends less on other load on the
machine than requests/s do.

In process: per-stage p50/p99 of the same streams, and the learned policy against each fixed
subset of retrievers (end-to-end, cache off) on the same queries.

    python -m bench.bench_search [--quick] [--no-http]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from bench.common import CACHE, ROOT, latency_summary, load_playlists, peak_rss_mb, stop_server, write_result

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ZIPF_S = 1.0


def query_pool() -> list[str]:
    """The distinct queries the Zipf stream draws from: dev topic queries + the spearfish set."""
    from bench.relevance_sets import spearfish_set, topic_set
    from services.catalog import Catalog

    cat = Catalog.load(ROOT / "data" / "tracks.csv.gz")
    texts = [q.text for q in topic_set()] + [q.text for q in spearfish_set(cat)]
    return list(dict.fromkeys(t.strip() for t in texts if t.strip()))


def zipf_stream(n: int, seed: int = 0, s: float = ZIPF_S) -> list[str]:
    """n queries drawn from query_pool() with P(rank r) ~ 1/r^s over a seeded shuffle of it."""
    rng = random.Random(seed)
    pool = query_pool()
    rng.shuffle(pool)
    weights = [1.0 / (r + 1) ** s for r in range(len(pool))]
    return rng.choices(pool, weights=weights, k=n)


def distinct_stream(n: int, seed: int = 0) -> list[str]:
    """n queries, no two alike: titles and "artist title" of catalog tracks, clean and misspelled."""
    from services.catalog import Catalog
    from services.offline.typos import add_typos

    rng = random.Random(seed)
    tracks = list(Catalog.load(ROOT / "data" / "tracks.csv.gz").tracks)
    rng.shuffle(tracks)
    out: dict[str, None] = {}
    for shape in range(4):
        for t in tracks:
            q = [t.title, f"{t.artist} {t.title}", add_typos(f"{t.artist} {t.title}", rng),
                 add_typos(t.title, rng)][shape].strip()[:200]
            if q:
                out.setdefault(q)
            if len(out) >= n:
                return list(out)
    return list(out)


def stream_stats(qs: Sequence[str]) -> dict[str, float]:
    """How repetitive a stream is: distinct share and the share of the 100 most frequent queries."""
    from collections import Counter

    c = Counter(qs)
    return {"queries": len(qs), "distinct": len(c), "top100_share": sum(v for _, v in c.most_common(100)) / len(qs)}


def bench_settings():  # type: ignore[no-untyped-def]
    from services.config import Settings

    return Settings(data_dir=CACHE / "var", embedded_worker=False)


def ensure_built(queries: int = 6000) -> None:
    """Builds the bench data dir once (indexes + cold-start models), reused across runs."""
    from services.artifacts import ArtifactStore
    from services.catalog import Catalog
    from services.offline.build import build_indexes, train_coldstart
    from services.serving.runtime import Runtime, connect_redis

    s = bench_settings()
    if ArtifactStore(s.models_dir / "ranker", "ranker").versions():
        return
    client, server = connect_redis(s)
    try:
        build_indexes(s, Catalog.load(s.catalog), client, progress=True)
    finally:
        if server:
            server.stop()
    rt = Runtime(s, start_worker=False)
    try:
        train_coldstart(s, rt, n_queries=queries, progress=True)
    finally:
        rt.close()


def query_mix(n: int, seed: int = 0) -> list[str]:
    """Half spearfishing (titles, artist + title, some misspelled), half topic (playlist names)."""
    from services.catalog import Catalog
    from services.offline.typos import add_typos

    rng = random.Random(seed)
    cat = Catalog.load(bench_settings().catalog)
    topics = list(load_playlists()[0].values())
    out = []
    for i in range(n):
        if i % 2:
            out.append(rng.choice(topics))
            continue
        t = rng.choice(cat.tracks)
        q = rng.choice([t.title, f"{t.artist} {t.title}", t.artist])
        out.append(add_typos(q, rng) if rng.random() < 0.3 else q)
    return [q[:200] for q in out]


def _stages(pipe, qs: Sequence[str]) -> dict[str, object]:  # type: ignore[no-untyped-def]
    stages: dict[str, list[float]] = {}
    for q in qs:
        out = pipe.search(q, 10)
        for k, v in out.timings_ms.items():
            stages.setdefault(k, []).append(v)
    return {"p50_ms": {k: round(float(np.median(v)), 3) for k, v in stages.items()},
            "p99_ms": {k: round(float(np.percentile(v, 99)), 3) for k, v in stages.items()}}


def in_process(n: int, data: Path) -> dict[str, object]:
    """One search at a time on `data` with the default settings: the Zipf stream (the first n as
    warm-up, then n measured: the cache in its steady state), n distinct queries, and every fixed
    subset against the learned policy with the cache off (end-to-end, not a sum of arm timings)."""
    from bandit.policy import FixedPolicy
    from services.config import Settings
    from services.serving.runtime import Runtime

    rt = Runtime(Settings(data_dir=data, embedded_worker=False), start_worker=False)
    try:
        pipe = rt.pipeline
        zipf = zipf_stream(2 * n, seed=11)
        _stages(pipe, zipf[:n])
        cache = pipe.retrieval_cache
        h0, m0 = cache.hits, cache.misses
        res: dict[str, object] = {"zipf": _stages(pipe, zipf[n:])}
        res["zipf_cache_hit_rate"] = (cache.hits - h0) / max(1, cache.hits - h0 + cache.misses - m0)
        h0, m0 = cache.hits, cache.misses
        res["distinct"] = _stages(pipe, distinct_stream(n, seed=12))
        res["distinct_cache_hit_rate"] = (cache.hits - h0) / max(1, cache.hits - h0 + cache.misses - m0)
        res["cache_entries"] = len(cache)
        # The learned policy against every fixed subset, cache off, on the same mixed queries.
        cache.max_entries = 0
        qs = query_mix(max(100, n // 2), seed=3)
        for q in qs[:30]:
            pipe.search(q, 10)
        actions: dict[str, int] = {}
        lat = []
        for q in qs:
            out = pipe.search(q, 10)
            lat.append(out.timings_ms["total"] / 1000)
            actions[out.decision.action.key] = actions.get(out.decision.action.key, 0) + 1
        res["learned_policy"] = latency_summary(lat)
        res["action_share"] = {k: v / len(qs) for k, v in sorted(actions.items(), key=lambda kv: -kv[1])}
        per_action = {}
        holder = rt.policy
        saved = holder.current()
        for a in pipe.actions:
            holder.set(FixedPolicy(a.arms), "fixed")
            per_action[a.key] = latency_summary(pipe.search(q, 10).timings_ms["total"] / 1000 for q in qs)
        holder.set(saved, getattr(saved, "version", None))
        res["per_action"] = per_action
        all_key = max(pipe.actions, key=lambda a: len(a.arms)).key
        res["all_retrievers_key"] = all_key
        res["learned_vs_all_p50_ratio"] = res["learned_policy"]["p50_ms"] / per_action[all_key]["p50_ms"]
        res["peak_rss_mb"] = peak_rss_mb()
        return res
    finally:
        rt.close()


def _wait_http(url: str, timeout: float = 120.0) -> None:
    import urllib.request

    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"server did not come up at {url}")


@contextlib.contextmanager
def served_api(port: int, **env_extra: str) -> Iterator[tuple[str, subprocess.Popen[bytes], Path]]:
    """`ltrr serve` on the bench data dir in a subprocess, up and healthy: yields (base URL,
    process, a scratch dir), and stops the server and removes the dir afterwards."""
    env = {**os.environ, "LTRR_DATA_DIR": str(CACHE / "var"), "LTRR_PORT": str(port),
           "LTRR_LOG_LEVEL": "WARNING", **env_extra}
    proc = subprocess.Popen([sys.executable, "-m", "services.cli", "serve"], env=env, cwd=ROOT)
    tmp = Path(tempfile.mkdtemp())
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_http(base + "/health")
        yield base, proc, tmp
    finally:
        stop_server(proc)
        shutil.rmtree(tmp, ignore_errors=True)


def _wrk(url: str, script: Path, seconds: int, conns: int) -> dict[str, float]:
    out = subprocess.run(["wrk", "-t2", f"-c{conns}", f"-d{seconds}s", "--latency", "-s", str(script), url],
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))

    def pct(p: str) -> float:
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)\b", out)
        if not m:
            return float("nan")
        v, unit = float(m.group(1)), m.group(2)
        return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v

    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    n = re.search(r"(\d+) requests in", out)
    return {"requests_per_s": rps, "requests": int(n.group(1)) if n else 0, "p50_ms": pct("50"),
            "p90_ms": pct("90"), "p99_ms": pct("99"), "non_2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": sum(int(x) for x in errors.groups()) if errors else 0,
            "seconds": seconds, "connections": conns}


def search_script(path: Path, queries: Sequence[str], threads: int = 2) -> Path:
    """A wrk script sending GET /search for `queries` in order, each wrk thread from its own
    offset (len/threads apart), so two threads never send the same stretch at the same time."""
    paths = ",".join(json.dumps("/search?" + urllib.parse.urlencode({"q": q, "limit": 10})) for q in queries)
    path.write_text(
        f"local paths = {{{paths}}}\nlocal n = 0\n"
        "function setup(thread)\n  thread:set('tid', n)\n  n = n + 1\nend\n"
        f"function init(args)\n  i = math.floor((tid or 0) * #paths / {threads})\nend\n"
        "request = function()\n  i = i + 1\n  return wrk.format('GET', paths[(i % #paths) + 1])\nend\n")
    return path


def process_tree(pid: int) -> set[int]:
    """`pid` and its descendants (API workers, Redis, trainer processes)."""
    pids = {pid}
    for _ in range(3):
        for p in Path("/proc").iterdir():
            if p.name.isdigit():
                try:
                    if int((p / "stat").read_text().rsplit(")", 1)[1].split()[1]) in pids:
                        pids.add(int(p.name))
                except (OSError, IndexError, ValueError):
                    continue
    return pids


def process_tree_cpu_s(pid: int) -> float:
    """CPU seconds (user + system) of `pid` and its descendants."""
    total = 0
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            continue
    return total / os.sysconf("SC_CLK_TCK")


def cache_counts(base: str) -> tuple[float, float]:
    """(hits, misses) of the per-arm retrieval cache, summed over workers, from /metrics."""
    import httpx

    text = httpx.get(base + "/metrics", timeout=10).text
    hits = sum(float(v) for v in re.findall(r'^ltrr_retrieval_cache_total{[^}]*outcome="hit"[^}]*} ([0-9.e+]+)$',
                                            text, re.M))
    misses = sum(float(v) for v in re.findall(
        r'^ltrr_retrieval_cache_total{[^}]*outcome="miss"[^}]*} ([0-9.e+]+)$', text, re.M))
    return hits, misses


def http_phase(base: str, pid: int, script: Path, seconds: int, conns: int = 16) -> dict[str, object]:
    h0, m0 = cache_counts(base)
    c0 = process_tree_cpu_s(pid)
    res: dict[str, object] = dict(_wrk(base, script, seconds, conns))
    cpu = process_tree_cpu_s(pid) - c0
    h1, m1 = cache_counts(base)
    res["cache_hit_rate"] = (h1 - h0) / max(1.0, h1 - h0 + m1 - m0)
    res["server_cpu_ms_per_request"] = cpu * 1000 / max(1, int(res["requests"]))  # type: ignore[call-overload]
    res["load_avg_1m"] = os.getloadavg()[0]
    return res


def _median_run(runs: list[dict[str, object]]) -> dict[str, object]:
    """The run with the median requests/s, plus the other runs' figures for the record."""
    ordered = sorted(runs, key=lambda r: float(r["requests_per_s"]))  # type: ignore[arg-type]
    out = dict(ordered[len(ordered) // 2])
    out["runs_requests_per_s"] = [r["requests_per_s"] for r in runs]
    out["runs_p99_ms"] = [r["p99_ms"] for r in runs]
    out["runs_cache_hit_rate"] = [round(float(r["cache_hit_rate"]), 4) for r in runs]  # type: ignore[arg-type]
    out["runs_server_cpu_ms_per_request"] = [round(float(r["server_cpu_ms_per_request"]), 3)  # type: ignore[arg-type]
                                             for r in runs]
    return out


def over_http(base_dir: Path, seconds: int, runs: int, env_extra: dict[str, str] | None = None
              ) -> dict[str, object]:
    """wrk at 16 connections on a served copy of `base_dir`: the Zipf stream (`runs` runs after a
    warm-up), then distinct queries (`runs` runs, each on queries no earlier run sent), then
    feedback batches."""
    if shutil.which("wrk") is None:
        return {"skipped": "wrk not installed (apt-get install wrk)"}
    import urllib.request

    from bench.bench_clicks import serve_copy
    from bench.bench_load import _serve_pid

    with serve_copy(base_dir, env_extra or {}) as (base, data):
        pid = _serve_pid(data)
        tmp = data.parent
        zipf = zipf_stream(60_000, seed=1)
        res: dict[str, object] = {"workers": int(json.loads(urllib.request.urlopen(base + "/health").read())
                                                 .get("workers", 0) or 0) or None,
                                  "zipf_stream": stream_stats(zipf)}
        script = search_script(tmp / "zipf.lua", zipf)
        _wrk(base, script, 10, 16)  # warm-up: models, caches, connection pools
        res["zipf"] = _median_run([http_phase(base, pid, script, seconds) for _ in range(runs)])
        per_run = 400 * seconds  # more than 16 connections can send in a run: no query repeats
        distinct = distinct_stream(per_run * runs, seed=2)
        res["distinct_queries"] = len(distinct)
        res["distinct"] = _median_run([
            http_phase(base, pid, search_script(tmp / f"distinct{r}.lua", distinct[r * per_run:(r + 1) * per_run]),
                       seconds) for r in range(runs)])
        res["search"] = res["zipf"]  # the headline figure (BENCHMARKS.md targets table)
        res["feedback_batches_of_100"] = _feedback(base, tmp, zipf[:100], max(5, seconds // 2))
        return res


def _feedback(base: str, tmp: Path, qs: Sequence[str], seconds: int) -> dict[str, float]:
    """Feedback acceptance: batches of 100 events on real searches (re-posting a batch is
    accepted again and deduplicated by event id in the worker, so the body can be reused)."""
    import urllib.request

    batches = []
    for b in range(20):
        hits = []
        for q in qs[b * 5:(b + 1) * 5]:
            with urllib.request.urlopen(base + "/search?" + urllib.parse.urlencode({"q": q, "limit": 20})) as r:
                body = json.loads(r.read())
            hits += [(body["search_id"], h["track_id"], h["position"]) for h in body["results"]
                     if h["type"] == "track"]
        evs = [{"event_id": f"b{b}-{i}", "search_id": s, "track_id": t, "position": p, "type": "click"}
               for i, (s, t, p) in enumerate((hits * 10)[:100])]
        batches.append(json.dumps({"events": evs}))
    bodies = ",".join("[[" + b + "]]" for b in batches)
    (tmp / "feedback.lua").write_text(
        f"local bodies = {{{bodies}}}\nlocal i = 0\nwrk.method = 'POST'\n"
        "wrk.headers['Content-Type'] = 'application/json'\n"
        "request = function()\n  i = i + 1\n"
        "  return wrk.format(nil, '/feedback', nil, bodies[(i % #bodies) + 1])\nend\n")
    fb = _wrk(base, tmp / "feedback.lua", seconds, 8)
    fb["events_per_s"] = fb["requests_per_s"] * 100
    return fb


def run(quick: bool = False, http: bool = True) -> dict[str, object]:
    from bench.bench_clicks import base_data_dir

    base_dir = base_data_dir()
    res: dict[str, object] = {"catalog_tracks": 28356,
                              "data_dir": "README-built (bench_clicks base: ltrr index build + ltrr train coldstart), "
                                          "default settings, private copies",
                              "zipf_s": ZIPF_S, "query_pool": len(query_pool()), "cores": os.cpu_count()}
    tmp = Path(tempfile.mkdtemp(prefix="ltrr-search-"))
    try:
        data = tmp / "var"
        shutil.copytree(base_dir, data, symlinks=True, ignore=shutil.ignore_patterns("*.lock", "*.pid", "logs"))
        res["in_process"] = in_process(300 if quick else 1000, data)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if http:
        seconds, runs = (10, 1) if quick else (30, 3)
        res["http"] = over_http(base_dir, seconds, runs)  # default settings: one worker per core
        res["http_one_worker"] = {"zipf": over_http(base_dir, seconds, 1, {"LTRR_WORKERS": "1"})["zipf"]}
    write_result("search", res)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-http", action="store_true")
    a = ap.parse_args()
    print(json.dumps(run(a.quick, not a.no_http), indent=2, default=float))


if __name__ == "__main__":
    main()
