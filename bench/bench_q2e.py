"""Q2E memory index benchmark: seeding cost, Redis memory, lookup latency, update throughput,
and the cold-start quality on the dev playlist queries.

Runs against a private redis-server (services.redis_server) on the shipped catalog.
`python -m bench.bench_q2e [--quick]` writes bench/results/q2e.json.
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import redis

from bench.common import ROOT, load_playlists, ndcg_at_k, recall_at_k, time_each, write_result
from retrievers.pseudo_queries import generate_all
from retrievers.q2e import Q2EConfig, Q2EEvent, Q2ERetriever, RedisQ2EStore
from retrievers.text import normalize
from services.catalog import Catalog
from services.redis_server import RedisServer

EVENT_TYPES = ["click", "play", "like", "skip", "click", "play"]


def run(quick: bool = False) -> dict:
    docs = Catalog.load(ROOT / "data" / "tracks.csv.gz").documents()
    t = time.perf_counter()
    pseudo = generate_all(docs)
    generate_s = time.perf_counter() - t
    queries = sorted({p.query for p in pseudo})
    rng = random.Random(11)
    n_lookups = 500 if quick else 5000
    n_events = 5_000 if quick else 50_000

    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp)).start()
        try:
            client = redis.Redis.from_url(server.url)
            base_mem = int(client.info("memory")["used_memory"])
            store = RedisQ2EStore(client, Q2EConfig(order_insensitive=True), prefix="bench")
            retriever = Q2ERetriever(store)
            t = time.perf_counter()
            cpu = time.process_time()
            n_pairs = retriever.build(docs, force=True)
            seed_s = time.perf_counter() - t
            seed_client_cpu_s = time.process_time() - cpu
            info = client.info("memory")
            used_mb = (int(info["used_memory"]) - base_mem) / 2**20

            hits = rng.sample(queries, min(n_lookups, len(queries)))
            misses = [f"zz unseen query {i} {rng.randrange(10**9)}" for i in range(n_lookups)]
            lookup_hit = time_each(lambda q: retriever.retrieve(q, 100), hits)
            lookup_miss = time_each(lambda q: retriever.retrieve(q, 100), misses)
            lookup_hit_k10 = time_each(lambda q: retriever.retrieve(q, 10), hits)
            stats_lat = time_each(retriever.stats, hits)
            broad = [q for q in ("pop", "edm", "rap", "rock", "latin", "r and b") if q in set(queries)]
            lookup_broad = time_each(lambda q: retriever.retrieve(q, 100), broad * (50 if quick else 200), warmup=5)
            t = time.perf_counter()
            retriever.retrieve_batch(hits[:100], 100)
            batch100_ms = (time.perf_counter() - t) * 1000

            # Updates: realistic mix of events on (seeded query, one of its tracks), batches of 100.
            by_query: dict[str, list[str]] = {}
            for p in pseudo:
                by_query.setdefault(p.query, []).append(p.doc_id)
            now = time.time()
            events = []
            for i in range(n_events):
                q = rng.choice(hits)
                events.append(Q2EEvent(f"ev-{i}", q, rng.choice(by_query[q]), rng.choice(EVENT_TYPES),
                                       now - rng.random() * 86400))
            t = time.perf_counter()
            applied = sum(store.apply_events(events[i:i + 100]) for i in range(0, len(events), 100))
            update_s = time.perf_counter() - t
            t = time.perf_counter()
            dup = sum(store.apply_events(events[i:i + 100]) for i in range(0, len(events), 100))
            dup_s = time.perf_counter() - t
            lookup_hit_warm = time_each(lambda q: retriever.retrieve(q, 100), hits)

            # Cold-start quality on the dev playlist names (topic queries: Q2E only knows the
            # ones that happen to match a genre/mood/artist pseudo-query).
            pl_queries, qrels = load_playlists()
            cold = Q2ERetriever(RedisQ2EStore(client, Q2EConfig(order_insensitive=True), prefix="cold"))
            cold.build(docs, force=True)
            qids = sorted(qrels)
            results = cold.retrieve_batch([pl_queries[q] for q in qids], 100)
            recall = [recall_at_k([c.track_id for c in r], qrels[q], 100) for q, r in zip(qids, results, strict=True)]
            ndcg = [ndcg_at_k([c.track_id for c in r], qrels[q], 10) for q, r in zip(qids, results, strict=True)]
            hit_rate = sum(1 for r in results if r) / len(results)
            exact_hits = sum(1 for q in qids if normalize(pl_queries[q]) in by_query) / len(qids)
            client.close()
        finally:
            server.stop()

    return {
        "catalog_tracks": len(docs),
        "pseudo_pairs": n_pairs,
        "pseudo_queries": len(queries),
        "generate_pseudo_queries_s": generate_s,
        "seed_s": seed_s,
        "seed_client_cpu_s": seed_client_cpu_s,
        "seed_pairs_per_s": n_pairs / seed_s if seed_s else None,
        "redis_used_memory_mb": used_mb,
        "lookup_k100_hit": lookup_hit,
        "lookup_k100_miss": lookup_miss,
        "lookup_k10_hit": lookup_hit_k10,
        "lookup_k100_broad_query": lookup_broad,
        "lookup_k100_hit_after_updates": lookup_hit_warm,
        "stats": stats_lat,
        "lookup_batch_100_queries_ms": batch100_ms,
        "updates": {"events": n_events, "applied": applied, "batch": 100, "seconds": update_s,
                    "events_per_s": n_events / update_s},
        "redelivery": {"events": n_events, "applied": dup, "seconds": dup_s, "events_per_s": n_events / dup_s},
        "playlists_dev": {"queries": len(qids), "recall@100": sum(recall) / len(recall),
                          "ndcg@10": sum(ndcg) / len(ndcg), "answered": hit_rate, "exact_key_hits": exact_hits},
        "quick": quick,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--quick", action="store_true", help="fewer lookups and events")
    args = ap.parse_args()
    result = run(quick=args.quick)
    out = write_result("q2e", result)
    print(json.dumps(result, indent=2, default=float))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
