"""Load and soak test of the running API with wrk (issue: hardening): mixed search + feedback,
50 concurrent connections over loopback for 60 s, then a 10-minute soak; reports requests/s,
latency percentiles, errors, and the server's RSS before and after the soak.

    python -m bench.bench_load [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import urllib.parse
import urllib.request
from pathlib import Path

from bench.bench_search import _wrk, ensure_built, query_mix, served_api
from bench.common import write_result

KEY = "bench-load-key"


def rss_mb(pid: int) -> float:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def mixed_script(base: str, tmp: Path) -> Path:
    qs = query_mix(400, seed=7)
    searches = []
    for q in qs[:40]:
        with urllib.request.urlopen(base + "/search?" + urllib.parse.urlencode({"q": q, "limit": 10})) as r:
            body = json.loads(r.read())
        searches += [(body["search_id"], h["track_id"], i + 1) for i, h in enumerate(body["results"])]
    bodies = []
    for b in range(50):
        evs = [{"event_id": f"load-{b}-{i}", "search_id": s, "track_id": t, "position": p,
                "type": ["click", "play", "skip"][i % 3]}
               for i, (s, t, p) in enumerate(searches[b * 7 % len(searches):][:10])]
        bodies.append(json.dumps({"events": evs}))
    paths = ",".join(json.dumps("/search?" + urllib.parse.urlencode({"q": q, "limit": 10})) for q in qs)
    lua = (f"local paths = {{{paths}}}\nlocal bodies = {{{','.join('[[' + b + ']]' for b in bodies)}}}\n"
           "local i = 0\n"
           "request = function()\n  i = i + 1\n"
           "  if i % 5 == 0 then\n"
           f"    return wrk.format('POST', '/feedback', {{['Content-Type'] = 'application/json', "
           f"['X-API-Key'] = '{KEY}'}}, bodies[(i % #bodies) + 1])\n"
           "  end\n  return wrk.format('GET', paths[(i % #paths) + 1])\nend\n")
    out = tmp / "mixed.lua"
    out.write_text(lua)
    return out


def run(quick: bool = False) -> dict[str, object]:
    if shutil.which("wrk") is None:
        res: dict[str, object] = {"skipped": "wrk not installed (bench/run.sh installs it with apt-get)"}
        write_result("load", res)
        return res
    ensure_built(2000 if quick else 6000)
    with served_api(19000 + os.getpid() % 1000, LTRR_API_KEYS=KEY) as (base, proc, tmp):
        script = mixed_script(base, tmp)
        _wrk(base, script, 5, 8)  # warm caches before the RSS baseline
        rss_before = rss_mb(proc.pid)
        load = _wrk(base, script, 20 if quick else 60, 50)
        rss_after_load = rss_mb(proc.pid)
        soak_s = 60 if quick else 600
        soak = _wrk(base, script, soak_s, 10)
        rss_after_soak = rss_mb(proc.pid)
        res = {"mix": "80% GET /search, 20% POST /feedback (batches of 10 events)", "load_50_connections": load,
               "soak": soak, "rss_mb": {"before": rss_before, "after_load": rss_after_load,
                                        "after_soak": rss_after_soak},
               "rss_growth_during_soak_mb": rss_after_soak - rss_after_load}
    write_result("load", res)
    return res


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    print(json.dumps(run(ap.parse_args().quick), indent=2, default=float))
