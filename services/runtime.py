"""Assembles a running service from settings and artifacts on disk: Redis (own or external),
catalog, retrievers, models with hot reload, pipeline, feedback ingest and (embedded) worker."""

from __future__ import annotations

import atexit
import json
import logging
import time
from pathlib import Path
from typing import Any

import redis

from bandit.policy import CostModel, VWConfig, VWPolicy
from ranker import model as ranker_model
from ranker.features import FeatureRegistry
from retrievers.base import Retriever
from services.catalog import Catalog
from services.config import Settings
from services.feedback import FeedbackIngest
from services.jsonl_log import JsonlWriter
from services.keys import Keys
from services.models import ModelHolder, Reloader, next_version, versions_in
from services.pipeline import Components, SearchPipeline
from services.redis_server import RedisServer

log = logging.getLogger("ltrr.runtime")


def connect_redis(settings: Settings) -> tuple[redis.Redis, RedisServer | None]:
    """The external Redis at REDIS_URL, or (embedded default) a private redis-server with AOF in
    the data directory, stopped when this process exits."""
    server = None
    url = settings.redis_url
    if not url:
        server = RedisServer(settings.redis_dir).start()
        atexit.register(server.stop)
        url = server.url
    client = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=1.0,
                                  health_check_interval=10)
    return client, server


def vw_config(settings: Settings) -> VWConfig:
    return VWConfig(exploration=settings.exploration, epsilon=settings.epsilon,
                    cost=CostModel(latency_lambda=settings.latency_lambda))


class BanditStore:
    """Versioned bandit models: files under models/bandit/ and the current one in Redis, so every
    replica (sharing a volume or not) can load it. Publishing = new version everywhere."""

    def __init__(self, settings: Settings, client: redis.Redis | None, keys: Keys):
        self.s = settings
        self.r = client
        self.keys = keys
        self.dir = settings.models_dir / "bandit"
        self.dir.mkdir(parents=True, exist_ok=True)

    def probe(self) -> str | None:
        if self.r is not None:
            try:
                v = self.r.hget(self.keys.bandit_model, "version")
                if v is not None:
                    return v.decode()
            except (redis.RedisError, OSError):
                pass
        found = versions_in(self.dir, "bandit")
        return found[-1] if found else None

    def load(self, version: str) -> VWPolicy:
        data = None
        if self.r is not None:
            try:
                got = self.r.hmget(self.keys.bandit_model, ["version", "model"])
                if got[0] is not None and got[0].decode() == version:
                    data = got[1]
            except (redis.RedisError, OSError):
                data = None
        if data is None:
            data = (self.dir / f"bandit-{version}.vw").read_bytes()
        return VWPolicy.from_bytes(data, vw_config(self.s), version=version)

    def fresh(self) -> VWPolicy:
        return VWPolicy(vw_config(self.s), version="v0000")

    def current_or_fresh(self) -> tuple[VWPolicy, str]:
        v = self.probe()
        if v is not None:
            try:
                return self.load(v), v
            except Exception as exc:
                log.error("bandit model %s unusable (%s); starting from a fresh policy", v, exc)
        return self.fresh(), "v0000"

    def load_for_learning(self) -> tuple[VWPolicy, str]:
        """The policy to continue learning from and the last bandit:updates id it includes."""
        policy, _ = self.current_or_fresh()
        last = "0-0"
        if self.r is not None:
            raw = self.r.hget(self.keys.bandit_model, "last_update_id")
            if raw is not None:
                last = raw.decode()
        else:
            meta = self.dir / f"bandit-{policy.version}.json"
            if meta.exists():
                last = json.loads(meta.read_text()).get("last_update_id", "0-0")
        return policy, last

    def publish(self, policy: VWPolicy, last_update_id: str = "0-0", **meta: Any) -> str:
        version = next_version(self.dir, "bandit")
        data = policy.serialize()
        tmp = self.dir / f"bandit-{version}.vw.tmp"
        tmp.write_bytes(data)
        tmp.rename(self.dir / f"bandit-{version}.vw")
        info = {"version": version, "created": time.time(), "last_update_id": last_update_id,
                "n_learned": getattr(policy, "n_learned", None), **meta}
        (self.dir / f"bandit-{version}.json").write_text(json.dumps(info, indent=2))
        policy.version = version
        if self.r is not None:
            self.r.hset(self.keys.bandit_model, mapping={"version": version, "model": data,
                                                         "last_update_id": last_update_id})
        log.info("published bandit model %s (after update %s)", version, last_update_id)
        return version


def ranker_holder(settings: Settings) -> ModelHolder:
    directory = settings.models_dir / "ranker"
    registry = FeatureRegistry(settings.retrievers)

    def probe() -> str | None:
        v = ranker_model.latest_version(directory)
        return v.name if v is not None else None

    def load(version: str) -> ranker_model.LTRModel:
        # Refuses a model whose feature names differ from this registry (train = serve).
        return ranker_model.load(directory / version, registry)

    return ModelHolder("ranker", probe, load)


def load_retrievers(settings: Settings, client: redis.Redis | None) -> tuple[dict[str, Retriever], Any, Any]:
    """Returns (retrievers by name, dense retriever, q2e store). A missing index is skipped with
    a warning, so a partial build still serves."""
    from retrievers.dense import DenseRetriever
    from retrievers.lexical import TantivyRetriever
    from retrievers.q2e import Q2ERetriever, RedisQ2EStore
    from retrievers.xr_linear import XRLinearRetriever
    from retrievers.xr_linear import latest_version as xr_latest

    out: dict[str, Retriever] = {}
    dense = q2e_store = None
    idx = settings.index_dir
    wanted = set(settings.retrievers)
    if settings.backend == "opensearch":
        # Lexical and dense live in the cluster; dense cosine features need local vectors, so the
        # ranker sees them as missing (cold-start training on this backend sees the same).
        from retrievers.dense import DenseConfig
        from retrievers.opensearch_dense import OpenSearchDenseRetriever
        from retrievers.opensearch_lexical import OpenSearchLexicalRetriever
        from services.build import opensearch_encoder

        target = idx / "opensearch"
        if "lexical" in wanted and (target / "opensearch_lexical.json").exists():
            out["lexical"] = OpenSearchLexicalRetriever.load(target)
        if "dense" in wanted and (target / "opensearch_dense.json").exists():
            out["dense"] = OpenSearchDenseRetriever.load(target, encode=opensearch_encoder(),
                                                         model_name=DenseConfig().model_id)
        wanted -= {"lexical", "dense"}
    if "lexical" in wanted and (idx / "lexical").exists():
        out["lexical"] = TantivyRetriever.load(idx / "lexical")
    if "dense" in wanted and (idx / "dense").exists():
        dense = DenseRetriever.load(idx / "dense", config_overrides={"onnx_precision": settings.query_encoder})
        out["dense"] = dense
    if "xr" in wanted:
        latest = xr_latest(settings.models_dir / "xr")
        if latest is not None:
            out["xr"] = XRLinearRetriever.load(Path(latest))
    if "q2e" in wanted and client is not None:
        q2e_store = RedisQ2EStore(client, prefix=f"{Keys().prefix}:q2e")
        out["q2e"] = Q2ERetriever(q2e_store)
    missing = wanted - set(out)
    if missing:
        log.warning("serving without %s: build them with `ltrr index build` / `ltrr train`", sorted(missing))
    return out, dense, q2e_store


def xr_holder(settings: Settings, current: Any, on_change: Any) -> ModelHolder:
    from retrievers.xr_linear import XRLinearRetriever
    from retrievers.xr_linear import latest_version as xr_latest

    root = settings.models_dir / "xr"

    def probe() -> str | None:
        latest = xr_latest(root)
        return latest.name if latest is not None else None

    version = f"v{current.version:04d}" if current is not None and isinstance(current.version, int) else None
    return ModelHolder("xr", probe, lambda v: XRLinearRetriever.load(root / v), initial=(current, version),
                       on_change=on_change)


def single_threaded_kernels() -> None:
    """One thread per numeric kernel while serving: concurrency comes from concurrent requests,
    and OpenMP teams spin-waiting for a busy second core made one faiss Flat search over 28k
    vectors take 48 ms instead of 8 ms on a loaded 2-core machine."""
    import faiss

    faiss.omp_set_num_threads(1)
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass


class Runtime:
    def __init__(self, settings: Settings, *, start_worker: bool | None = None):
        single_threaded_kernels()
        self.settings = settings
        self.keys = Keys()
        t = time.perf_counter()
        self.redis, self.redis_server = connect_redis(settings)
        self.catalog = Catalog.load(settings.catalog)
        retrievers, self.dense, self.q2e_store = load_retrievers(settings, self.redis)
        self.bandit_store = BanditStore(settings, self.redis, self.keys)
        policy, version = self.bandit_store.current_or_fresh()
        self.policy = ModelHolder("bandit", self.bandit_store.probe, self.bandit_store.load,
                                  initial=(policy, version))
        self.ranker = ranker_holder(settings)
        self.decision_log = JsonlWriter(settings.logs_dir, "decisions")
        parts = Components(catalog=self.catalog, retrievers=retrievers, policy=self.policy, ranker=self.ranker,
                           q2e_store=self.q2e_store, dense=self.dense)
        self.pipeline = SearchPipeline(settings, parts, self.redis, self.keys, self.decision_log)
        self.xr = xr_holder(settings, retrievers.get("xr"), self._swap_xr)
        self.pipeline.warm_up()
        self.ingest = FeedbackIngest(self.redis, self.keys, decision_ttl_s=settings.decision_ttl_s)
        self.worker = None
        self._start_worker = settings.embedded_worker if start_worker is None else start_worker
        self.reloader: Reloader | None = None
        log.info("runtime ready in %.1fs: %d tracks, retrievers %s, bandit %s, ranker %s",
                 time.perf_counter() - t, len(self.catalog), sorted(retrievers), version, self.ranker.version)

    def holders(self) -> list[ModelHolder]:
        return [self.policy, self.ranker, self.xr]

    def _swap_xr(self, model: Any) -> None:
        # Retrievers are read per search from this dict, so one assignment swaps the model.
        self.pipeline.p.retrievers["xr"] = model

    def xr_version(self) -> str | None:
        return self.xr.version

    def start_background(self) -> None:
        if self._start_worker and self.worker is None:
            from services.worker import FeedbackWorker

            self.worker = FeedbackWorker(self.settings, self.redis, self.keys, q2e_store=self.q2e_store,
                                         catalog=self.catalog, policy_factory=self.bandit_store).start()
        if self.reloader is None:
            self.reloader = Reloader(self.holders(), self.settings.reload_check_s).start()

    def redis_ok(self) -> bool:
        try:
            return bool(self.redis.ping())
        except (redis.RedisError, OSError):
            return False

    def worker_alive(self) -> bool:
        return self.worker is not None and self.worker.alive()

    def close(self) -> None:
        if self.reloader:
            self.reloader.stop()
        if self.worker:
            self.worker.stop()
        self.pipeline.close()
        self.decision_log.close()
        if self.redis_server:
            self.redis_server.stop()
