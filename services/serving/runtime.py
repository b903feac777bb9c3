"""Assembles a running service from settings and artifacts on disk: Redis (own or external),
catalog, retrievers, models with hot reload, pipeline, feedback ingest and (embedded) worker.

Why one module of this size (~500 lines): it is the one place that knows the order things must
load and close in (Redis before the stores, models before the pipeline, the writer's flush
before Redis closes), and each loader here is a few lines of glue around a library's own
loader; split apart, that order would be spread over several files."""

from __future__ import annotations

import atexit
import gc
import hashlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import redis

from bandit.policy import FEATURE_LAYOUT_VERSION, VW_VERSION, CostModel, VWConfig, VWPolicy
from ranker import model as ranker_model
from ranker.features import FeatureRegistry
from retrievers.base import Retriever
from services import metrics
from services.activity import ActivityRecorder
from services.artifacts import ArtifactError, ArtifactStore
from services.catalog import Catalog
from services.config import Settings
from services.decision_store import DecisionStore
from services.jsonl_log import JsonlWriter
from services.keys import Keys
from services.learning.trainer import TrainerProcess
from services.models import ModelHolder, Reloader, StoreSource
from services.redis_server import EmbeddedRedis
from services.serving.entities import EntityIndex
from services.serving.feedback import FeedbackIngest
from services.serving.pipeline import Components, SearchPipeline
from services.serving.suggest_service import SuggestService, suggest_holder

if TYPE_CHECKING:  # imported lazily at run time: each pulls a heavy library (faiss, PECOS)
    from retrievers.dense import DenseRetriever
    from retrievers.q2e import RedisQ2EStore
    from retrievers.structured import StructuredRetriever

log = logging.getLogger("ltrr.runtime")


def connect_redis(settings: Settings) -> tuple[redis.Redis, EmbeddedRedis | None]:
    """The external Redis at REDIS_URL, or (embedded default) the one redis-server of the data
    directory: started and supervised here when no other process runs it (then stopped when
    this process exits), otherwise joined (`ltrr search` next to `ltrr serve`), never a second
    server on the same AOF. Raises RuntimeError when the directory is locked by a process whose
    Redis does not answer."""
    server = None
    url = settings.redis_url
    if not url:
        server = EmbeddedRedis(settings.redis_dir).open()
        atexit.register(server.stop)
        url = server.url
    client = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=1.0,
                                  health_check_interval=10)
    return client, server


def vw_config(settings: Settings, arm_ms: Mapping[str, float] | None = None) -> VWConfig:
    """The VW configuration of `settings`; in "arm_ms" mode priced by `arm_ms`, the table a bandit
    version carries (its manifest's config, measured by the cold start)."""
    cost = CostModel(latency_lambda=settings.latency_lambda)
    if settings.latency_mode == "arm_ms":
        cost = cost.with_arm_ms(arm_ms or {})
    return VWConfig(exploration=settings.exploration, epsilon=settings.epsilon, cost=cost)


def arm_ms_of(config: Mapping[str, object] | None) -> dict[str, float]:
    """The per-arm price table in a stored VWConfig.to_dict() (empty when it has none)."""
    cost = (config or {}).get("cost")
    table = cost.get("arm_ms", ()) if isinstance(cost, Mapping) else ()
    return {str(a): float(ms) for a, ms in table}  # type: ignore[union-attr]


class BanditStore:
    """Versioned bandit models: files in the artifact store under models/bandit/ (model.vw + a
    manifest whose meta holds last_update_id and n_learned), and the PROMOTED model's bytes,
    version, sha256 and last_update_id in the Redis hash `keys.bandit_model`, so replicas without
    a shared volume can load it. Every byte string is checked against its SHA-256 before VW sees
    it: VW accepts truncated models. Implements services.models.ModelSource."""

    kind = "bandit"
    MODEL_FILE = "model.vw"

    def __init__(self, settings: Settings, client: redis.Redis | None, keys: Keys):
        self.settings = settings
        self.redis = client
        self.keys = keys
        self.store = ArtifactStore(settings.models_dir / "bandit", "bandit")
        self.dir = self.store.root
        self.dir.mkdir(parents=True, exist_ok=True)

    def fresh(self) -> VWPolicy:
        return VWPolicy(vw_config(self.settings), version="v0000")

    # --- writing ---------------------------------------------------------------------------------

    def publish(self, policy: VWPolicy, last_update_id: str = "0-0", *, promote: bool = True,
                report: Mapping[str, object] | None = None, meta: Mapping[str, object] | None = None) -> str:
        """Stores `policy` as a new version and returns it; `policy.version` becomes it.
        promote=True (the default until the promotion gate exists) also makes it serve."""
        data = policy.serialize()
        info = {"last_update_id": last_update_id, "n_learned": policy.n_learned, "vw_version": VW_VERSION,
                "feature_layout": FEATURE_LAYOUT_VERSION, "config": policy.config.to_dict(), **(meta or {})}

        def write(directory: Path) -> None:
            (directory / self.MODEL_FILE).write_bytes(data)

        version = self.store.publish(write, info)
        policy.version = version
        log.info("published bandit model %s (after update %s)", version, last_update_id)
        if promote:
            self.promote(version, report or {"reason": "learner checkpoint (no promotion gate)"})
        return version

    def prune(self) -> None:
        """Drops checkpoints that can never serve or be resumed from (see ArtifactStore.prune)."""
        self.store.prune()

    def promote(self, version: str, report: Mapping[str, object]) -> None:
        """Makes a stored version the serving one: SERVING.json, decisions.jsonl and Redis."""
        self.store.promote(version, report)
        self._to_redis(version)

    def refuse(self, version: str, report: Mapping[str, object]) -> None:
        """Records that `version` must never serve; if Redis serves it, Redis gets the store's
        serving version instead (or loses the model, so replicas keep what they have)."""
        self.store.refuse(version, report)
        if self.redis is not None and self._redis_field("version") == version:
            replacement = self.store.serving()
            if replacement is not None and replacement != version:
                self._to_redis(replacement)
            else:
                self.redis.delete(self.keys.bandit_model)

    def _to_redis(self, version: str) -> None:
        if self.redis is None:
            return
        manifest = self.store.verify(version)
        data = (self.store.path(version) / self.MODEL_FILE).read_bytes()
        sha = hashlib.sha256(data).hexdigest()
        if sha != manifest["files"][self.MODEL_FILE]:
            raise ArtifactError(f"bandit {version}: {self.MODEL_FILE} changed while promoting")
        meta = manifest.get("meta", {})
        self.redis.hset(self.keys.bandit_model, mapping={
            "version": version, "model": data, "sha256": sha,
            "last_update_id": str(meta.get("last_update_id", "0-0")),
            "n_learned": str(meta.get("n_learned", 0)),
            # the per-arm prices the learner continues with (replicas may have no volume)
            "arm_ms": json.dumps(arm_ms_of(meta.get("config")))})

    # --- reading (ModelSource) -------------------------------------------------------------------

    def _redis_field(self, name: str) -> str | None:
        if self.redis is None:
            return None
        try:
            raw = self.redis.hget(self.keys.bandit_model, name)
        except (redis.RedisError, OSError):
            return None
        return raw.decode() if raw is not None else None

    def serving(self) -> str | None:
        """The promoted version: Redis first (replicas may have no volume), else the store's."""
        return self._redis_field("version") or self.store.serving()

    def fallbacks(self) -> list[str]:
        return list(dict.fromkeys(v for v in (self._redis_field("version"), *self.store.fallbacks()) if v))

    def fingerprint(self, version: str) -> str:
        redis_part = self._redis_field("sha256") if self._redis_field("version") == version else None
        return f"{redis_part}|{self.store.fingerprint(version)}"

    def _load_with_meta(self, version: str) -> tuple[VWPolicy, dict[str, object]]:
        """A verified policy and its meta (last_update_id, n_learned): from Redis when it holds
        this version with a matching sha256, else from the store's verified files."""
        problems = []
        if self.redis is not None:
            try:
                got = self.redis.hmget(self.keys.bandit_model, ["version", "model", "sha256", "last_update_id",
                                                            "n_learned", "arm_ms"])
            except (redis.RedisError, OSError) as exc:
                got = [None] * 6
                problems.append(f"redis: {exc!r}")
            if got[0] is not None and got[0].decode() == version:
                data, sha = got[1] or b"", got[2].decode() if got[2] is not None else None
                if sha is None:
                    problems.append("redis copy has no sha256 (cannot verify)")
                elif hashlib.sha256(data).hexdigest() != sha:
                    problems.append(f"redis copy is corrupt ({len(data)} bytes, sha256 mismatch)")
                else:
                    meta = {"last_update_id": got[3].decode() if got[3] else "0-0",
                            "n_learned": int(got[4]) if got[4] else 0}
                    arm_ms = json.loads(got[5]) if got[5] else {}
                    return self._policy(data, version, "redis", arm_ms), meta
        try:
            manifest = self.store.verify(version)
        except ArtifactError as exc:
            raise ArtifactError("; ".join([*problems, str(exc)])) from exc
        data = (self.store.path(version) / self.MODEL_FILE).read_bytes()
        if hashlib.sha256(data).hexdigest() != manifest["files"].get(self.MODEL_FILE):
            raise ArtifactError(f"bandit {version}: {self.MODEL_FILE} changed after verification")
        meta = dict(manifest.get("meta", {}))
        return self._policy(data, version, str(self.store.path(version)), arm_ms_of(meta.get("config"))), meta

    def _policy(self, data: bytes, version: str, where: str, arm_ms: Mapping[str, float]) -> VWPolicy:
        try:
            return VWPolicy.from_bytes(data, vw_config(self.settings, arm_ms), version=version)
        except (ValueError, RuntimeError) as exc:
            raise ArtifactError(f"bandit {version} from {where}: VW cannot load it: {exc}") from exc

    def load(self, version: str) -> VWPolicy:
        policy, meta = self._load_with_meta(version)
        policy.n_learned = int(meta.get("n_learned", 0) or 0)  # type: ignore[call-overload]
        return policy

    def load_for_learning(self) -> tuple[VWPolicy, str]:
        """The policy to continue learning from and the last bandit:updates id it includes: the
        newest VERIFIED version, promoted or not, falling back to older valid ones; a fresh policy
        (replaying the whole updates stream) only when no version is valid."""
        candidates = set(self.store.versions())
        in_redis = self._redis_field("version")
        if in_redis:
            candidates.add(in_redis)
        for version in sorted(candidates, key=lambda v: int(v[1:]), reverse=True):
            try:
                policy, meta = self._load_with_meta(version)
            except (ArtifactError, OSError) as exc:
                metrics.ERRORS.labels(kind="model_load_bandit").inc()
                log.error("bandit learner: skipping unusable version %s: %s", version, exc)
                continue
            policy.n_learned = int(meta.get("n_learned", 0) or 0)  # type: ignore[call-overload]
            return policy, str(meta.get("last_update_id", "0-0"))
        if candidates:
            log.error("bandit learner: NO valid bandit version among %s; learning starts from a FRESH policy "
                      "and replays bandit:updates from the beginning", sorted(candidates))
        return self.fresh(), "0-0"


def freeze_loaded_heap() -> None:
    """Exempts everything loaded so far (catalog, track table, vocabularies, models: ~470k objects
    at 28k tracks) from garbage collection, for a serving process once its Runtime is built.
    Why: they live as long as the process, yet every full collection walked them with the GIL
    held, 350-570 ms per collection measured on a loaded machine, a stall for every search in
    flight. Serving processes only: frozen objects are never freed, which a CLI job or a test
    that builds several runtimes would leak."""
    gc.collect()  # what is already garbage is freed, not frozen
    gc.freeze()


def ranker_holder(settings: Settings) -> ModelHolder[ranker_model.LTRModel]:
    """The ranker this process serves, from models/ranker through the artifact store."""
    registry = FeatureRegistry(settings.retrievers)

    def load(path: Path, version: str) -> ranker_model.LTRModel:
        # Refuses a model whose feature names differ from this registry (train = serve).
        return ranker_model.load(path, registry, version=version, compiled=settings.compile_ranker)

    return ModelHolder("ranker", StoreSource(ArtifactStore(settings.models_dir / "ranker", "ranker"), load))


class _NoVersions:
    """The source of a model kind this process does not use (XR not in settings.retrievers)."""

    def __init__(self, kind: str):
        self.kind = kind

    def serving(self) -> str | None:
        return None

    def fallbacks(self) -> list[str]:
        return []

    def fingerprint(self, version: str) -> str:
        return ""

    def load(self, version: str) -> Retriever:
        raise ArtifactError(f"{self.kind} is not enabled in this process")


def xr_holder(settings: Settings, on_change: Callable[[Retriever], None] | None = None) -> ModelHolder[Retriever]:
    """The XR-Linear model this process serves (none when "xr" is not among settings.retrievers).
    The store verifies every file's SHA-256 before PECOS reads it: libpecos aborts the process
    (uncatchable) on a truncated model file."""
    from retrievers.xr_linear import XRLinearRetriever

    def load(path: Path, version: str) -> Retriever:
        return XRLinearRetriever.load(path, version=version)

    source: StoreSource[Retriever] | _NoVersions = (
        StoreSource(ArtifactStore(settings.models_dir / "xr", "xr"), load) if "xr" in settings.retrievers
        else _NoVersions("xr"))
    return ModelHolder("xr", source, on_change=on_change)


@dataclass
class LoadedRetrievers:
    by_name: dict[str, Retriever]  # the bandit's arms
    dense: DenseRetriever | None  # also the ranker's query/track cosines
    q2e_store: RedisQ2EStore | None  # also the context's and the memory's reads
    structured: StructuredRetriever | None  # query understanding: the ranker's intent features


def load_structured(settings: Settings, catalog: Catalog) -> StructuredRetriever:
    """Query understanding over the catalog's columns: the saved index when `ltrr index build`
    wrote one for this catalog, else built here (about a second for 28k tracks)."""
    from retrievers.structured import StructuredRetriever

    path = settings.index_dir / "structured"
    if path.exists():
        try:
            loaded = StructuredRetriever.load(path)
            if loaded.ids == [t.track_id for t in catalog.tracks]:
                return loaded
            log.warning("%s was built for another catalog; rebuilding it in memory", path)
        except (OSError, ValueError, KeyError) as exc:
            log.warning("cannot load %s (%r); rebuilding it in memory", path, exc)
    built = StructuredRetriever()
    built.build(catalog.documents())
    return built


def load_retrievers(settings: Settings, client: redis.Redis | None, catalog: Catalog, *,
                    xr: ModelHolder[Retriever] | None = None) -> LoadedRetrievers:
    """The retrievers by name, plus the parts ranking reads beside them. A missing index is
    skipped with a warning, so a partial build still serves. XR comes from `xr` (a holder the
    caller keeps to hot-swap it) or from a holder made here."""
    from retrievers.dense import DenseRetriever
    from retrievers.lexical import TantivyRetriever
    from retrievers.q2e import Q2ERetriever, RedisQ2EStore

    out: dict[str, Retriever] = {}
    dense: DenseRetriever | None = None
    q2e_store: RedisQ2EStore | None = None
    idx = settings.index_dir
    wanted = set(settings.retrievers)
    if settings.backend == "opensearch":
        # Lexical and dense live in the cluster; dense cosine features need local vectors, so the
        # ranker sees them as missing (cold-start training on this backend sees the same).
        from retrievers.dense import DenseConfig
        from retrievers.encoder import torch_text_encoder
        from retrievers.opensearch_dense import OpenSearchDenseRetriever
        from retrievers.opensearch_lexical import OpenSearchLexicalRetriever

        target = idx / "opensearch"
        if "lexical" in wanted and (target / "opensearch_lexical.json").exists():
            out["lexical"] = OpenSearchLexicalRetriever.load(target)
        if "dense" in wanted and (target / "opensearch_dense.json").exists():
            out["dense"] = OpenSearchDenseRetriever.load(target, encode=torch_text_encoder(),
                                                         model_name=DenseConfig().model_id)
        wanted -= {"lexical", "dense"}
    if "lexical" in wanted and (idx / "lexical").exists():
        out["lexical"] = TantivyRetriever.load(idx / "lexical")
    if "dense" in wanted and (idx / "dense").exists():
        dense = DenseRetriever.load(idx / "dense", config_overrides={"onnx_precision": settings.query_encoder})
        out["dense"] = dense
    if "xr" in wanted:
        model = (xr if xr is not None else xr_holder(settings)).current()
        if model is not None:
            out["xr"] = model
    if "q2e" in wanted and client is not None:
        q2e_store = RedisQ2EStore(client, prefix=f"{Keys().prefix}:q2e")
        out["q2e"] = Q2ERetriever(q2e_store)
    structured = load_structured(settings, catalog)
    if "structured" in wanted:
        out["structured"] = structured
    missing = wanted - set(out)
    if missing:
        log.warning("serving without %s: build them with `ltrr index build` / `ltrr train`", sorted(missing))
    return LoadedRetrievers(out, dense, q2e_store, structured)


def single_threaded_kernels() -> None:
    """One thread per numeric kernel while serving: concurrency comes from concurrent requests,
    and OpenMP teams spin-waiting for a busy second core made one faiss Flat search over 28k
    vectors take 48 ms instead of 8 ms on a loaded 2-core machine. The same holds for OpenBLAS
    (numpy's, scipy's and faiss's copies): after each matrix-vector product of the dense cosine
    features its second thread spins in sched_yield, which py-spy/gdb showed burning 5-8 ms of CPU
    per search under load, as much as the search itself."""
    import faiss
    from threadpoolctl import threadpool_limits

    faiss.omp_set_num_threads(1)
    threadpool_limits(limits=1)  # every BLAS and OpenMP runtime loaded so far, for the process's life
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass  # torch is optional when serving (the dense arm runs ONNX): then there is nothing to limit


class Runtime:
    def __init__(self, settings: Settings, *, start_worker: bool | None = None):
        single_threaded_kernels()
        self.settings = settings
        self.keys = Keys()
        t = time.perf_counter()
        self.redis, self.redis_server = connect_redis(settings)
        self.catalog = Catalog.load(settings.catalog)
        # Every model kind comes from a holder: verified, promoted version, falling back to the
        # previous promoted ones when the newest is broken (never a process abort in PECOS).
        self.xr = xr_holder(settings)
        loaded = load_retrievers(settings, self.redis, self.catalog, xr=self.xr)
        retrievers, self.dense, self.q2e_store = loaded.by_name, loaded.dense, loaded.q2e_store
        self.bandit_store = BanditStore(settings, self.redis, self.keys)
        self.policy: ModelHolder[VWPolicy] = ModelHolder("bandit", self.bandit_store, default=self.bandit_store.fresh)
        version = self.policy.version
        self.ranker = ranker_holder(settings)
        self.decision_log = JsonlWriter(settings.logs_dir, "decisions")
        # Artists and albums as results: derived from the catalog, so built here, not stored.
        self.entities = EntityIndex.from_catalog(self.catalog)
        parts = Components(catalog=self.catalog, retrievers=retrievers, policy=self.policy, ranker=self.ranker,
                           q2e_store=self.q2e_store, dense=self.dense, intent=loaded.structured,
                           entities=self.entities)
        self.activity = ActivityRecorder(self.redis, self.keys)
        self.pipeline = SearchPipeline(settings, parts, self.redis, self.keys, self.decision_log,
                                       activity=self.activity)
        self.xr.on_change = self._swap_xr
        self.suggest_model = suggest_holder(settings)
        self.pipeline.warm_up()
        single_threaded_kernels()  # again: loading the models brought in more BLAS/OpenMP copies (scipy's)
        self.decisions = DecisionStore.from_settings(self.redis, self.keys, settings)
        self.ingest = FeedbackIngest(self.redis, self.keys, self.decisions, recording_of=self.pipeline.recording_of)
        self.worker = None
        self.trainer: TrainerProcess | None = None
        self._start_worker = settings.embedded_worker if start_worker is None else start_worker
        self.reloader: Reloader | None = None
        log.info("runtime ready in %.1fs: %d tracks, retrievers %s, bandit %s, ranker %s",
                 time.perf_counter() - t, len(self.catalog), sorted(retrievers), version, self.ranker.version)

    def holders(self) -> list[ModelHolder]:
        return [self.policy, self.ranker, self.xr, self.suggest_model]

    @property
    def redis_url(self) -> str:
        """Where this runtime's Redis answers (the embedded server's, or REDIS_URL)."""
        if self.redis_server is not None:
            return self.redis_server.url
        return str(self.settings.redis_url)

    @property
    def suggest(self) -> SuggestService | None:
        """The serving suggest model (GET /suggest), None until one is built."""
        return self.suggest_model.current()

    def model_status(self) -> dict[str, dict[str, object]]:
        """Per kind: version served, promoted version, versions refused here, fallback (for /health)."""
        return {h.kind: h.status() for h in self.holders()}

    def _swap_xr(self, model: Retriever) -> None:
        # Retrievers are read per search from this dict, so one assignment swaps the model. Its
        # cached lists go with the old model (a new version is a new key anyway).
        self.pipeline.parts.retrievers["xr"] = model
        self.pipeline.retrieval_cache.invalidate("xr")

    def xr_version(self) -> str | None:
        return self.xr.version

    def start_background(self) -> None:
        if self._start_worker and self.worker is None:
            from services.learning.worker import FeedbackWorker

            self.worker = FeedbackWorker(self.settings, self.redis, self.keys, q2e_store=self.q2e_store,
                                         catalog=self.catalog, bandit_store=self.bandit_store,
                                         activity=self.activity).start()
            # Retraining lives beside the learner (a lease picks one process across replicas).
            self.trainer = TrainerProcess(self.settings, self.redis_url).start()
        if self.reloader is None:
            self.reloader = Reloader(self.holders(), self.settings.reload_check_s).start()

    def redis_ok(self) -> bool:
        try:
            return bool(self.redis.ping())
        except (redis.RedisError, OSError):
            return False

    def trainer_alive(self) -> bool:
        return self.trainer is not None and self.trainer.alive()

    def worker_alive(self) -> bool:
        return self.worker is not None and self.worker.alive()

    def close(self) -> None:
        """Stops everything this runtime started, in dependency order (the worker's last
        checkpoint still needs Redis). Each step runs even when an earlier one fails (Redis
        down at shutdown used to abort here and skip the rest); calling it twice is harmless."""
        steps: list[tuple[str, Any]] = [
            ("model reloader", self.reloader.stop if self.reloader else None),
            ("model trainer", self.trainer.stop if self.trainer else None),
            ("feedback worker", self.worker.stop if self.worker else None),
            ("search pipeline", self.pipeline.close),
            ("decision log", self.decision_log.close),
            ("redis connections", self.redis.close),
            ("redis-server", self.redis_server.stop if self.redis_server else None),
        ]
        self.reloader = self.worker = self.trainer = None
        for name, stop in steps:
            if stop is None:
                continue
            try:
                stop()
            except Exception as exc:
                log.warning("shutdown: stopping the %s failed: %s", name, exc)
