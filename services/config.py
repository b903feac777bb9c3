"""Settings for every process (API, worker, CLI), read from LTRR_* environment variables.

REDIS_URL is also read without the prefix because that is how docker-compose and most hosting
platforms hand it over. The OpenSearch connection (OPENSEARCH_URL and its credentials) is read by
retrievers.opensearch_common.OpenSearchSettings, the only code that uses it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError, field_validator

from logged.rewards import RewardConfig

ROOT = Path(__file__).resolve().parents[1]
RETRIEVERS = ("lexical", "dense", "xr", "q2e")


def default_workers() -> int:
    """The cores this process may use (its CPU affinity, which containers and taskset narrow),
    else os.cpu_count(); at most 64 (the setting's bound)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(64, cores))


class Settings(BaseModel):
    data_dir: Path = ROOT / "var"
    catalog: Path = ROOT / "data" / "tracks.csv.gz"
    backend: Literal["embedded", "opensearch"] = "embedded"
    redis_url: str | None = None  # unset: the service starts its own redis-server (embedded default)
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    # API worker processes, by default one per core this process may run on. Python runs one
    # search at a time per process (the GIL), so throughput scales with processes up to the core
    # count; each holds its own copy of the catalog and models (BENCHMARKS.md: memory per worker),
    # while the tantivy and faiss index files are mapped, not copied, and shared through the page cache.
    workers: int = Field(default_factory=lambda: default_workers(), ge=1, le=64)
    log_level: str = "INFO"
    log_json: bool = False

    retrievers: tuple[str, ...] = RETRIEVERS
    max_arms: int = Field(default=2, ge=1, le=len(RETRIEVERS))
    budgets: tuple[int, ...] = (100,)
    include_all_action: bool = True
    exploration: Literal["epsilon", "squarecb"] = "squarecb"  # met the oracle/fixed-subset targets in bench_learning
    epsilon: float = Field(default=0.1, ge=0.0, le=1.0)
    latency_lambda: float = Field(default=0.05, ge=0.0)
    # How an action's cost is counted (bandit.policy.CostModel): "arms" counts arms; "arm_ms"
    # prices each arm by the milliseconds the cold start measured for it, retrieval plus ranking
    # the candidates it adds (services.offline.coldstart.arm_prices; the mean arm costs
    # latency_lambda, as every arm does in "arms" mode), so the initial policy drops dense where
    # lexical or XR-Linear find the target too. Not the default: on the dev sets (bench_relevance,
    # BENCHMARKS.md) it raised topic nDCG@10 0.092 -> 0.098 but lowered spearfish MRR@10
    # 0.871 -> 0.867 (titles without dense's candidates and cosine feature), and relevance must not
    # drop for speed. Takes effect with the next `ltrr train coldstart`; a model trained without a
    # price table is priced by arm count.
    latency_mode: Literal["arms", "arm_ms"] = "arms"
    shadow: bool = False  # run every retriever, serve the default policy, learn full-information
    default_arms: tuple[str, ...] = ("lexical", "dense")  # the fixed policy served in shadow mode / fallback
    # Each retriever's deadline is retriever_deadline_factor x its measured p95, at least the floor,
    # at most retriever_timeout_ms (services.serving.arm_budgets has the whole policy). 3x / 20 ms
    # dropped 0.29% of arm runs on a busy 2-core machine where 4x / 40 ms dropped none
    # (BENCHMARKS.md, "Retriever deadlines"); a hanging arm is still cut at 40 ms, not 80.
    retriever_timeout_ms: float = Field(default=80.0, gt=0)
    retriever_deadline_factor: float = Field(default=4.0, gt=0)
    retriever_deadline_floor_ms: float = Field(default=40.0, ge=0)
    # Admission control for /search (services.serving.admission): this many run at once per
    # process, the rest wait; one that starts with shed_queue or more still waiting runs only the
    # cheapest good retriever; one that arrives to search_queue waiting gets 503 + Retry-After.
    max_active_searches: int = Field(default=4, ge=1, le=256)
    search_queue: int = Field(default=256, ge=0, le=100_000)
    shed_queue: int = Field(default=32, ge=0)  # above search_queue: never shed
    rerank_depth: int = Field(default=200, ge=10, le=2000)  # union size the ranker scores
    # Serve the ranker compiled to machine code (ranker.compiled, lleaves): ~1 s per model load,
    # then ~5x faster scoring (bench_ranker); off = LightGBM's own predictor.
    compile_ranker: bool = True
    # Per-arm retrieval cache (services.serving.retrieval_cache): this many (arm, version, query,
    # k) candidate lists per process, ~9 kB each at k=100; 0 = off. Repeated queries (Zipfian
    # traffic) then skip lexical, dense and XR-Linear.
    retrieval_cache_entries: int = Field(default=4096, ge=0, le=1_000_000)
    # Query encoder precision for the embedded dense arm. int8 measured 2.5x faster than fp32 with
    # the same quality (SciFact nDCG@10 0.647 vs 0.645, dev playlists 0.078 vs 0.078; bench_dense);
    # it is used only if its export passed verification, else fp32.
    query_encoder: Literal["int8", "fp32"] = "int8"

    reward: RewardConfig = Field(default_factory=RewardConfig)
    # The click memory (Q2E) reaches the user whatever the bandit chose: a track with at least
    # `memory_min_positive` decayed positive events for this exact query (1.5: two plays within
    # about two weeks, given the 30-day half-life), more positives than skips and a posterior of
    # at least `memory_min_posterior` is served in the top `memory_slots`, best posterior first;
    # skips and decay take it out again. 0 slots = off.
    memory_slots: int = Field(default=3, ge=0, le=10)
    memory_min_positive: float = Field(default=1.5, gt=0)
    memory_min_posterior: float = Field(default=0.15, ge=0, le=1)
    # A track played once for a query (more positives than skips, not yet sure enough to pin) that
    # the ranking leaves off the page gets the page's last slot, so the next users can confirm it
    # (and it gets pinned) or skip it (and it goes). Without it, one user's find at rank 15 could
    # drop out of sight whenever the bandit explores other retrievers, and never be confirmed.
    memory_trial_slots: int = Field(default=1, ge=0, le=3)
    # Ranker training sees negatives: besides the served list, features of this many unserved
    # union candidates (sampled uniformly) are logged with each search.
    log_unserved: int = Field(default=20, ge=0, le=200)
    # Automatic retraining in the learner process; every new model passes the gate (services.learning.gate).
    retrain_ranker_every: int = Field(default=150, ge=0)  # labelled searches; 0 = never automatically
    retrain_xr_every: int = Field(default=300, ge=0)  # positive (query, track) pairs; 0 = never
    retrain_check_s: float = Field(default=5.0, gt=0)
    gate_tolerance: float = Field(default=0.005, ge=0)  # "no worse than serving" allows this much noise
    position_eta: float | None = Field(default=0.5, ge=0, le=2)  # IPW position debiasing of click labels
    # When none of the last this-many rewarded searches had any event at all, the feedback path is
    # presumed down (clients not sending, a broken integration) and the bandit pauses: learning
    # "every action earns 0" would leave only the latency cost and walk it to the cheapest arm
    # (bench_clicks' no-feedback row). 0 = never pause.
    bandit_silence_window: int = Field(default=200, ge=0)
    learn_bandit: bool = True  # ablation switches (the click-replay benchmark turns each off in turn)
    learn_q2e: bool = True
    decision_ttl_s: int = Field(default=3600, ge=60)  # the feedback window: how long a search can receive feedback
    # A search's full decision (features and all, ~10-30 kB) stays in Redis only until it is
    # rewarded, at most reward wait + this grace (a worker outage shorter than it loses nothing);
    # the feedback window keeps only the ~0.5 kB of what was served (services.decision_store).
    decision_grace_s: int = Field(default=600, ge=0)
    # Pages: a search keeps its ranked list (ids, scores, retrievers; 2.4 kB measured) this long so later
    # pages (GET /search/{id}?offset=) come from the same candidate union, up to `page_depth`
    # results. Users page within minutes; the feedback window on what they saw stays decision_ttl_s.
    page_depth: int = Field(default=50, ge=1, le=100)
    page_ttl_s: int = Field(default=600, ge=0)
    # Rewarded searches waiting for the bandit learner (each a full joined record). The learner
    # trims what it has checkpointed; this cap bounds Redis if no learner runs at all.
    bandit_updates_maxlen: int = Field(default=100_000, ge=1000)
    embedded_worker: bool = True  # run the feedback worker inside the API process
    checkpoint_every: int = Field(default=500, ge=1)
    checkpoint_seconds: float = Field(default=30.0, gt=0)
    reload_check_s: float = Field(default=2.0, gt=0)

    api_keys: tuple[str, ...] = ()
    search_requires_key: bool = False
    cors_origins: tuple[str, ...] = ()
    max_body_bytes: int = 1_000_000

    @field_validator("retrievers", "default_arms")
    @classmethod
    def _known(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        unknown = set(v) - set(RETRIEVERS)
        if unknown:
            raise ValueError(f"unknown retriever(s) {sorted(unknown)}; known: {list(RETRIEVERS)}")
        return v

    # --- paths -----------------------------------------------------------------------------
    @property
    def index_dir(self) -> Path:
        return self.data_dir / "indexes"

    @property
    def models_dir(self) -> Path:
        return self.data_dir / "models"

    @property
    def logs_dir(self) -> Path:
        return self.data_dir / "logs"

    @property
    def redis_dir(self) -> Path:
        return self.data_dir / "redis"

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        values: dict[str, object] = {}
        env = os.environ
        for name, field in cls.model_fields.items():
            raw = env.get(f"LTRR_{name.upper()}")
            if raw is None and name == "redis_url":
                raw = env.get(name.upper())
            if raw is None:
                continue
            values[name] = _parse_env(raw, field.annotation)
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls.model_validate(values)
        except ValidationError as e:
            raise SystemExit(f"invalid ltrr settings:\n{e}") from None


def _parse_env(raw: str, annotation: object) -> object:
    text = str(annotation)
    if "tuple" in text or "dict" in text or "RewardConfig" in text:
        raw = raw.strip()
        if raw.startswith(("[", "{")):
            return json.loads(raw)
        return tuple(p.strip() for p in raw.split(",") if p.strip())
    return raw
