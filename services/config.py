"""Settings for every process (API, worker, CLI), read from LTRR_* environment variables.

REDIS_URL and OPENSEARCH_URL are also read without the prefix because that is how
docker-compose and most hosting platforms hand them over.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, Field, ValidationError, field_validator

ROOT = Path(__file__).resolve().parents[1]
RETRIEVERS = ("lexical", "dense", "xr", "q2e")


class RewardConfig(BaseModel):
    """How feedback becomes the bandit's reward for one search."""

    weights: dict[str, float] = Field(
        default_factory=lambda: {"play": 1.0, "like": 0.9, "add_to_favorites": 0.9, "click": 0.7, "skip": -0.3})
    aggregation: Literal["first", "max", "sum"] = "first"
    join_window_s: float = Field(default=1800.0, gt=0, le=7 * 86400)
    clip: tuple[float, float] = (-1.0, 1.0)


class Settings(BaseModel):
    data_dir: Path = ROOT / "var"
    catalog: Path = ROOT / "data" / "tracks.csv.gz"
    backend: Literal["embedded", "opensearch"] = "embedded"
    redis_url: str | None = None  # unset: the service starts its own redis-server (embedded default)
    opensearch_url: str | None = None
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=1, le=65535)
    # API worker processes. Python runs one search at a time per process (the GIL), so throughput
    # scales with processes, each holding its own copy of the indexes and models.
    workers: int = Field(default=1, ge=1, le=64)
    log_level: str = "INFO"
    log_json: bool = False

    retrievers: tuple[str, ...] = RETRIEVERS
    max_arms: int = Field(default=2, ge=1, le=len(RETRIEVERS))
    budgets: tuple[int, ...] = (100,)
    include_all_action: bool = True
    exploration: Literal["epsilon", "squarecb"] = "squarecb"  # met the oracle/fixed-subset targets in bench_learning
    epsilon: float = Field(default=0.1, ge=0.0, le=1.0)
    latency_lambda: float = Field(default=0.05, ge=0.0)
    shadow: bool = False  # run every retriever, serve the default policy, learn full-information
    default_arms: tuple[str, ...] = ("lexical", "dense")  # the fixed policy served in shadow mode / fallback
    retriever_timeout_ms: float = Field(default=80.0, gt=0)
    rerank_depth: int = Field(default=200, ge=10, le=2000)  # union size the ranker scores
    # Query encoder precision for the embedded dense arm. int8 measured 2.5x faster than fp32 with
    # the same quality (SciFact nDCG@10 0.647 vs 0.645, dev playlists 0.078 vs 0.078; bench_dense);
    # it is used only if its export passed verification, else fp32.
    query_encoder: Literal["int8", "fp32"] = "int8"

    reward: RewardConfig = Field(default_factory=RewardConfig)
    decision_ttl_s: int = Field(default=3600, ge=60)  # how long a search can receive feedback
    embedded_worker: bool = True  # run the feedback worker inside the API process
    checkpoint_every: int = Field(default=500, ge=1)
    checkpoint_seconds: float = Field(default=30.0, gt=0)
    reload_check_s: float = Field(default=2.0, gt=0)

    api_keys: tuple[str, ...] = ()
    search_requires_key: bool = False
    cors_origins: tuple[str, ...] = ()
    max_body_bytes: int = 1_000_000
    max_feedback_batch: int = 1000

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
            if raw is None and name in ("redis_url", "opensearch_url"):
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
