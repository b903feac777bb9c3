"""Dev relevance: topic nDCG@10 (real playlist names), spearfish MRR@10 (catalog-built entity
queries, overall and by kind) and recall@100, per retriever and for the full /search pipeline in
process, on a built data dir. The sets are defined in bench/relevance_sets.py.

    python -m bench.bench_relevance [--data-dir var] [--quick] [--fresh-lexical] [--label before]
        -> bench/results/relevance.json and bench/results/relevance.md

The data dir is used read-mostly but searches are logged into it and its Redis is started from its
redis/ directory: run it on a copy when the data dir matters (`cp -a var /tmp/var-copy`).

`--fresh-lexical` rebuilds the lexical index from the catalog with the current code (seconds) and
serves it in the pipeline too, so a lexical change can be measured on an older data dir. The
cold-start ranker was trained on the old index's scores, so /search then mixes the two.

`structured` is retrievers.structured.StructuredRetriever (query understanding: genre / decade
filters, mood -> audio-feature closeness, popularity) of the data dir. The pipeline reads it for
the ranker's intent features; it is an arm only when LTRR_RETRIEVERS names it.

`search` is /search as served by default (one result per recording, `collapse=true`, every `types`):
its tracks in their order, ignoring artist and album hits (`record.served`; a query naming an artist
gets it first, which takes one of the page's positions: bench_entities measures those hits);
`search-uncollapsed` is /search with `collapse=false` (every release of a recording may show).
`search-fixed:all` and `search-fixed:xr` are /search with the bandit's choice replaced by one
fixed action (every retriever; XR-Linear alone): the ranker's part apart from the bandit's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from bench.common import RESULTS, ndcg_at_k, recall_at_k, write_result
from bench.relevance_sets import SPEARFISH_KINDS, RelevanceQuery, spearfish_set, topic_set

if TYPE_CHECKING:
    from services.serving.runtime import Runtime

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

K_EVAL, K_RECALL = 10, 100
# The product targets (BRIEF.md, "Quality and speed").
TARGETS = {"topic_ndcg@10": 0.18, "topic_vs_best_single": 1.5, "spearfish_mrr@10": 0.88,
           "partial_title_mrr@10": 0.70}

Ranker = Callable[[str], list[str]]  # query -> ranked track ids (at least K_RECALL deep where possible)


def mrr_at_k(ranked: Sequence[str], relevant: dict[str, int], k: int = K_EVAL) -> float:
    for i, d in enumerate(ranked[:k]):
        if relevant.get(d, 0) > 0:
            return 1.0 / (i + 1)
    return 0.0


def hit_at_k(ranked: Sequence[str], relevant: dict[str, int], k: int = K_RECALL) -> float:
    return float(any(relevant.get(d, 0) > 0 for d in ranked[:k]))


def evaluate(rank: Ranker, topic: list[RelevanceQuery], spear: list[RelevanceQuery]) -> dict[str, object]:
    """Topic: nDCG@10 and recall@100 (share of the playlist found). Spearfish: MRR@10 and
    recall@100 (the recording found at all), overall and by kind; plus ms per query."""
    t = time.perf_counter()
    nd, rc = [], []
    for q in topic:
        ids = rank(q.text)
        nd.append(ndcg_at_k(ids, q.relevant, K_EVAL))
        rc.append(recall_at_k(ids, q.relevant, K_RECALL))
    by_kind_mrr: dict[str, list[float]] = defaultdict(list)
    by_kind_hit: dict[str, list[float]] = defaultdict(list)
    for q in spear:
        ids = rank(q.text)
        by_kind_mrr[q.kind].append(mrr_at_k(ids, q.relevant))
        by_kind_hit[q.kind].append(hit_at_k(ids, q.relevant))
    n = len(topic) + len(spear)
    all_mrr = [v for vs in by_kind_mrr.values() for v in vs]
    all_hit = [v for vs in by_kind_hit.values() for v in vs]
    return {
        "topic": {"ndcg@10": _mean(nd), "recall@100": _mean(rc), "queries": len(topic)},
        "spearfish": {"mrr@10": _mean(all_mrr), "recall@100": _mean(all_hit), "queries": len(spear),
                      "mrr@10_by_kind": {k: _mean(by_kind_mrr[k]) for k in SPEARFISH_KINDS if k in by_kind_mrr},
                      "recall@100_by_kind": {k: _mean(by_kind_hit[k]) for k in SPEARFISH_KINDS
                                             if k in by_kind_hit}},
        "ms_per_query": (time.perf_counter() - t) * 1000.0 / max(n, 1),
    }


def _mean(xs: Sequence[float]) -> float:
    return float(np.mean(xs)) if len(xs) else 0.0


def retriever_ranker(retriever: object) -> Ranker:
    def rank(q: str) -> list[str]:
        return [c.track_id for c in retriever.retrieve(q, K_RECALL)]  # type: ignore[attr-defined]
    return rank


def fixed_policy_search(rt: Runtime, arms: Sequence[str] | None, search: Ranker) -> Ranker:
    from bandit.policy import FixedPolicy

    def ranked(q: str) -> list[str]:
        learned, version = rt.policy.current(), rt.policy.version
        rt.policy.set(FixedPolicy(arms), "fixed")
        try:
            return search(q)
        finally:
            rt.policy.set(learned, version)

    return ranked


def run(data_dir: Path, *, quick: bool = False, fresh_lexical: bool = False, label: str = "",
        n_per_kind: int | None = None, systems: Sequence[str] | None = None) -> dict[str, object]:
    from retrievers.lexical import TantivyRetriever
    from services.config import Settings
    from services.serving.runtime import Runtime

    if not (data_dir / "indexes").exists():
        raise SystemExit(f"{data_dir} is not a built data dir (no indexes/): run `ltrr index build` and "
                         "`ltrr train coldstart` with LTRR_DATA_DIR pointing at it, or pass --data-dir")
    settings = Settings(data_dir=data_dir, redis_url=None, embedded_worker=False)
    rt = Runtime(settings, start_worker=False)
    try:
        catalog = rt.catalog
        topic = topic_set()
        spear = spearfish_set(catalog, n_per_kind or (60 if quick else 300))
        if quick:
            topic = topic[::4]
        retrievers = rt.pipeline.parts.retrievers
        if fresh_lexical:
            fresh = TantivyRetriever()
            fresh.build(catalog.documents())
            retrievers["lexical"] = fresh
        # analytics=False: an evaluation must not log searches into the data dir it measures (the
        # trainer would read them as unclicked traffic) nor leave decisions waiting for feedback.
        def search_uncollapsed(q: str) -> list[str]:
            return list(rt.pipeline.search(q, K_RECALL, analytics=False, collapse_versions=False).record.served)

        def search(q: str) -> list[str]:
            return list(rt.pipeline.search(q, K_RECALL, analytics=False).record.served)

        structured = rt.pipeline.parts.intent  # query understanding, loaded with the data dir
        singles_by_name = {**retrievers, "structured": structured}
        rankers: dict[str, Ranker] = {name: retriever_ranker(r) for name, r in singles_by_name.items()}
        rankers["search"] = search
        rankers["search-uncollapsed"] = search_uncollapsed
        # The same /search with the bandit's choice replaced by one fixed action: tells what the
        # ranker does with every retriever's candidates, and with XR's alone, apart from what the
        # bandit chooses.
        for label, arms in (("all", None), ("xr", ("xr",))):
            rankers[f"search-fixed:{label}"] = fixed_policy_search(rt, arms, search)
        chosen = list(systems) if systems else list(rankers)
        results: dict[str, object] = {}
        for name in chosen:
            if name not in rankers:
                raise SystemExit(f"unknown system {name!r}; have {sorted(rankers)}")
            print(f"evaluating {name} ...", flush=True)
            results[name] = evaluate(rankers[name], topic, spear)
    finally:
        rt.close()
    singles = [v["topic"]["ndcg@10"] for k, v in results.items() if k in singles_by_name]
    payload: dict[str, object] = {
        "label": label, "data_dir": str(data_dir), "quick": quick, "fresh_lexical": fresh_lexical,
        "sets": {"topic": len(topic), "spearfish": len(spear),
                 "spearfish_by_kind": {k: sum(q.kind == k for q in spear) for k in SPEARFISH_KINDS}},
        "targets": TARGETS, "best_single_topic_ndcg@10": max(singles) if singles else None,
        "systems": results,
    }
    return payload


def markdown(payload: dict[str, object]) -> str:
    systems: dict[str, dict] = payload["systems"]  # type: ignore[assignment]
    kinds = [k for k in SPEARFISH_KINDS if any(k in s["spearfish"]["mrr@10_by_kind"] for s in systems.values())]
    head = ["system", "topic nDCG@10", "topic R@100", "spearfish MRR@10", "spearfish R@100",
            *[f"{k} MRR" for k in kinds], "ms/query"]
    lines = [f"# Dev relevance{' — ' + payload['label'] if payload.get('label') else ''}", "",
             f"data dir `{payload['data_dir']}`; sets: {payload['sets']}; quick={payload['quick']}, "
             f"fresh_lexical={payload['fresh_lexical']}", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, s in systems.items():
        sp = s["spearfish"]
        row = [name, f"{s['topic']['ndcg@10']:.3f}", f"{s['topic']['recall@100']:.3f}", f"{sp['mrr@10']:.3f}",
               f"{sp['recall@100']:.3f}", *[f"{sp['mrr@10_by_kind'].get(k, float('nan')):.3f}" for k in kinds],
               f"{s['ms_per_query']:.1f}"]
        lines.append("| " + " | ".join(row) + " |")
    best = payload.get("best_single_topic_ndcg@10")
    if best:
        lines += ["", f"Best single retriever, topic nDCG@10: {best:.3f}. Targets: {json.dumps(TARGETS)}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    from services.config import Settings

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data-dir", type=Path, default=Settings().data_dir, help="a built data dir (default ./var)")
    ap.add_argument("--quick", action="store_true", help="a quarter of the topic queries, 60 recordings per kind")
    ap.add_argument("--n-per-kind", type=int, help="spearfish recordings sampled (default 300, quick 60)")
    ap.add_argument("--fresh-lexical", action="store_true", help="rebuild the lexical index with the current code")
    ap.add_argument("--systems", help="comma list (default: every loaded retriever, search, search-uncollapsed)")
    ap.add_argument("--label", default="", help="a name for this run, kept in the result")
    ap.add_argument("--out", default="relevance", help="result file stem in bench/results/")
    args = ap.parse_args()
    payload = run(args.data_dir.resolve(), quick=args.quick, fresh_lexical=args.fresh_lexical, label=args.label,
                  n_per_kind=args.n_per_kind, systems=args.systems.split(",") if args.systems else None)
    payload = {"command": "python -m bench.bench_relevance " + " ".join(sys.argv[1:]), **payload}
    out = write_result(args.out, payload)
    md = markdown(payload)
    (RESULTS / f"{args.out}.md").write_text(md)
    print(md)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
