"""docker-compose.yml and Dockerfile: validated by `docker compose config` when the compose plugin
exists, and always checked structurally (service set, health checks, no fixed api port, no
secret written into the file)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = ROOT / "docker-compose.yml"
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|API_KEY|CREDENTIAL", re.IGNORECASE)
# A secret-named variable may only be handed through from the environment / .env.
INTERPOLATED = re.compile(r"^\$\{[A-Z0-9_]+(:?[-?][^}]*)?\}$")


def _compose_available() -> bool:
    if not shutil.which("docker"):
        return False
    probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True, timeout=30)
    return probe.returncode == 0


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


@pytest.mark.skipif(not _compose_available(), reason="docker compose plugin not installed")
def test_docker_compose_config_validates() -> None:
    env = {**os.environ, "LTRR_API_KEYS": "test-key-only-for-config"}
    done = subprocess.run(["docker", "compose", "-f", str(COMPOSE), "config", "-q"], capture_output=True,
                          text=True, env=env, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr


def test_service_set(compose: dict[str, Any]) -> None:
    assert set(compose["services"]) == {"opensearch", "redis", "indexer", "api", "worker", "lb"}
    assert set(compose["volumes"]) >= {"opensearch-data", "redis-data", "ltrr-data"}


def test_api_is_scalable_behind_the_load_balancer(compose: dict[str, Any]) -> None:
    services = compose["services"]
    api = services["api"]
    assert "ports" not in api and "container_name" not in api  # both would break --scale api=N
    assert api["command"] == ["ltrr", "serve", "--host", "0.0.0.0", "--port", "8000"]
    assert "/health" in " ".join(api["healthcheck"]["test"])
    assert services["lb"]["ports"] == ["${LTRR_PORT:-8000}:8000"]
    conf = compose["configs"]["lb-conf"]["content"]
    assert "server api:8000 resolve" in conf and "resolver 127.0.0.11" in conf


def test_dependencies_and_health_checks(compose: dict[str, Any]) -> None:
    s = compose["services"]
    assert s["indexer"]["command"] == ["sh", "-ec", "ltrr index build --backend opensearch && ltrr train coldstart"]
    assert s["indexer"]["depends_on"]["opensearch"]["condition"] == "service_healthy"
    assert s["api"]["depends_on"]["indexer"]["condition"] == "service_completed_successfully"
    assert s["worker"]["command"] == ["ltrr", "worker"]
    assert "_cluster/health" in " ".join(s["opensearch"]["healthcheck"]["test"])
    assert s["redis"]["healthcheck"]["test"] == ["CMD", "redis-cli", "ping"]
    assert s["redis"]["command"][:5] == ["redis-server", "--appendonly", "yes", "--appendfsync", "everysec"]
    assert s["opensearch"]["ulimits"]["memlock"] == {"soft": -1, "hard": -1}
    assert "-Xms" in _env(s["opensearch"])["OPENSEARCH_JAVA_OPTS"]


def test_ltrr_services_share_settings_through_the_environment(compose: dict[str, Any]) -> None:
    for name in ("indexer", "api", "worker"):
        env = _env(compose["services"][name])
        assert env["LTRR_BACKEND"] == "opensearch"
        assert env["OPENSEARCH_URL"] == "http://opensearch:9200"
        assert env["REDIS_URL"] == "redis://redis:6379/0"
        assert env["LTRR_DATA_DIR"] == "/data"
        assert "LTRR_API_KEYS" in env
        assert "ltrr-data:/data" in compose["services"][name]["volumes"]


def test_no_secret_is_hard_coded(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for key, value in _env(service).items():
            if SECRET_NAME.search(key) and value:
                assert INTERPOLATED.match(value), f"{name}.{key} must come from the environment, not the file"
    # The API keys must be required, not defaulted to something guessable.
    assert _env(compose["services"]["api"])["LTRR_API_KEYS"].startswith("${LTRR_API_KEYS:?")


def test_dockerfile_follows_the_setup_order() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert text.startswith("#") and "FROM python:3.11-slim" in text
    steps = ["torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu", "numpy==1.26.4 scipy==1.13.1",
             "pip install -r requirements.lock", "pip install --no-deps libpecos==1.2.8",
             "pip install --no-deps --no-build-isolation -e ."]
    positions = [text.index(step) for step in steps]
    assert positions == sorted(positions)
    assert "HF_HUB_OFFLINE=1" in text
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".venv", ".git", "var", ".env"} <= set(ignored)
