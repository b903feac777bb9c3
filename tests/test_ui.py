"""The web page in a real browser: headless Chromium driven over the Chrome DevTools Protocol (no
WebDriver download, no Selenium Manager), against a real uvicorn server with a real Runtime over
the session's built data dir and its own redis-server (so the test can stop and restart it).

Screenshots of each view go to the test's tmp dir, and to docs/img/ with LTRR_UPDATE_SCREENSHOTS=1
(`bash scripts/screenshots.sh`).
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from services.activity import ActivityRecorder, is_explored
from services.redis_server import RedisServer, free_port
from tests.conftest import ROOT, restore_built_state

CHROMIUM = os.environ.get("LTRR_CHROMIUM", "/usr/bin/chromium")
API_KEY = "ui-test-key"
DOCS_IMG = ROOT / "docs" / "img"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-extensions", "--disable-default-apps", "--mute-audio", "--hide-scrollbars",
                  "--force-device-scale-factor=1", "--window-size=1360,900", "--remote-debugging-port=0",
                  "--remote-allow-origins=*"]

pytestmark = pytest.mark.skipif(
    shutil.which(CHROMIUM) is None,
    reason=f"no Chromium at {CHROMIUM}: scripts/test.sh installs it with apt-get when run as root "
           "(apt-get install chromium chromium-driver)")


# --- a minimal DevTools Protocol client ----------------------------------------------------------
class Browser:
    """One headless Chromium with one page. Records uncaught JS exceptions and console errors so a
    test can assert the page never threw."""

    def __init__(self, profile: Path):
        from websockets.sync.client import connect

        profile.mkdir(parents=True, exist_ok=True)
        self.proc = subprocess.Popen([CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.exists() and port_file.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("chromium did not start")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            pages = [t for t in json.load(r) if t["type"] == "page"]
        self.ws = connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=10)
        self.ids = itertools.count(1)
        self.exceptions: list[str] = []
        self.console_errors: list[str] = []
        for domain in ("Page", "Runtime"):
            self.send(f"{domain}.enable")

    def _event(self, msg: dict) -> None:
        if msg.get("method") == "Runtime.exceptionThrown":
            d = msg["params"]["exceptionDetails"]
            self.exceptions.append(d.get("exception", {}).get("description") or d.get("text", ""))
        elif msg.get("method") == "Runtime.consoleAPICalled" and msg["params"]["type"] == "error":
            args = msg["params"]["args"]
            self.console_errors.append(" ".join(str(a.get("value", a.get("description"))) for a in args))

    def send(self, method: str, **params: object) -> dict:
        i = next(self.ids)
        self.ws.send(json.dumps({"id": i, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == i:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            self._event(msg)

    def js(self, expression: str) -> object:
        out = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in out:
            raise RuntimeError(f"{expression}: {out['exceptionDetails']}")
        return out["result"].get("value")

    def wait(self, expression: str, timeout: float = 15.0, what: str = "") -> object:
        deadline = time.monotonic() + timeout
        while True:
            value = self.js(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what or expression}")
            time.sleep(0.1)

    def goto(self, url: str) -> None:
        """A full load of `url` (by way of about:blank: a URL that differs only in its #fragment
        would otherwise be a same-document navigation that keeps the old page's state)."""
        self.send("Page.navigate", url="about:blank")
        self.wait("location.href === 'about:blank' && document.readyState === 'complete'", what="about:blank")
        self.send("Page.navigate", url=url)
        self.wait("document.readyState === 'complete' && !!window.ltrr", what=f"load of {url}")

    def click(self, selector: str) -> None:
        """A real mouse click in the middle of the element (after scrolling it into view)."""
        box = self.js(f"""(() => {{ const e = document.querySelector({json.dumps(selector)});
            if (!e) return null; e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect();
            return [r.x + r.width / 2, r.y + r.height / 2]; }})()""")
        if not box:
            raise AssertionError(f"no element {selector}")
        x, y = box
        for kind in ("mouseMoved", "mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=1)

    def type(self, selector: str, text: str, *, per_char: bool = True) -> None:
        self.js(f"document.querySelector({json.dumps(selector)}).focus()")
        for chunk in (text if per_char else [text]):
            self.send("Input.insertText", text=chunk)
            if per_char:
                time.sleep(0.03)

    def clear(self, selector: str) -> None:
        self.js(f"(() => {{ const e = document.querySelector({json.dumps(selector)}); e.value = '';"
                " e.dispatchEvent(new Event('input')); })()")

    def press_enter(self) -> None:
        for kind in ("keyDown", "keyUp"):
            self.send("Input.dispatchKeyEvent", type=kind, key="Enter", code="Enter", windowsVirtualKeyCode=13,
                      nativeVirtualKeyCode=13, **({"text": "\r"} if kind == "keyDown" else {}))

    def screenshot(self, path: Path, full_page: bool = True) -> Path:
        params: dict[str, object] = {"format": "png"}
        if full_page:
            size = self.send("Page.getLayoutMetrics")["cssContentSize"]
            params.update(captureBeyondViewport=True,
                          clip={"x": 0, "y": 0, "width": 1360, "height": max(900, int(size["height"])), "scale": 1})
        data = base64.b64decode(self.send("Page.captureScreenshot", **params)["data"])
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return path

    def close(self) -> None:
        try:
            self.ws.close()
        finally:
            try:
                os.killpg(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                os.killpg(self.proc.pid, signal.SIGKILL)


# --- a real server ----------------------------------------------------------------------------
class Server:
    """uvicorn serving create_app(runtime) on a free port, in a thread of this process (so the
    test can reach the Runtime), with the app's real lifespan."""

    def __init__(self, app: object):
        import uvicorn

        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning",
                                                    lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> Server:
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)


def _data_dir(built: Path, target: Path) -> Path:
    """A data dir of our own over the built one: indexes and embeddings shared read-only, models
    copied (the test appends to models/decisions.jsonl), fresh logs and reports."""
    target.mkdir()
    for name in ("indexes", "embeddings"):
        if (built / name).exists():
            (target / name).symlink_to((built / name).resolve())
    shutil.copytree(built / "models", target / "models", symlinks=True)
    return target


@pytest.fixture(scope="module")
def ui(built_settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    from services.serving.api import create_app
    from services.serving.runtime import Runtime

    settings, _ = built_settings
    base = tmp_path_factory.mktemp("ui")
    redis_srv = RedisServer(base / "redis").start()
    restore_built_state(built_settings, redis_srv).close()
    data_dir = _data_dir(settings.data_dir, base / "data")
    rt = Runtime(settings.model_copy(update={"data_dir": data_dir, "redis_url": redis_srv.url,
                                             "api_keys": (API_KEY,)}), start_worker=False)
    app = create_app(rt)
    server = Server(app).start()
    browser = Browser(base / "chromium-profile")
    shots = base / "screenshots"
    try:
        yield {"rt": rt, "app": app, "server": server, "browser": browser, "redis": redis_srv, "shots": shots,
               "data_dir": data_dir}
    finally:
        browser.close()
        server.stop()
        redis_srv.stop()


def _shot(ui: dict, name: str, full_page: bool = True) -> Path:
    ui["browser"].js("document.activeElement && document.activeElement.blur()")  # no caret in the picture
    path = ui["browser"].screenshot(ui["shots"] / f"{name}.png", full_page=full_page)
    if os.environ.get("LTRR_UPDATE_SCREENSHOTS") == "1":
        DOCS_IMG.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, DOCS_IMG / f"{name}.png")
    return path


def _client(ui: dict) -> redis.Redis:
    return redis.Redis.from_url(ui["redis"].url)


def _feedback_events(client: redis.Redis) -> list[dict]:
    """Every event in the feedback stream, as the API wrote it (one JSON document per entry)."""
    return [json.loads(fields[b"e"]) for _, fields in client.xrange("ltrr:feedback")]


def _until(cond: Callable[[], object], timeout: float = 15.0, what: str = "") -> object:
    deadline = time.monotonic() + timeout
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def _post(ui: dict, path: str, body: dict) -> dict:
    req = urllib.request.Request(ui["server"].url + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", "X-API-Key": API_KEY})
    with urllib.request.urlopen(req) as r:
        return json.load(r)


def _record_if_pipeline_does_not(ui: dict, search: dict, reward: float | None, lag_s: float | None) -> None:
    """Records the search in the ActivityRecorder from what it logged, unless the runtime's
    pipeline does so itself (pipeline.activity). The reward is always recorded here: the bandit
    learner in services/learning/worker.py records rewards, but no worker runs in this module (and it
    would only finalize a search when its join window closes)."""
    client = _client(ui)
    rec = ActivityRecorder(client)
    d = search["debug"]
    action_key = f"{'+'.join(d['action'])}@{d['budget']}"
    if getattr(ui["rt"].pipeline, "activity", None) is None:
        chosen = list(d["probabilities"]).index(action_key)
        pipe = client.pipeline(transaction=False)
        rec.record_search(pipe, action_key, is_explored(list(d["probabilities"].values()), chosen), d["timings_ms"],
                          time.time())
        pipe.execute()
    if reward is not None:
        rec.record_reward(client, action_key, reward, lag_s, time.time())


def _traffic(ui: dict, queries: list[str]) -> None:
    """Real searches through the API; every other one gets a real play on its first result (an
    artist's query: on the artist)."""
    for i, q in enumerate(queries):
        search = _post(ui, "/search", {"q": q, "limit": 10, "debug": True})
        if i % 2 == 0 and search["results"]:
            t0 = time.time()
            first = search["results"][0]
            key = "track_id" if first["type"] == "track" else "entity_id"
            _post(ui, "/feedback", {"search_id": search["search_id"], key: first[key], "position": 1, "type": "play"})
            _record_if_pipeline_does_not(ui, search, 1.0, time.time() - t0)
        else:
            _record_if_pipeline_does_not(ui, search, 0.0 if i % 3 else None, None)


# --- tests ----------------------------------------------------------------------------------------
def test_static_files_and_headers(ui):
    """The page and its assets are served from the package (services/serving/ui/), with a CSP that keeps
    the typed key on this origin; anything else under /ui is a 404 in the API's error shape."""
    base = ui["server"].url
    with urllib.request.urlopen(base + "/") as r:
        html = r.read().decode()
        assert r.headers["Content-Security-Policy"].startswith("default-src 'self'")
    assert "/ui/app.js" in html and API_KEY not in html
    for name, ctype in (("app.js", "text/javascript"), ("charts.js", "text/javascript"), ("style.css", "text/css")):
        with urllib.request.urlopen(f"{base}/ui/{name}") as r:
            assert r.headers["Content-Type"].startswith(ctype)
            assert API_KEY not in r.read().decode()
    for bad in ("/ui/nope.js", "/ui/..%2Fapi.py", "/stats/replay/..%2F..%2Fmodels/x.png", "/stats/replay/r/x.txt"):
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(base + bad)
        assert exc.value.code == 404
    with urllib.request.urlopen(base + "/openapi.json") as r:
        spec = json.load(r)
    assert "/stats/learning" in spec["paths"] and "/" not in spec["paths"]


def test_search_suggest_play_reaches_the_stream_and_the_learning_view(ui):
    b, rt, client = ui["browser"], ui["rt"], _client(ui)
    b.goto(ui["server"].url + "/#search")
    session_id = b.js("window.ltrr.sessionId")
    assert session_id.startswith("tab-") and b.js("sessionStorage.getItem('ltrr.session_id')") == session_id

    # The API key is typed into the page, kept in sessionStorage only.
    b.type("#api-key", API_KEY, per_char=False)
    b.click("#key-form button")
    assert b.js("sessionStorage.getItem('ltrr.api_key')") == API_KEY
    assert b.js("localStorage.length") == 0

    # Suggest-as-you-type, from the real PECOS model the test data dir holds.
    b.click("#debug")
    b.type("#q", "love")
    b.wait("document.querySelectorAll('#suggestions li').length > 0", what="suggestions")
    assert b.js("window.ltrr.suggest.isAvailable()") is True
    shown = b.js("[...document.querySelectorAll('#suggestions li')].map(li => li.innerText.toLowerCase())")
    assert any(s.startswith("love") for s in shown), shown
    # A trailing space reaches /suggest ("the word is complete"); the page does not trim it away.
    b.type("#q", " ")
    b.wait("performance.getEntriesByType('resource').some(e => /[?&]prefix=love(%20|\\+)(&|$)/.test(e.name))",
           what="a /suggest request for 'love '")
    assert b.js("document.getElementById('message').hidden") is True
    b.type("#q", "story taylor swift")
    b.press_enter()
    b.wait("document.querySelectorAll('#results li.hit').length > 0", what="results")
    search = b.js("window.ltrr.state.search")
    assert search["query"] == "love story taylor swift" and search["debug"] is not None
    rows = b.js("[...document.querySelectorAll('#results li.hit')].map(li => li.innerText)")
    first = search["results"][0]
    assert first["title"] in rows[0] and first["artist"] in rows[0]
    labels = {"lexical": "BM25", "dense": "dense", "xr": "XR-Linear", "q2e": "Q2E"}
    assert first["retrievers"] and all(labels.get(r, r) in rows[0] for r in first["retrievers"])
    # The debug drawer shows the action, its propensity and the timings.
    drawer = b.js("document.getElementById('drawer-body').innerText")
    assert "propensity" in drawer and f"{search['debug']['propensity']:.4f}" in drawer and "total" in drawer
    _shot(ui, "search", full_page=False)

    # Play the second result: a real /feedback event with the search's id and position 2.
    before = len(_feedback_events(client))
    b.click("#results li.hit:nth-child(2) button.fb-play")
    b.wait("document.querySelector('#results li.hit:nth-child(2) button.fb-play').dataset.state === 'sent'",
           what="play delivered")
    events = _feedback_events(client)[before:]
    assert len(events) == 1
    ev = events[0]
    assert ev["search_id"] == search["search_id"] and ev["type"] == "play"
    assert ev["track_id"] == search["results"][1]["track_id"] and int(ev["position"]) == 2
    assert ev["event_id"] == b.js("window.ltrr.outbox.sent.slice(-1)[0]")

    # "More results": the next page of the same search, numbered on; a play there names position 12.
    n = len(search["results"])
    assert b.js("document.getElementById('more').hidden") is False
    b.click("#more")
    b.wait(f"document.querySelectorAll('#results li.hit').length > {n}", what="the second page")
    assert b.js(f"document.querySelector('#results li.hit:nth-child({n + 2}) .pos').innerText") == str(n + 2)
    paged = b.js("window.ltrr.state.search")
    b.click(f"#results li.hit:nth-child({n + 2}) button.fb-play")
    b.wait(f"document.querySelector('#results li.hit:nth-child({n + 2}) button.fb-play').dataset.state === 'sent'",
           what="play on page 2 delivered")
    ev2 = _feedback_events(client)[before + 1:]
    assert len(ev2) == 1 and int(ev2[0]["position"]) == n + 2
    assert ev2[0]["search_id"] == search["search_id"] and ev2[0]["track_id"] == paged["results"][n + 1]["track_id"]

    # The learning view counts the search and the play's reward (see _record_if_pipeline_does_not).
    d = search["debug"]
    action_key = f"{'+'.join(d['action'])}@{d['budget']}"
    searched_at = json.loads(client.get(f"ltrr:decision:{search['search_id']}"))["ts"]
    _record_if_pipeline_does_not(ui, search, 1.0, float(ev["timestamp"]) - searched_at)
    b.click("#tab-learning")
    b.wait("document.querySelector('#kpis .kpi-value') && document.querySelector('#kpis .kpi-value').innerText !== ''",
           what="learning view")
    stats = b.js("fetch('/stats/learning?minutes=60').then(r => r.json())")
    assert stats["activity"]["totals"]["searches"] >= 1
    assert stats["activity"]["totals"]["actions"][action_key]["rewarded"] >= 1
    assert stats["models"]["current"]["ranker"] == rt.ranker.version
    kpis = b.js("document.getElementById('kpis').innerText")
    assert str(stats["activity"]["totals"]["searches"]) in kpis
    b.wait(f"document.getElementById('chart-actions').innerText.includes({json.dumps(action_key)})",
           what="action share legend")
    assert b.js("document.querySelectorAll('#chart-actions svg rect').length") >= 1
    assert b.js("document.querySelectorAll('#chart-reward svg rect').length") >= 1
    assert b.js("document.querySelectorAll('#chart-stages svg rect').length") >= 1
    assert b.exceptions == [] and b.console_errors == []


def test_learning_view_shows_model_decisions_and_the_newest_replay_report(ui):
    import numpy as np

    from replay.evaluate import PolicyResult
    from replay.report import write_report
    from services.artifacts import append_decision

    rt, b = ui["rt"], ui["browser"]
    models_dir = rt.settings.models_dir
    append_decision(models_dir, {"ts": time.time() - 60, "kind": "ranker", "version": "v9998", "decision": "promoted",
                                 "report": {"ndcg@10": 0.412, "baseline_ndcg@10": 0.377, "queries": 640}})
    append_decision(models_dir, {"ts": time.time(), "kind": "ranker", "version": "v9999", "decision": "refused",
                                 "report": {"ndcg@10": 0.301, "baseline_ndcg@10": 0.412, "reason": "below the gate"}})
    reports = ui["data_dir"] / "reports"
    rng = np.random.default_rng(3)
    results = [PolicyResult(policy=p, estimator=e, estimate=v, lower=v - 0.04, upper=v + 0.04, n=2000, ess=900.0,
                            max_weight=12.0, mean_weight=1.0, matched_share=0.3, coverage=1.0)
               for p, v in (("logged", 0.31), ("bandit:latest", 0.36)) for e in ("ips", "snips", "dr")]
    write_report(reports / "old", results[:3])
    time.sleep(1.1)
    write_report(reports / "run2", results,
                 online_rewards={"bandit": rng.random(200), "lexical": rng.random(200) * 0.8})

    _traffic(ui, ["sad love songs", "gym rap", "latin summer", "tayler swft love story", "bohemian rhapsody",
                  "chill jazz", "drake", "party hits", "lofi study beats", "rock classics", "beyonce halo",
                  "edm festival", "acoustic covers", "eminem lose yourself"])
    b.goto(ui["server"].url + "/#learning")
    b.wait("document.querySelectorAll('#models table.decisions tbody tr').length >= 2", what="decisions table")
    models = b.js("document.getElementById('models').innerText")
    assert "v9999" in models and "refused" in models and "below the gate" in models and "0.4120" in models, models
    b.wait("document.querySelectorAll('#replay img').length >= 2", what="replay plots")
    assert "run2" in b.js("document.getElementById('replay').innerText")
    loaded = b.wait("[...document.querySelectorAll('#replay img')].every(i => i.complete && i.naturalWidth > 0)",
                    what="replay images loaded")
    assert loaded
    srcs = b.js("[...document.querySelectorAll('#replay img')].map(i => i.getAttribute('src'))")
    assert all(s.startswith("/stats/replay/run2/") for s in srcs)
    b.wait("document.querySelectorAll('#chart-actions svg rect').length >= 1", what="charts")
    b.js("const w = document.getElementById('window'); w.value = '15'; w.dispatchEvent(new Event('change'))")
    b.wait("document.getElementById('kpis').innerText.includes('15 minutes')", what="the 15-minute window")
    _shot(ui, "learning")
    assert b.exceptions == [] and b.console_errors == []


def test_artist_and_album_hits_show_their_top_tracks_and_take_feedback(ui):
    """An artist query shows the artist first, with its top tracks; Play on the artist and on one of
    its top tracks send real events naming the entity at its position; an album query likewise."""
    b, client = ui["browser"], _client(ui)
    b.goto(ui["server"].url + "/#search")
    if b.js("sessionStorage.getItem('ltrr.api_key')") != API_KEY:
        b.type("#api-key", API_KEY, per_char=False)
        b.click("#key-form button")
    b.clear("#q")
    b.type("#q", "tayler swift", per_char=False)
    b.press_enter()
    b.wait("document.querySelector('#results li.hit') && window.ltrr.state.search && "
           "window.ltrr.state.search.query === 'tayler swift'", what="results")
    search = b.js("window.ltrr.state.search")
    artist = search["results"][0]
    assert artist["type"] == "artist" and artist["entity_id"] == "artist:taylor-swift"
    row = b.js("(() => { const li = document.querySelector('#results li.hit:nth-child(1)');"
               " return {entity: li.dataset.entity, text: li.innerText,"
               " tracks: [...li.querySelectorAll('.top-tracks li')].map(t => t.dataset.track)}; })()")
    assert row["entity"] == "artist:taylor-swift" and "Taylor Swift" in row["text"] and "ARTIST" in row["text"].upper()
    assert row["tracks"] == [t["track_id"] for t in artist["top_tracks"]]
    assert artist["top_tracks"][0]["title"] in row["text"]
    assert b.js("document.querySelector('#results li.hit:nth-child(2)').dataset.position") == "2"
    _shot(ui, "search-artist", full_page=False)

    before = len(_feedback_events(client))
    b.click("#results li.hit:nth-child(1) .actions button.fb-play")
    b.wait("document.querySelector('#results li.hit:nth-child(1) .actions button.fb-play').dataset.state === 'sent'",
           what="play on the artist delivered")
    b.click("#results li.hit:nth-child(1) .top-tracks li:nth-child(2) button.fb-play")
    b.wait("document.querySelector('#results li.hit:nth-child(1) .top-tracks li:nth-child(2) button.fb-play')"
           ".dataset.state === 'sent'", what="play of a top track delivered")
    b.click("#results li.hit:nth-child(1) .actions button.fb-skip")
    b.wait("document.querySelector('#results li.hit:nth-child(1) .actions button.fb-skip').dataset.state === 'sent'",
           what="skip on the artist delivered")
    events = _feedback_events(client)[before:]
    assert [(e["type"], e["entity_id"], e["track_id"], int(e["position"])) for e in events] == [
        ("play", "artist:taylor-swift", artist["top_tracks"][0]["track_id"], 1),
        ("play", "artist:taylor-swift", artist["top_tracks"][1]["track_id"], 1),
        ("skip", "artist:taylor-swift", artist["top_tracks"][0]["track_id"], 1)]
    assert all(e["search_id"] == search["search_id"] for e in events)

    b.clear("#q")
    b.type("#q", "1989 album", per_char=False)
    b.press_enter()
    b.wait("window.ltrr.state.search && window.ltrr.state.search.query === '1989 album'", what="album results")
    album = b.js("window.ltrr.state.search")["results"][0]
    assert album["type"] == "album" and album["name"] == "1989"
    text = b.js("document.querySelector('#results li.hit:nth-child(1)').innerText")
    assert "1989" in text and "Taylor Swift" in text and "ALBUM" in text.upper()
    b.click("#results li.hit:nth-child(1) .actions button.fb-like")
    b.wait("document.querySelector('#results li.hit:nth-child(1) .actions button.fb-like').dataset.state === 'sent'",
           what="like on the album delivered")
    ev = _feedback_events(client)[-1]
    assert ev["entity_id"] == album["entity_id"] and ev["type"] == "like" and int(ev["position"]) == 1
    assert b.exceptions == [] and b.console_errors == []


def test_bad_input_gives_clear_messages(ui):
    b = ui["browser"]
    b.goto(ui["server"].url + "/#search")
    b.clear("#q")
    b.click("#go")
    assert "Type something" in b.wait("!document.getElementById('message').hidden && "
                                      "document.getElementById('message').innerText", what="empty-query message")
    b.js(f"document.getElementById('q').value = {json.dumps('la ' * 400)}")
    b.click("#go")
    msg = b.wait("document.getElementById('message').innerText.includes('characters') && "
                 "document.getElementById('message').innerText", what="long-query message")
    assert "1,199" in msg or "1199" in msg
    assert "512" in msg
    assert b.exceptions == []


def test_feedback_503_is_retried_with_the_same_event_id(ui):
    """Redis stops: /feedback answers 503, the page says so and keeps the click; Redis comes back
    (same data, AOF): the page re-sends the SAME event_id and the stream gets it once."""
    b, srv = ui["browser"], ui["redis"]
    b.goto(ui["server"].url + "/#search")
    b.clear("#q")
    b.type("#q", "gym rap", per_char=False)
    b.click("#go")
    b.wait("window.ltrr.state.search && window.ltrr.state.search.query === 'gym rap' && "
           "document.querySelectorAll('#results li.hit').length > 0", what="results")
    search = b.js("window.ltrr.state.search")

    srv.stop()
    try:
        b.click("#results li.hit:nth-child(1) button.fb-like")
        text = b.wait("!document.getElementById('outbox').hidden && document.getElementById('outbox').innerText"
                      ".includes('503') && document.getElementById('outbox').innerText", timeout=20,
                      what="the 503 message")
        assert "not yet delivered" in text and "same event id" in text
        pending = b.js("window.ltrr.outbox.pending()")
        assert len(pending) == 1 and pending[0]["search_id"] == search["search_id"]
        event_id = pending[0]["event_id"]
        # The click survives a reload of the tab (sessionStorage).
        b.goto(ui["server"].url + "/#search")
        assert [e["event_id"] for e in b.js("window.ltrr.outbox.pending()")] == [event_id]
        attempts = pending[0]["attempts"]
        b.wait(f"window.ltrr.outbox.pending()[0].attempts > {attempts} && "
               "document.getElementById('outbox').innerText.includes('503')", what="a retry after the reload")
        # The reloaded page shows the same results again; the strip above them tells of the queued click.
        assert b.js("document.querySelectorAll('#results li.hit').length") == len(search["results"])
        _shot(ui, "feedback-queued", full_page=False)
    finally:
        srv.start()
    client = _client(ui)
    _until(lambda: any(e["event_id"] == event_id for e in _feedback_events(client)), timeout=40,
           what="the retried event in the stream")
    b.wait("window.ltrr.outbox.pending().length === 0 && document.getElementById('outbox').hidden", what="outbox empty")
    time.sleep(0.5)
    same = [e for e in _feedback_events(client) if e["event_id"] == event_id]
    assert len(same) == 1 and same[0]["type"] == "like" and same[0]["search_id"] == search["search_id"]
    assert int(same[0]["position"]) == 1


def test_stats_learning_answers_503_while_redis_is_down(ui):
    srv = ui["redis"]
    url = ui["server"].url + "/stats/learning?minutes=15"
    with urllib.request.urlopen(url) as r:
        assert json.load(r)["activity"]["minutes"] == 15
    srv.stop()
    try:
        with pytest.raises(urllib.error.HTTPError) as exc:
            urllib.request.urlopen(url)
        assert exc.value.code == 503 and exc.value.headers["Retry-After"] == "1"
        assert json.load(exc.value)["error"]["code"] == "unavailable"
    finally:
        srv.start()
    with pytest.raises(urllib.error.HTTPError) as exc:
        urllib.request.urlopen(ui["server"].url + "/stats/learning?minutes=0")
    assert exc.value.code == 422


def test_a_click_without_the_key_waits_for_it_and_keeps_its_event_id(ui):
    """With API keys on, a click made before the key is entered is kept (401), and sent with its
    original event_id as soon as the key is given."""
    b, client = ui["browser"], _client(ui)
    b.goto(ui["server"].url + "/#search")
    b.js("sessionStorage.removeItem('ltrr.api_key'); document.getElementById('api-key').value = ''")
    b.clear("#q")
    b.type("#q", "latin summer", per_char=False)
    b.click("#go")
    b.wait("window.ltrr.state.search && window.ltrr.state.search.query === 'latin summer'", what="results")
    search = b.js("window.ltrr.state.search")
    b.click("#results li.hit:nth-child(3) button.fb-skip")
    text = b.wait("document.getElementById('outbox').innerText.includes('API key') && "
                  "document.getElementById('outbox').innerText", what="the key message")
    assert "kept" in text
    event_id = b.js("window.ltrr.outbox.pending()[0].event_id")
    assert not any(e["event_id"] == event_id for e in _feedback_events(client))
    b.type("#api-key", API_KEY, per_char=False)
    b.click("#key-form button")
    b.wait("window.ltrr.outbox.pending().length === 0", what="the queued skip sent")
    got = [e for e in _feedback_events(client) if e["event_id"] == event_id]
    assert len(got) == 1 and got[0]["type"] == "skip" and int(got[0]["position"]) == 3
    assert got[0]["search_id"] == search["search_id"]
    assert b.exceptions == []
