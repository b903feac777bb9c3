"""Start-up of the private redis-server: a server replaying a large AOF is waited for, not killed.

A real redis-server answers `-LOADING` while it replays its append-only file, for about a second
per 100 MB. Producing that on demand would need hundreds of MB of AOF, so the wait loop is tested
against a socket that speaks those exact RESP replies; the real binary's start-up is exercised by
every other test through the session fixture.
"""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from services.redis_server import RedisServer, wait_ready

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
