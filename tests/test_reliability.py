"""Reliability of the HTTP edge and of the embedded Redis (issue 14), with real processes.

One `ltrr serve` runs on its own copy of the built data dir, with no REDIS_URL, so it starts and
supervises the data dir's redis-server itself. The tests then do what users and operators do
next to it: keep-alive clients sending hostile bodies, a CLI on the same data dir, BGREWRITEAOF,
SIGKILL of the redis-server, SIGTERM of the service. The tests run in file order: the last one
stops the service.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis

from services.keys import Keys
from services.redis_server import RedisServer
from tests.conftest import ROOT
from tests.served import cli_env, serving_data_dir, start_serve, stop_serve
from tests.test_feedback import hit_ref

KEYS = Keys()


@dataclass
class Live:
    port: int
    proc: subprocess.Popen[bytes]
    data: Path
    log: Path

    @property
    def redis_dir(self) -> Path:
        return self.data / "redis"

    def lock(self) -> dict[str, object]:
        raw = (self.redis_dir / "redis.lock").read_text()
        return json.loads(raw) if raw.strip() else {}

    def redis(self) -> redis.Redis:
        return redis.Redis.from_url(str(self.lock()["url"]), socket_timeout=5)

    def conn(self) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)


def request(conn: http.client.HTTPConnection, method: str, path: str, body: bytes | None = None,
            ctype: str | None = "application/json") -> tuple[int, dict[str, str], dict]:
    headers = {"content-type": ctype} if ctype and body is not None else {}
    conn.request(method, path, body=body, headers=headers)
    r = conn.getresponse()
    data = r.read()
    return r.status, {k.lower(): v for k, v in r.getheaders()}, json.loads(data) if data else {}


def redis_servers_on(directory: Path) -> list[int]:
    """Live redis-server processes working in `directory`. redis-server retitles itself (its
    command line no longer shows --dir), but it chdirs into its data dir, so /proc/<pid>/cwd
    tells which directory each one writes."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if not (proc / "comm").read_text().startswith("redis-server"):
                continue
            state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
            if state != "Z" and Path(os.readlink(proc / "cwd")).resolve() == directory.resolve():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def process_state(pid: int) -> str | None:
    """'Z' for a zombie, another letter for a live process, None when it is gone (reaped)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def search(conn: http.client.HTTPConnection, q: str, limit: int = 10) -> tuple[str, list[dict[str, object]]]:
    """(search_id, what an event names of each hit: its track or its artist / album, and its position)."""
    status, _, body = request(conn, "GET", "/search?" + urllib.parse.urlencode({"q": q, "limit": limit}))
    assert status == 200, body
    return body["search_id"], [hit_ref(h) for h in body["results"]]


def event(sid: str, served: list[dict[str, object]], pos: int = 0, event_id: str | None = None) -> dict[str, object]:
    return {"event_id": event_id or uuid.uuid4().hex, "search_id": sid, **served[pos], "type": "click"}


def stream_ids(client: redis.Redis) -> list[str]:
    return [json.loads(f[b"e"])["event_id"] for _, f in client.xrange(KEYS.feedback_stream)]


@pytest.fixture(scope="module")
def live(built_settings, tmp_path_factory) -> Live:
    settings, _ = built_settings
    data = serving_data_dir(settings, tmp_path_factory.mktemp("reliability-data"))
    log = data / "serve.log"
    env = cli_env(data, LTRR_CATALOG=str(settings.catalog), LTRR_LOG_LEVEL="INFO")
    with log.open("wb") as out:
        proc, port = start_serve(env, stdout=out, stderr=subprocess.STDOUT, output=log.read_text)
    yield Live(port, proc, data, log)
    stop_serve(proc)


def test_hostile_bodies_get_4xx_on_one_keep_alive_connection(live: Live) -> None:
    conn = live.conn()
    sid, served = search(conn, "shape of you")
    sock = conn.sock
    cases = [
        ("POST", "/feedback", b"[" * 2000 + b"]" * 2000, 422),  # was a RecursionError 500
        ("POST", "/search", b'{"q": "\\ud800 x"}', 422),  # was a PydanticSerializationError 500
        ("POST", "/search", b"[" * 2000 + b"]" * 2000, 400),  # FastAPI's parser: "error parsing the body"
        ("POST", "/feedback", json.dumps({**event(sid, served), "user_id": "x"}).encode()[:-1] + b', "s": "\\udc00"}',
         422),
        ("POST", "/search", b'{"q": "ok", "debug": "yes", "limit": true}', 422),
    ]
    for method, path, body, status in cases:
        got, headers, data = request(conn, method, path, body)
        assert got == status, (path, body[:40], data)
        assert data["error"]["message"]
        assert headers.get("connection", "").lower() != "close"
        # The next request on the same connection is answered (it got ECONNRESET after a 500).
        again = search(conn, "bad guy")
        assert again[1]
        assert conn.sock is sock, "the server closed the keep-alive connection"
    conn.close()


def test_duplicate_event_ids_in_a_batch_count_and_store_once(live: Live) -> None:
    conn = live.conn()
    sid, served = search(conn, "taylor swift love story")
    first, second = event(sid, served, 0), event(sid, served, 1)
    batch = {"events": [first, second, first, dict(first), second]}
    status, _, body = request(conn, "POST", "/feedback", json.dumps(batch).encode())
    assert status == 202, body
    assert body["accepted"] == 2 and body["event_ids"] == [first["event_id"], second["event_id"]]
    ids = stream_ids(live.redis())
    assert ids.count(first["event_id"]) == 1 and ids.count(second["event_id"]) == 1
    # A form post (what a page on another origin can send without a CORS preflight) is refused.
    for ctype in ("text/plain", "application/x-www-form-urlencoded", None):
        status, _, body = request(conn, "POST", "/feedback", json.dumps(event(sid, served)).encode(), ctype=ctype)
        assert status == 415, (ctype, body)
    conn.close()


def test_a_cli_on_the_same_data_dir_uses_the_running_redis(live: Live) -> None:
    lock = live.lock()
    assert lock["pid"] == live.proc.pid
    assert redis_servers_on(live.redis_dir) == [lock["redis_pid"]]
    env = cli_env(live.data, LTRR_LOG_LEVEL="INFO")
    cli = subprocess.Popen([sys.executable, "-m", "services.cli", "search", "queen", "--retriever", "q2e"],
                           env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    seen = set()
    while cli.poll() is None:  # sample while the CLI runs: never a second server on this dir
        seen.update(redis_servers_on(live.redis_dir))
        time.sleep(0.02)
    out, err = cli.communicate()
    assert cli.returncode == 0, err.decode()[-2000:]
    assert seen == {lock["redis_pid"]}, seen
    assert f"using the redis-server of pid {lock['redis_pid']}" in err.decode()
    assert b"results from q2e" in out
    # The CLI left the server (it is not its owner) and the lock as they were.
    assert live.lock() == lock
    assert live.redis().ping()


def test_sigkill_of_the_embedded_redis_is_healed_without_losing_an_acknowledged_event(live: Live) -> None:
    conn = live.conn()
    searched = [search(conn, q) for q in ("queen", "dance monkey", "old town road")]
    conn.close()
    old_pid = int(str(live.lock()["redis_pid"]))
    acked: list[str] = []
    statuses: list[int] = []
    health: list[int] = []
    stop = threading.Event()

    def send() -> None:
        c = live.conn()
        i = 0
        while not stop.is_set():
            sid, served = searched[i % len(searched)]
            ev = event(sid, served, i % 3)
            try:
                status, _, _ = request(c, "POST", "/feedback", json.dumps(ev).encode())
            except (OSError, http.client.HTTPException):
                c.close()
                c = live.conn()
                continue
            statuses.append(status)
            if status == 202:
                acked.append(str(ev["event_id"]))
            if i % 5 == 0:
                health.append(request(c, "GET", "/health")[0])
            i += 1
            time.sleep(0.005)
        c.close()

    sender = threading.Thread(target=send)
    sender.start()
    try:
        time.sleep(1.0)
        n_before_kill = len(acked)
        os.kill(old_pid, signal.SIGKILL)
        deadline = time.time() + 60
        while time.time() < deadline:  # healed: a new redis-server, and feedback accepted again
            pid = live.lock().get("redis_pid")
            if pid != old_pid and len(acked) > n_before_kill + 20 and statuses[-1] == 202:
                break
            time.sleep(0.1)
        time.sleep(0.5)
    finally:
        stop.set()
        sender.join(30)
    assert live.proc.poll() is None, "the API process must not be restarted"
    assert n_before_kill > 0 and len(acked) > n_before_kill + 20, (n_before_kill, len(acked))
    assert set(statuses) <= {202, 503}, set(statuses)
    assert statuses[-1] == 202
    assert set(health) <= {200, 503}
    new_pid = int(str(live.lock()["redis_pid"]))
    assert new_pid != old_pid
    assert process_state(old_pid) is None, "the killed redis-server was left as a zombie"
    assert redis_servers_on(live.redis_dir) == [new_pid]
    stored = stream_ids(live.redis())
    missing = set(acked) - set(stored)
    assert not missing, f"{len(missing)} acknowledged events lost"
    assert len(stored) == len(set(stored))


def test_acknowledged_events_survive_an_aof_rewrite_and_a_restart_and_sigterm_is_clean(live: Live) -> None:
    conn = live.conn()
    acked = []
    for round_ in range(2):
        sid, served = search(conn, f"sad love songs {round_}")
        for i in range(25):
            ev = event(sid, served, i % 5)
            status, _, body = request(conn, "POST", "/feedback", json.dumps(ev).encode())
            assert status == 202, body
            acked.append(ev["event_id"])
        if round_ == 0:  # rewrite the AOF between the two rounds, as Redis does on its own
            client = live.redis()
            client.bgrewriteaof()
            deadline = time.time() + 30
            while client.info("persistence")["aof_rewrite_in_progress"] or \
                    client.info("persistence")["aof_rewrite_scheduled"]:
                assert time.time() < deadline
                time.sleep(0.05)
    conn.close()
    redis_pid = int(str(live.lock()["redis_pid"]))
    live.proc.send_signal(signal.SIGTERM)
    # uvicorn shuts down gracefully, then re-raises the signal so the exit status says SIGTERM.
    assert live.proc.wait(60) in (0, -signal.SIGTERM)
    log = live.log.read_text()
    assert "Application shutdown complete" in log, log[-3000:]
    assert "Application shutdown failed" not in log and "Traceback" not in log, log[-3000:]
    assert "shutdown: stopping the" not in log, log[-3000:]  # every close() step succeeded
    assert process_state(redis_pid) is None  # stopped by its owner, and reaped
    assert redis_servers_on(live.redis_dir) == []
    assert live.lock() == {}  # released: the next process on this dir becomes the owner
    with RedisServer(live.redis_dir) as restarted:  # a restart loads the AOF
        stored = stream_ids(redis.Redis.from_url(restarted.url))
    assert set(acked) <= set(stored), len(set(acked) - set(stored))
