"""`ltrr serve --workers 2`: real processes on one port, one embedded Redis, summed /metrics.

Runs the CLI as a user would, on a copy of the session's built data dir (the workers write logs
and bandit checkpoints there), with no REDIS_URL so the parent must start the shared Redis.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

import pytest
import redis

from services.keys import Keys
from tests.served import cli_env, serving_data_dir, start_serve, stop_serve


def _get(url: str, timeout: float = 30.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _post(url: str, body: object) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(x) for x in out.split()]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def _metric_sum(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.fixture(scope="module")
def served(built_settings, tmp_path_factory):
    settings, _ = built_settings
    data = serving_data_dir(settings, tmp_path_factory.mktemp("workers-data"))
    env = cli_env(data, LTRR_CATALOG=str(settings.catalog), LTRR_LOG_LEVEL="WARNING", LTRR_RELOAD_CHECK_S="0.5")
    log = data / "serve.log"
    with log.open("wb") as err:
        proc, port = start_serve(env, "--workers", "2", stdout=subprocess.DEVNULL, stderr=err,
                                 output=log.read_text, what="ltrr serve --workers 2")
    yield f"http://127.0.0.1:{port}", proc, data
    stop_serve(proc)


def test_two_workers_and_one_shared_redis(served) -> None:
    _, proc, data = served
    children = [_cmdline(c) for c in _children(proc.pid)]
    # uvicorn's supervisor spawns the workers; the parent started exactly one redis-server.
    assert sum("redis-server" in c for c in children) == 1, children
    workers = [c for c in children if "spawn_main" in c]  # (multiprocessing's resource tracker is not one)
    assert len(workers) == 2, children
    assert (data / "redis").is_dir()


def test_searches_answer_and_metrics_sum_over_processes(served) -> None:
    base, _, _ = served
    before = _metric_sum(_get(base + "/metrics")[1].decode(), "ltrr_http_requests_total",
                         route="/search", status="200")
    n = 30
    for i in range(n):
        status, body = _get(base + "/search?" + urllib.parse.urlencode({"q": f"ed sheeran shape of you {i % 3}"}))
        assert status == 200
        assert json.loads(body)["results"]
    text = _get(base + "/metrics")[1].decode()
    assert _metric_sum(text, "ltrr_http_requests_total", route="/search", status="200") == before + n
    # Samples come from both processes' files (each uvicorn worker wrote its own).
    files = {re.sub(r"^\w+_(\d+)\.db$", r"\1", p.name) for p in (served[2] / "prometheus-multiproc").glob("*.db")}
    assert len(files) >= 2, files


def _redis_of(proc: subprocess.Popen[bytes]) -> redis.Redis:
    for pid in _children(proc.pid):
        m = re.search(r"redis-server\S* 127\.0\.0\.1:(\d+)", _cmdline(pid))  # redis retitles itself
        if m:
            return redis.Redis(port=int(m.group(1)))
    raise AssertionError("no redis-server child")


def test_feedback_is_applied_once_by_the_worker_processes(served) -> None:
    base, proc, _ = served
    status, body = _get(base + "/search?q=" + urllib.parse.quote("billie eilish bad guy"))
    assert status == 200
    res = json.loads(body)
    track = res["results"][0]["track_id"]
    ev = {"event_id": "mw-1", "search_id": res["search_id"], "track_id": track, "position": 1, "type": "click"}
    assert _post(base + "/feedback", ev)[0] == 202
    assert _post(base + "/feedback", ev)[0] == 202  # a client retry: accepted again, applied once
    deadline = time.time() + 60
    consumed = 0.0
    while time.time() < deadline:
        consumed = _metric_sum(_get(base + "/metrics")[1].decode(), "ltrr_worker_events_total", type="click")
        if consumed >= 2:
            break
        time.sleep(0.5)
    assert consumed == 2  # both stream entries consumed, by whichever worker process read them
    client = _redis_of(proc)
    assert int(client.hget(Keys().counts, "click") or 0) == 1
    assert client.xpending(Keys().feedback_stream, Keys().group)["pending"] == 0


def test_sigterm_stops_workers_and_redis(served) -> None:
    _, proc, _ = served
    pids = _children(proc.pid)
    proc.send_signal(signal.SIGTERM)
    proc.wait(60)
    time.sleep(1)
    alive = [p for p in pids if Path(f"/proc/{p}").exists() and "Z" not in
             Path(f"/proc/{p}/stat").read_text().split()[2]]
    assert not alive, [(_cmdline(p), p) for p in alive]
