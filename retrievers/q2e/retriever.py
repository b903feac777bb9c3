"""`Q2ERetriever`: the retriever over a Q2E store (seeding it from pseudo-queries, looking it up,
passing feedback on, saving and loading), and `seed_fingerprint`, which tells whether a store
already holds the seeding a catalog would produce.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Self

import redis

from retrievers.base import Candidate, Document, ranked
from retrievers.pseudo_queries import TEMPLATE_BASE, generate_all
from retrievers.q2e.config import FORMAT_VERSION, Q2EConfig
from retrievers.q2e.events import Q2EEvent
from retrievers.q2e.memory_store import MemoryQ2EStore
from retrievers.q2e.redis_store import RedisQ2EStore
from retrievers.q2e.stats import Q2EStats
from retrievers.q2e.store import Q2EStore


def seed_fingerprint(docs: Sequence[Document], config: Q2EConfig) -> str:
    """Identifies what seeding would write: the documents' ids, fields, popularity and mood
    features, the template scores and the mood switch. Unchanged -> no need to reseed."""
    h = hashlib.sha1(usedforsecurity=False)
    h.update(json.dumps([TEMPLATE_BASE, config.moods, FORMAT_VERSION], sort_keys=True).encode())
    for d in docs:
        h.update(json.dumps([d.doc_id, dict(d.fields), d.popularity, dict(d.extra)], sort_keys=True,
                            default=str).encode())
    return h.hexdigest()


class Q2ERetriever:
    """Retriever over a Q2E store. build() seeds predicted pairs; feedback goes through
    `apply_events` / `impressions` (delegated to the store) and shows up in the next lookup.

    Persistence: for a Redis store the data lives in Redis (durable through its AOF), so
    save(path) writes only a small JSON (config, prefix, Redis URL, seed version) and load(path)
    reconnects; pass `client=` to load() when the URL saved is not the one to use (the embedded
    Redis picks a free port per start). For the in-memory store save/load carry the data too.
    """

    name = "q2e"
    MANIFEST = "q2e.json"

    def __init__(self, store: Q2EStore | None = None, config: Q2EConfig | None = None):
        if store is None:
            store = MemoryQ2EStore(config)
        elif config is not None and config != store.config:
            raise ValueError("pass the config to the store, not twice with different values")
        self.store = store
        self.config = store.config

    def build(self, docs: Sequence[Document], *, progress: bool = False, force: bool = False) -> int:
        """Seeds the store from metadata-generated pseudo-queries. Skips (returns 0) when the
        store already holds this exact seeding, so a restarted service does not reseed."""
        version = seed_fingerprint(docs, self.config)
        if not force and self.store.seed_version() == version:
            return 0
        pqs = generate_all(docs, moods=self.config.moods)
        return self.store.seed(((p.query, p.doc_id, p.score) for p in pqs), version=version, progress=progress,
                               total=len(pqs))

    def retrieve(self, query: str, k: int) -> list[Candidate]:
        return ranked(self.store.lookup(query, k))

    def retrieve_batch(self, queries: Sequence[str], k: int) -> list[list[Candidate]]:
        return [ranked(r) for r in self.store.lookup_many(queries, k)]

    def stats(self, query: str) -> Q2EStats:
        return self.store.stats(query)

    def scores(self, query: str, track_ids: Sequence[str]) -> dict[str, float]:
        return self.store.scores(query, track_ids)

    def apply_events(self, events: Sequence[Q2EEvent]) -> int:
        return self.store.apply_events(events)

    def impressions(self, query: str, track_ids: Sequence[str], search_id: str, *, ts: float | None = None) -> bool:
        return self.store.impressions(query, track_ids, search_id, ts=ts)

    def save(self, path: Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        manifest: dict[str, object] = {"format": FORMAT_VERSION, "config": self.config.to_dict(),
                                       "seed_version": self.store.seed_version()}
        if isinstance(self.store, RedisQ2EStore):
            kw = self.store.client.connection_pool.connection_kwargs
            manifest.update(backend="redis", prefix=self.store.prefix,
                            redis={"host": kw.get("host", "localhost"), "port": kw.get("port", 6379),
                                   "db": kw.get("db", 0)})
        elif isinstance(self.store, MemoryQ2EStore):
            manifest["backend"] = "memory"
            (path / "q2e_memory.json").write_text(json.dumps(self.store.dump()))
        else:
            raise TypeError(f"don't know how to save a {type(self.store).__name__}")
        (path / self.MANIFEST).write_text(json.dumps(manifest, indent=2))

    @classmethod
    def load(cls, path: Path, *, client: redis.Redis | None = None) -> Self:
        path = Path(path)
        manifest = json.loads((path / cls.MANIFEST).read_text())
        if manifest.get("format") != FORMAT_VERSION:
            raise ValueError(f"{path}: Q2E format {manifest.get('format')} != {FORMAT_VERSION}")
        config = Q2EConfig.from_dict(manifest["config"])
        if manifest["backend"] == "redis":
            if client is None:
                r = manifest["redis"]
                client = redis.Redis(host=r["host"], port=int(r["port"]), db=int(r["db"]))
            store: Q2EStore = RedisQ2EStore(client, config, prefix=manifest["prefix"])
        else:
            store = MemoryQ2EStore.restore(json.loads((path / "q2e_memory.json").read_text()), config)
        return cls(store)
