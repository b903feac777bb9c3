"""Runs every benchmark (each in its own process, so peak RSS is per benchmark) and regenerates
BENCHMARKS.md from bench/results/*.json.

    python -m bench.run_all [--quick] [--only lexical,dense,...] [--report-only]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from bench.common import ROOT

# Order matters: bench_search builds the shared bench data dir the later ones reuse.
BENCHES = ["lexical", "dense", "xr", "q2e", "bandit", "ranker", "search", "relevance", "entities", "clicks", "suggest",
           "learning", "feedback", "memory", "stages", "scale", "load"]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke run, not numbers to quote")
    ap.add_argument("--only", help="comma list of " + ",".join(BENCHES))
    ap.add_argument("--report-only", action="store_true", help="only regenerate BENCHMARKS.md")
    args = ap.parse_args()
    chosen = args.only.split(",") if args.only else BENCHES
    failed = []
    if not args.report_only:
        for name in chosen:
            module = f"bench.bench_{name}"
            if not (ROOT / "bench" / f"bench_{name}.py").exists():
                print(f"== {name}: no such benchmark", flush=True)
                continue
            print(f"== {name}", flush=True)
            t = time.perf_counter()
            cmd = [sys.executable, "-m", module] + (["--quick"] if args.quick else [])
            rc = subprocess.run(cmd, cwd=ROOT).returncode
            print(f"== {name}: {'ok' if rc == 0 else f'FAILED ({rc})'} in {time.perf_counter() - t:.0f}s", flush=True)
            if rc:
                failed.append(name)
    from bench.report import write_benchmarks_md

    out = write_benchmarks_md(" ".join(["bash bench/run.sh", *sys.argv[1:]]))
    print(f"wrote {out}")
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
