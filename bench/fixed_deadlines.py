"""Runs a benchmark module with every retriever deadline fixed at DEADLINE_MS, so that no retriever
is ever dropped for being late: on a shared, loaded machine the deadlines (4x each arm's measured
p95, 40-80 ms) drop arms at random, and two runs of the same code then rank differently. With them
out of the way, and the bandit's draws seeded as always, a run is repeatable, so two versions of
the code can be compared query for query.

    python -m bench.fixed_deadlines bench.bench_relevance --data-dir D --systems search --out NAME

It only changes Settings' defaults (retriever_timeout_ms, retriever_deadline_floor_ms) for the
process; latencies measured this way are not serving latencies. The file has no project imports
beyond services.config, so it can be copied next to an older checkout to run its benchmarks alike.
"""

from __future__ import annotations

import runpy
import sys

DEADLINE_MS = 5000.0


def main() -> None:
    from services.config import Settings

    for name in ("retriever_timeout_ms", "retriever_deadline_floor_ms"):
        Settings.model_fields[name].default = DEADLINE_MS
    Settings.model_rebuild(force=True)
    assert Settings().retriever_deadline_floor_ms == DEADLINE_MS
    module, sys.argv = sys.argv[1], [sys.argv[1], *sys.argv[2:]]
    runpy.run_module(module, run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main()
