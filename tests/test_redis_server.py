"""The private redis-server: start-up (a server replaying a large AOF is waited for, not killed),
one server per data directory (lock, join, take-over) and its supervisor (restart after SIGKILL).

A real redis-server answers `-LOADING` while it replays its append-only file, for about a second
per 100 MB. Producing that on demand would need hundreds of MB of AOF, so the wait loop is tested
against a socket that speaks those exact RESP replies; the real binary's start-up is exercised by
every other test through the session fixture.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from services.redis_server import EmbeddedRedis, RedisDirLocked, RedisJoinError, RedisServer, wait_ready

ROOT = Path(__file__).resolve().parents[1]

LOADING = b"-LOADING Redis is loading the dataset in memory\r\n"


def _read_command(f) -> list[bytes] | None:  # type: ignore[no-untyped-def]
    header = f.readline()
    if not header:
        return None
    assert header.startswith(b"*"), header
    parts = []
    for _ in range(int(header[1:])):
        size = int(f.readline()[1:])
        parts.append(f.read(size + 2)[:-2])
    return parts


class LoadingServer:
    """Replies LOADING to every command for `loading_s` seconds, then behaves (PONG / OK)."""

    def __init__(self, loading_s: float) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen()
        self.port = self.sock.getsockname()[1]
        self.ready_at = time.monotonic() + loading_s
        self.commands: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._conn, args=(conn,), daemon=True).start()

    def _conn(self, conn: socket.socket) -> None:
        with conn, conn.makefile("rb") as f:
            while (cmd := _read_command(f)) is not None:
                name = cmd[0].upper()
                self.commands.append(name)
                # Like redis-server: the connection handshake (HELLO, CLIENT SETINFO) is served
                # while loading, data commands and PING get LOADING.
                if name == b"HELLO":
                    conn.sendall(b"%1\r\n$5\r\nproto\r\n:" + cmd[1] + b"\r\n" if len(cmd) > 1
                                 else b"%1\r\n$5\r\nproto\r\n:2\r\n")
                elif name == b"CLIENT":
                    conn.sendall(b"+OK\r\n")
                elif time.monotonic() < self.ready_at:
                    conn.sendall(LOADING)
                else:
                    conn.sendall(b"+PONG\r\n" if name == b"PING" else b"+OK\r\n")


@pytest.fixture
def alive_proc() -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen(["sleep", "30"])
    yield proc
    proc.kill()
    proc.wait()


def test_loading_server_is_waited_for_past_the_port_timeout(alive_proc, tmp_path: Path) -> None:
    # redis-py itself retries LOADING replies for about 3 s inside one ping(); a longer load
    # used to escape those retries as a ConnectionError and hit the port timeout.
    server = LoadingServer(loading_s=4.5)
    client = redis.Redis(port=server.port)
    t = time.monotonic()
    wait_ready(client, alive_proc, timeout=0.1, data_dir=tmp_path)
    assert time.monotonic() - t >= 4.4
    assert b"PING" in server.commands


def test_server_dying_while_loading_is_reported(tmp_path: Path) -> None:
    server = LoadingServer(loading_s=60)
    dead = subprocess.Popen(["true"])
    dead.wait()
    with pytest.raises(RuntimeError, match="exited while loading"):
        wait_ready(redis.Redis(port=server.port), dead, timeout=5, data_dir=tmp_path)


def test_nothing_listening_times_out(alive_proc, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(RuntimeError, match="did not start"):
        wait_ready(redis.Redis(port=port), alive_proc, timeout=0.3, data_dir=tmp_path)


def test_real_server_restarts_with_its_data(tmp_path: Path) -> None:
    with RedisServer(tmp_path / "r") as first:
        redis.Redis.from_url(first.url).set("k", "v")
    with RedisServer(tmp_path / "r") as second:
        assert redis.Redis.from_url(second.url).get("k") == b"v"


# --- one redis-server per data directory ------------------------------------------------------

def test_a_second_process_on_the_same_dir_joins_instead_of_starting_a_server(tmp_path: Path) -> None:
    owner = EmbeddedRedis(tmp_path / "r").open()
    try:
        lock = json.loads((tmp_path / "r" / "redis.lock").read_text())
        assert lock["pid"] == os.getpid() and lock["redis_pid"] == owner.pid and lock["url"] == owner.url
        # Another process (a CLI) on the same data dir: it joins through the lock file.
        code = ("import sys; from services.redis_server import EmbeddedRedis; "
                "e = EmbeddedRedis(sys.argv[1]).open(supervise=False); print(e.url, e.owner, e.pid); e.stop()")
        out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "r")], capture_output=True, text=True,
                             cwd=ROOT, timeout=60, check=True).stdout.split()
        assert out == [owner.url, "False", "None"]
        with pytest.raises(RedisDirLocked):
            RedisServer(tmp_path / "r").start()  # a bare second server is refused outright
        assert redis.Redis.from_url(owner.url).ping()  # the joiner's stop() left the owner's server running
    finally:
        owner.stop()
    assert (tmp_path / "r" / "redis.lock").read_text() == ""


def test_a_joiner_takes_over_on_the_same_port_when_the_owner_goes_away(tmp_path: Path) -> None:
    owner = EmbeddedRedis(tmp_path / "r").open()
    joiner = EmbeddedRedis(tmp_path / "r", check_s=0.05).open()
    try:
        assert not joiner.owner and joiner.url == owner.url
        redis.Redis.from_url(owner.url).set("k", "v")
        owner.stop()
        client = redis.Redis.from_url(joiner.url)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with contextlib.suppress(redis.RedisError):
                if client.get("k") == b"v":
                    break
            time.sleep(0.05)
        assert joiner.owner and client.get("k") == b"v"
    finally:
        joiner.stop()
        owner.stop()


def test_locked_dir_whose_redis_is_dead_is_a_clear_error(tmp_path: Path) -> None:
    # A process holds the lock but its Redis does not answer (here: it never started one).
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from services.redis_server import DirLock; l = DirLock(sys.argv[1]); "
        "assert l.try_acquire(); l.write({'pid': 1, 'url': 'redis://127.0.0.1:9/0'}); print('held', flush=True); "
        "time.sleep(60)"), str(tmp_path / "r")], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        with pytest.raises(RedisJoinError, match="does not answer"):
            EmbeddedRedis(tmp_path / "r", join_timeout=0.5).open()
    finally:
        holder.kill()
        holder.wait()
    # The holder died: the kernel dropped its flock, so the next process simply becomes the owner.
    again = EmbeddedRedis(tmp_path / "r").open()
    try:
        assert again.owner
    finally:
        again.stop()


def test_owner_restarts_a_killed_server_from_its_aof_and_reaps_it(tmp_path: Path) -> None:
    owner = EmbeddedRedis(tmp_path / "r", check_s=0.05).open()
    try:
        client = redis.Redis.from_url(owner.url)
        for i in range(100):
            client.xadd("s", {"i": i})
        old = owner.pid
        assert old is not None
        os.kill(old, signal.SIGKILL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (owner.pid == old or owner.restarts == 0):
            time.sleep(0.05)
        assert owner.restarts == 1 and owner.pid != old
        assert not Path(f"/proc/{old}").exists()  # reaped, not a zombie
        assert client.xlen("s") == 100  # same URL, every acknowledged write back from the AOF
    finally:
        owner.stop()
