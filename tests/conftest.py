"""Session fixtures: a private real Redis, the shipped catalog, and scratch dirs.

Indexes and models built from the real catalog are session-scoped so the suite builds each once.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import redis

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from services.catalog import Catalog
from services.redis_server import RedisServer

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
CATALOG_PATH = ROOT / "data" / "tracks.csv.gz"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> RedisServer:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture()
def redis_client(redis_server: RedisServer) -> redis.Redis:
    """A clean database per test on the session's server."""
    client = redis.Redis.from_url(redis_server.url)
    client.flushdb()
    yield client
    client.close()


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    return Catalog.load(CATALOG_PATH)


@pytest.fixture(scope="session")
def documents(catalog: Catalog):
    return catalog.documents()


# --- a fully built service (indexes + cold-start models) on the real catalog ----------------------

COLDSTART_QUERIES = int(os.environ.get("LTRR_TEST_COLDSTART_QUERIES", "1500"))


@pytest.fixture(scope="session")
def emb_cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One embedding cache per session, shared by the dense tests and the built service, so the
    catalog is encoded once. LTRR_TEST_EMB_CACHE reuses encodings across local runs; CI encodes
    afresh."""
    env = os.environ.get("LTRR_TEST_EMB_CACHE")
    return Path(env) if env else tmp_path_factory.mktemp("emb-cache")


@pytest.fixture(scope="session")
def built_settings(tmp_path_factory: pytest.TempPathFactory, redis_server: RedisServer, emb_cache_dir: Path):
    """Settings for a data dir holding every index and cold-start model, built once per session
    with the real catalog, the real MiniLM model, real PECOS, VW and LightGBM."""
    from services.config import Settings
    from services.offline.build import build_indexes, train_coldstart
    from services.serving.runtime import Runtime
    from services.serving.suggest_service import build_model, save_model, suggest_store

    data_dir = tmp_path_factory.mktemp("ltrr-data")
    (data_dir / "embeddings").symlink_to(emb_cache_dir.resolve())
    settings = Settings(data_dir=data_dir, catalog=CATALOG_PATH, redis_url=redis_server.url,
                        embedded_worker=False, decision_ttl_s=3600, reload_check_s=0.2)
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    catalog = Catalog.load(CATALOG_PATH)
    build_indexes(settings, catalog, client, only=("lexical", "dense", "structured", "q2e", "xr"), progress=False)
    # Suggest on the 1,500 most popular tracks: the full catalog's model would add minutes here, and
    # the API, fuzz and page tests need a real one behind /suggest.
    small = Catalog(sorted(catalog.tracks, key=lambda t: -t.popularity)[:1500])
    save_model(build_model(small), suggest_store(settings))
    rt = Runtime(settings, start_worker=False)
    try:
        train_coldstart(settings, rt, n_queries=COLDSTART_QUERIES, progress=False)
    finally:
        rt.close()
    # Later tests flush Redis; keep the seeded Q2E state to restore it.
    snapshot = {k: client.dump(k) for k in client.scan_iter(match="ltrr:*")}
    client.close()
    # Tests that run the bandit learner publish checkpoints into this data dir; keep the built ones.
    _copy_learned_state(settings.models_dir, _built_models(settings))
    return settings, snapshot


def _built_models(settings) -> Path:
    return settings.data_dir.parent / f"{settings.data_dir.name}-built-models"


def _copy_learned_state(src: Path, dst: Path) -> None:
    """What the learners write into models/: the bandit's versions and the gate's decision log."""
    dst.mkdir(exist_ok=True)
    shutil.rmtree(dst / "bandit", ignore_errors=True)
    shutil.copytree(src / "bandit", dst / "bandit")
    shutil.copy2(src / "decisions.jsonl", dst / "decisions.jsonl")


def restore_built_state(built_settings, redis_server: RedisServer) -> redis.Redis:
    """Redis and the bandit's model versions as the build left them (other tests' learners add
    versions, which a test starting from 'just built' must not see as fallbacks)."""
    settings, snapshot = built_settings
    _copy_learned_state(_built_models(settings), settings.models_dir)
    client = redis.Redis.from_url(redis_server.url)
    client.flushall()
    pipe = client.pipeline(transaction=False)
    for key, value in snapshot.items():
        pipe.restore(key, 0, value, replace=True)
    pipe.execute()
    return client


@pytest.fixture()
def fresh_redis_state(built_settings, redis_server: RedisServer) -> redis.Redis:
    """The session Redis reset to 'just built': seeded Q2E and the cold-start bandit, no traffic."""
    client = restore_built_state(built_settings, redis_server)
    yield client
    client.close()


@pytest.fixture(scope="module")
def keyed_service(built_settings, redis_server: RedisServer):
    """One runtime + HTTP client per test module (a runtime takes seconds to load), with API keys
    configured. For tests that do not depend on Redis state left by other modules."""
    from fastapi.testclient import TestClient

    from services.serving.api import create_app
    from services.serving.runtime import Runtime

    settings, _ = built_settings
    restore_built_state(built_settings, redis_server).close()
    rt = Runtime(settings.model_copy(update={"api_keys": ("k-123", "k-456")}), start_worker=False)
    yield rt, TestClient(create_app(rt), raise_server_exceptions=False)
    rt.close()
