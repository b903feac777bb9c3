"""Session fixtures: a private real Redis, the shipped catalog, and scratch dirs.

Indexes and models built from the real catalog are session-scoped so the suite builds each once.
"""

from __future__ import annotations

import os
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
