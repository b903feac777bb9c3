"""Artists and albums as results: does an artist or album query get its entity first, and do
track queries stay free of entity hits? /search in process, default `types` (all three), on a
built data dir. The sets are in bench/relevance_sets.py.

    python -m bench.bench_entities [--data-dir var] [--n-per-kind 300] [--quick]
        -> bench/results/entities.json and bench/results/entities.md

- **entity set** (`entity_set`: artists and albums named exactly, with typos, "... songs",
  "<artist> <album>", "... album"): `first` = share of queries whose hit at position 1 is the
  entity; MRR@10 of the entity among all hits (tracks count as misses); `found@10`.
- **track sets** (the dev topic playlists and the spearfish set of bench_relevance): how often an
  entity hit shows at all (`entity@1`, `entity@10`), and the track figures two ways: ignoring the
  entity hits (what bench_relevance reports: `record.served`, the tracks in their order) and by
  absolute position (an entity hit above the relevant track costs it a rank).
- `named_us`: the name matcher's cost per query (services.serving.entities.EntityPlanner.named).

Searches run with `analytics=false` (nothing logged, as in bench_relevance). Run it on a copy of
the data dir when the data dir matters: its Redis is started from its redis/ directory.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bench.common import RESULTS, ndcg_at_k, write_result
from bench.relevance_sets import ENTITY_KINDS, SPEARFISH_KINDS, entity_set, spearfish_set, topic_set

K = 10
DEPTH = 100  # as bench_relevance: the page it evaluates is 100 deep


def _mrr(ranked: Sequence[str], relevant: dict[str, int], k: int = K) -> float:
    return next((1.0 / (i + 1) for i, d in enumerate(ranked[:k]) if relevant.get(d, 0) > 0), 0.0)


def _mean(xs: Sequence[float]) -> float:
    return float(np.mean(xs)) if len(xs) else 0.0


def run(data_dir: Path, n_per_kind: int, quick: bool = False) -> dict[str, object]:
    from retrievers.text import normalize
    from services.config import Settings
    from services.serving.runtime import Runtime

    settings = Settings(data_dir=data_dir, redis_url=None, embedded_worker=False)
    rt = Runtime(settings, start_worker=False)
    try:
        entities = entity_set(rt.catalog, n_per_kind)
        topic, spear = topic_set(), spearfish_set(rt.catalog, n_per_kind)
        if quick:
            topic = topic[::4]
        planner = rt.pipeline.entities
        assert planner is not None

        def page(q: str) -> tuple[list[str], list[str], float]:
            """(every hit by position, the tracks in their order, ms)."""
            t = time.perf_counter()
            out = rt.pipeline.search(q, DEPTH, analytics=False)
            return out.record.page(), list(out.record.served), (time.perf_counter() - t) * 1000

        by_kind: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        ms: list[float] = []
        print(f"entity set: {len(entities)} queries", flush=True)
        for q in entities:
            hits, _, t = page(q.text)
            ms.append(t)
            m = by_kind[q.kind]
            m["first"].append(float(bool(hits) and q.relevant.get(hits[0], 0) > 0))
            m["mrr@10"].append(_mrr(hits, q.relevant))
            m["found@10"].append(float(any(q.relevant.get(h, 0) > 0 for h in hits[:K])))
        entity_rows = {k: {name: _mean(v) for name, v in by_kind[k].items()} | {"queries": len(by_kind[k]["first"])}
                       for k in ENTITY_KINDS if k in by_kind}
        overall = {name: _mean([v for k in by_kind for v in by_kind[k][name]]) for name in ("first", "mrr@10",
                                                                                          "found@10")}
        track_rows: dict[str, dict[str, float]] = {}
        print(f"track sets: {len(topic)} topic, {len(spear)} spearfish queries", flush=True)
        for kind, qs in [("topic", topic), *[(k, [q for q in spear if q.kind == k]) for k in SPEARFISH_KINDS]]:
            rows: dict[str, list[float]] = defaultdict(list)
            for q in qs:
                hits, tracks, t = page(q.text)
                ms.append(t)
                rows["entity@1"].append(float(bool(hits) and ":" in hits[0]))
                rows["entity@10"].append(float(any(":" in h for h in hits[:K])))
                if kind == "topic":
                    rows["ndcg@10 tracks"].append(ndcg_at_k(tracks, q.relevant, K))
                    rows["ndcg@10 absolute"].append(ndcg_at_k(hits, q.relevant, K))
                else:
                    rows["mrr@10 tracks"].append(_mrr(tracks, q.relevant))
                    rows["mrr@10 absolute"].append(_mrr(hits, q.relevant))
            track_rows[kind] = {name: _mean(v) for name, v in rows.items()} | {"queries": len(qs)}
        named_us = []
        for q in entities + topic + spear:
            qn = normalize(q.text)
            t = time.perf_counter()
            planner.named(qn)
            named_us.append((time.perf_counter() - t) * 1e6)
    finally:
        rt.close()
    return {
        "data_dir": str(data_dir), "n_per_kind": n_per_kind, "quick": quick,
        "entity_set": {"overall": overall | {"queries": len(entities)}, "by_kind": entity_rows},
        "track_sets": track_rows,
        "named_us": {"p50": float(np.percentile(named_us, 50)), "p99": float(np.percentile(named_us, 99))},
        "search_ms": {"p50": float(np.percentile(ms, 50)), "p99": float(np.percentile(ms, 99))},
    }


def markdown(p: dict[str, object]) -> str:
    ent: dict = p["entity_set"]  # type: ignore[assignment]
    lines = ["# Artists and albums as results", "",
             f"data dir `{p['data_dir']}`, {p['n_per_kind']} artists and {p['n_per_kind']} albums sampled; "
             "/search in process, default types (track, artist, album)", "",
             "## Entity queries: the entity first", "",
             "| kind | queries | entity first | MRR@10 (all hits) | found@10 |", "|---|---|---|---|---|"]
    for k, r in [*ent["by_kind"].items(), ("**all**", ent["overall"])]:
        lines.append(f"| {k} | {r['queries']} | {r['first']:.3f} | {r['mrr@10']:.3f} | {r['found@10']:.3f} |")
    lines += ["", "## Track queries: entity hits and the track figures", "",
              "| set | queries | entity@1 | entity@10 | tracks, ignoring entity hits | tracks, absolute positions |",
              "|---|---|---|---|---|---|"]
    for k, r in p["track_sets"].items():  # type: ignore[union-attr]
        metric = "ndcg@10" if k == "topic" else "mrr@10"
        lines.append(f"| {k} | {r['queries']} | {r['entity@1']:.3f} | {r['entity@10']:.3f} | "
                     f"{metric} {r[metric + ' tracks']:.3f} | {metric} {r[metric + ' absolute']:.3f} |")
    nu, sm = p["named_us"], p["search_ms"]
    lines += ["", f"Name matching per query: p50 {nu['p50']:.0f} µs, p99 {nu['p99']:.0f} µs "  # type: ignore[index]
              f"(whole search in process: p50 {sm['p50']:.1f} ms, p99 {sm['p99']:.1f} ms)."]  # type: ignore[index]
    return "\n".join(lines) + "\n"


def main() -> None:
    from services.config import Settings

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=Settings().data_dir, help="a built data dir (default ./var)")
    ap.add_argument("--n-per-kind", type=int, help="artists and albums (and spearfish recordings); default 300, "
                                                  "quick 60")
    ap.add_argument("--quick", action="store_true", help="60 per kind, a quarter of the topic queries")
    ap.add_argument("--out", default="entities", help="result file stem in bench/results/")
    args = ap.parse_args()
    payload = run(args.data_dir.resolve(), args.n_per_kind or (60 if args.quick else 300), args.quick)
    payload = {"command": "python -m bench.bench_entities " + " ".join(sys.argv[1:]), **payload}
    out = write_result(args.out, payload)
    md = markdown(payload)
    (RESULTS / f"{args.out}.md").write_text(md)
    print(md)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
