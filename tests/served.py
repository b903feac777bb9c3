"""`ltrr serve` as a real child process, for the tests that need one (reliability, serve workers).

Each runs on its own copy of the session's built data dir: indexes shared read-only, models copied
(the bandit learner writes checkpoints there), no LTRR_* or REDIS_URL from the caller's
environment, so the service starts and supervises the data dir's embedded Redis itself.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest

from services.config import Settings
from services.redis_server import free_port
from tests.conftest import ROOT


def serving_data_dir(built: Settings, target: Path) -> Path:
    """A data dir of the test's own over the built one."""
    (target / "indexes").symlink_to(built.index_dir.resolve())
    shutil.copytree(built.models_dir, target / "models")
    return target


def cli_env(data: Path, **extra: str) -> dict[str, str]:
    """The caller's environment without any ltrr setting, pointed at `data`, offline."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LTRR_") and k != "REDIS_URL"}
    env.update({"LTRR_DATA_DIR": str(data), "HF_HUB_OFFLINE": "1", **extra})
    return env


def health_status(port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def start_serve(env: dict[str, str], *args: str, stdout: int | object, stderr: int | object,
                output: Callable[[], str], what: str = "ltrr serve",
                timeout_s: float = 300) -> tuple[subprocess.Popen[bytes], int]:
    """Starts `ltrr serve --port P *args` and waits for /health 200; fails the test with the last
    of `output()` if the process exits first, or after `timeout_s`."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "services.cli", "serve", "--port", str(port), *args],
                            env=env, cwd=ROOT, stdout=stdout, stderr=stderr)
    deadline = time.time() + timeout_s
    while True:
        if proc.poll() is not None:
            pytest.fail(f"{what} exited: {output()[-3000:]}")
        try:
            if health_status(port) == 200:
                return proc, port
        except OSError:
            pass
        if time.time() > deadline:
            proc.kill()
            pytest.fail(f"{what} did not come up in {timeout_s:.0f} s")
        time.sleep(0.5)


def stop_serve(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM (a graceful stop), SIGKILL after a minute."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
