"""The web page (`/`, `/ui/*`: static files, no build step) and the JSON it draws its learning
charts from (`GET /stats/learning`): per-minute activity counted in Redis by
services.activity, model promotion/refusal decisions from models/decisions.jsonl, and the PNG
plots of the newest replay report under <data_dir>/reports.

The page never holds a key of its own: the user types one, it stays in the tab's sessionStorage.
"""

from __future__ import annotations

import logging
import mimetypes
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Protocol

import redis
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from pydantic import BaseModel, Field, JsonValue

from services.activity import ActivityRecorder
from services.artifacts import read_decisions
from services.config import Settings
from services.keys import Keys

log = logging.getLogger("ltrr.ui")

STATIC_DIR = Path(__file__).resolve().parent / "ui"
_STATIC_NAME = re.compile(r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9]+)+$")
_REPORT_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
_PNG_NAME = re.compile(r"^[A-Za-z0-9_.\-]+\.png$")
REPLAY_TITLES = {"estimates.png": "Policy value estimates (with confidence intervals)",
                 "online.png": "Online run: cumulative reward and regret",
                 "action_shares.png": "Action shares by query intent"}
# The page loads only its own files; a key typed into it cannot be sent anywhere else.
CSP = ("default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; "
       "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


class _Holder(Protocol):
    @property
    def version(self) -> str | None: ...


class UiRuntime(Protocol):
    """What the router needs of services.serving.runtime.Runtime."""

    settings: Settings
    keys: Keys
    redis: redis.Redis
    policy: _Holder
    ranker: _Holder
    xr: _Holder


# --- the /stats/learning contract ---------------------------------------------------------------
class ActionStats(BaseModel):
    chosen: int = Field(description="searches that chose this action")
    share: float | None = Field(description="chosen / searches")
    rewarded: int = Field(description="decisions of this action whose reward was finalized")
    reward_sum: float
    reward_rate: float | None = Field(description="mean reward per finalized decision")
    positive_rate: float | None = Field(description="share of finalized decisions with reward > 0")


class StageLatency(BaseModel):
    count: int
    mean: float | None
    p50: float | None
    p95: float | None
    p99: float | None
    histogram: list[int] | None = Field(default=None, description="counts per latency_edges_ms bucket (+ overflow)")


class ActivitySpan(BaseModel):
    start: int = Field(description="unix seconds where this span starts")
    searches: int
    explored: int = Field(description="searches whose chosen action was not the policy's most probable")
    exploration_rate: float | None
    actions: dict[str, ActionStats]
    rewarded: int
    reward_rate: float | None
    lag_n: int = Field(description="rewards with a feedback lag (search -> feedback)")
    lag_mean_s: float | None
    lag_p50_s: float | None
    lag_p95_s: float | None
    latency_ms: dict[str, StageLatency] = Field(description="per pipeline stage (context, bandit, retrieve, ...)")
    lag_histogram: list[int] | None = None


class ActivitySeries(BaseModel):
    minutes: int
    bin_minutes: int = Field(description="minutes per bin")
    start: int
    end: int
    now: float
    bins: list[ActivitySpan] = Field(description="oldest first")
    totals: ActivitySpan
    latency_edges_ms: list[float]
    lag_edges_s: list[float]


class ModelDecision(BaseModel):
    ts: float | None = None
    kind: str
    version: str | None = None
    decision: str
    report: dict[str, JsonValue] = Field(default_factory=dict, description="the gate's numbers")


class ModelsInfo(BaseModel):
    current: dict[str, str | None] = Field(description="version serving now, per model kind")
    decisions: list[ModelDecision] = Field(description="newest first")


class ReplayImage(BaseModel):
    title: str
    url: str


class ReplayReport(BaseModel):
    name: str
    modified: float
    images: list[ReplayImage]


class LearningStats(BaseModel):
    activity: ActivitySeries
    models: ModelsInfo
    replay: ReplayReport | None = Field(description="the newest report under <data_dir>/reports with PNGs")


# --- helpers ---------------------------------------------------------------------------------------
def _decisions(models_dir: Path, limit: int) -> list[ModelDecision]:
    out = []
    for rec in reversed(read_decisions(models_dir, limit)):
        try:
            out.append(ModelDecision.model_validate(
                {**rec, "version": None if rec.get("version") is None else str(rec["version"]),
                 "report": rec.get("report") if isinstance(rec.get("report"), dict) else {}}))
        except ValueError as exc:  # a line another writer got wrong costs that line only
            log.warning("skipping decision %r: %s", rec, exc)
    return out


def reports_dir(settings: Settings) -> Path:
    return settings.data_dir / "reports"


def newest_report(root: Path) -> ReplayReport | None:
    """The most recently written report directory (directly under `root`) that has PNG plots."""
    best: tuple[float, Path, list[Path]] | None = None
    if not root.is_dir():
        return None
    for d in root.iterdir():
        if not d.is_dir() or not _REPORT_NAME.match(d.name):
            continue
        pngs = sorted(p for p in d.glob("*.png") if _PNG_NAME.match(p.name))
        if not pngs:
            continue
        mtime = max(p.stat().st_mtime for p in pngs)
        if best is None or mtime > best[0]:
            best = (mtime, d, pngs)
    if best is None:
        return None
    mtime, d, pngs = best
    return ReplayReport(name=d.name, modified=mtime, images=[
        ReplayImage(title=REPLAY_TITLES.get(p.name, p.stem.replace("_", " ")),
                    url=f"/stats/replay/{d.name}/{p.name}?v={int(p.stat().st_mtime)}") for p in pngs])


def _unavailable(message: str) -> JSONResponse:
    return JSONResponse(status_code=503, headers={"Retry-After": "1"},
                        content={"error": {"code": "unavailable", "message": message, "details": []}})


def _not_found(what: str) -> JSONResponse:
    return JSONResponse(status_code=404, content={"error": {"code": "not_found", "message": f"{what} not found",
                                                            "details": []}})


def _static(path: Path) -> Response:
    media = mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    if path.suffix == ".js":
        media = "text/javascript"
    headers = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
    if path.suffix == ".html":
        headers["Content-Security-Policy"] = CSP
        headers["Referrer-Policy"] = "no-referrer"
    return FileResponse(path, media_type=media, headers=headers)


# --- the router -------------------------------------------------------------------------------------
def ui_router(runtime: UiRuntime, stats_guard: Callable[[Request], None] | None = None) -> APIRouter:
    """`stats_guard` is the API's key check for /search: the learning stats are as public as search."""
    router = APIRouter()
    recorder = ActivityRecorder(runtime.redis, runtime.keys)
    guards = [Depends(stats_guard)] if stats_guard is not None else []

    @router.get("/", include_in_schema=False)
    def index() -> Response:
        return _static(STATIC_DIR / "index.html")

    @router.get("/ui/{name}", include_in_schema=False)
    def static_file(name: str) -> Response:
        if not _STATIC_NAME.match(name) or not (STATIC_DIR / name).is_file():
            return _not_found(f"/ui/{name}")
        return _static(STATIC_DIR / name)

    @router.get("/ui", include_in_schema=False)
    @router.get("/ui/", include_in_schema=False)
    def ui_index() -> Response:
        return _static(STATIC_DIR / "index.html")

    @router.get("/stats/replay/{report}/{image}", tags=["learning"], dependencies=guards,
                response_class=FileResponse, responses={404: {"description": "no such report image"}})
    def replay_image(report: str, image: str) -> Response:
        """A PNG plot of a replay report under <data_dir>/reports (names only; no paths)."""
        root = reports_dir(runtime.settings)
        path = root / report / image
        if not _REPORT_NAME.match(report) or report.startswith(".") or not _PNG_NAME.match(image) \
                or not path.is_file():
            return _not_found("report image")
        return FileResponse(path, media_type="image/png", headers={"Cache-Control": "no-cache"})

    @router.get("/stats/learning", response_model=LearningStats, tags=["learning"], dependencies=guards,
                responses={503: {"description": "Redis unreachable; retry after Retry-After seconds"}})
    def learning(
        minutes: Annotated[int, Query(ge=1, le=2880, description="window: the last N minutes (at most 48 h)")] = 60,
        bins: Annotated[int, Query(ge=1, le=240, description="time bins the window is cut into")] = 60,
        decisions: Annotated[int, Query(ge=0, le=500, description="newest model decisions to return")] = 30,
    ) -> LearningStats | JSONResponse:
        """What the service has been doing and learning: per time bin, the share of each bandit
        action, the reward rate per action, the exploration rate, the feedback lag and per-stage
        latency percentiles; the model versions serving now with the promotion/refusal decisions
        (and their gate numbers) that led there; the newest replay report's plots."""
        try:
            series = recorder.series(minutes, bins=bins)
        except (redis.RedisError, OSError) as exc:
            log.warning("learning stats unavailable: %s", exc)
            return _unavailable("activity store (Redis) unavailable; retry later")
        models = ModelsInfo(
            current={"bandit": runtime.policy.version, "ranker": runtime.ranker.version, "xr": runtime.xr.version},
            decisions=_decisions(runtime.settings.models_dir, decisions))
        return LearningStats(activity=ActivitySeries.model_validate(series), models=models,
                             replay=newest_report(reports_dir(runtime.settings)))

    return router
