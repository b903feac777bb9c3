"""End-to-end /search: in-process p50/p99 with a per-stage breakdown, the latency of each action
(subset of retrievers) against running every retriever, and HTTP throughput with wrk.

    python -m bench.bench_search [--quick] [--no-http]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from bench.common import CACHE, ROOT, latency_summary, load_playlists, peak_rss_mb, stop_server, write_result

os.environ.setdefault("HF_HUB_OFFLINE", "1")


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


def in_process(n: int) -> dict[str, object]:
    from bandit.policy import FixedPolicy
    from services.serving.runtime import Runtime

    rt = Runtime(bench_settings(), start_worker=False)
    try:
        qs = query_mix(n)
        for q in qs[:50]:
            rt.pipeline.search(q, 10)
        totals, stages, actions = [], {}, {}
        for q in qs:
            out = rt.pipeline.search(q, 10)
            totals.append(out.timings_ms["total"] / 1000)
            for k, v in out.timings_ms.items():
                stages.setdefault(k, []).append(v)
            actions[out.decision.action.key] = actions.get(out.decision.action.key, 0) + 1
        res: dict[str, object] = {"learned_policy": latency_summary(totals),
                                  "stage_p50_ms": {k: float(np.median(v)) for k, v in stages.items()},
                                  "stage_p99_ms": {k: float(np.percentile(v, 99)) for k, v in stages.items()},
                                  "action_share": {k: v / len(qs) for k, v in sorted(actions.items())}}
        # Every fixed subset through the same pipeline: what the bandit saves against "all".
        per_action = {}
        holder = rt.policy
        saved = holder.current()
        sub = qs[: max(100, n // 4)]
        for a in rt.pipeline.actions:
            holder.set(FixedPolicy(a.arms), "fixed")
            lat = []
            for q in sub:
                out = rt.pipeline.search(q, 10)
                lat.append(out.timings_ms["total"] / 1000)
            per_action[a.key] = latency_summary(lat)
        holder.set(saved, getattr(saved, "version", None))
        res["per_action"] = per_action
        all_key = max(rt.pipeline.actions, key=lambda a: len(a.arms)).key
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
        m = re.search(rf"\s{p}%\s+([\d.]+)(us|ms|s)", out)
        if not m:
            return float("nan")
        v, unit = float(m.group(1)), m.group(2)
        return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v

    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    return {"requests_per_s": rps, "p50_ms": pct("50"), "p99_ms": pct("99"),
            "non_2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": sum(int(x) for x in errors.groups()) if errors else 0,
            "seconds": seconds, "connections": conns}


def over_http(seconds: int, workers: int = 1) -> dict[str, object]:
    if shutil.which("wrk") is None:
        return {"skipped": "wrk not installed (apt-get install wrk)"}
    import json
    import urllib.parse
    import urllib.request

    with served_api(18000 + os.getpid() % 1000, LTRR_WORKERS=str(workers)) as (base, _, tmp):
        qs = query_mix(500, seed=1)
        paths = ",".join(json.dumps("/search?" + urllib.parse.urlencode({"q": q, "limit": 10})) for q in qs)
        (tmp / "search.lua").write_text(
            f"local paths = {{{paths}}}\nlocal i = 0\n"
            "request = function()\n  i = i + 1\n  return wrk.format('GET', paths[(i % #paths) + 1])\nend\n")
        search = _wrk(base, tmp / "search.lua", seconds, 16)
        # Feedback: batches of 100 events on real searches (re-posting a batch is accepted again
        # and deduplicated by event id in the worker, so the body can be reused).
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
        fb = _wrk(base, tmp / "feedback.lua", max(5, seconds // 2), 8)
        fb["events_per_s"] = fb["requests_per_s"] * 100
        return {"workers": workers, "search": search, "feedback_batches_of_100": fb}


def run(quick: bool = False, http: bool = True) -> dict[str, object]:
    ensure_built(2000 if quick else 6000)
    res: dict[str, object] = {"catalog_tracks": 28356, "in_process": in_process(300 if quick else 2000)}
    if http:
        # One API process per core (LTRR_WORKERS) and, for comparison, a single process.
        cores = os.cpu_count() or 1
        res["http"] = over_http(10 if quick else 30, workers=cores)
        if cores > 1:
            res["http_one_worker"] = over_http(10 if quick else 30, workers=1)
    write_result("search", res)
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--no-http", action="store_true")
    a = ap.parse_args()
    import json

    print(json.dumps(run(a.quick, not a.no_http), indent=2, default=float))
