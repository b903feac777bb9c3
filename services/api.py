"""The HTTP API: /search, /feedback, /health, /metrics, /admin/*. Models in api_models are the
contract; every error is an ErrorResponse with a code, a message and per-field details."""

from __future__ import annotations

import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any

import redis
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from services import metrics
from services.api_models import (
    MAX_QUERY_CHARS,
    DebugInfo,
    ErrorResponse,
    FeedbackAccepted,
    Health,
    ReloadResult,
    SearchHit,
    SearchRequest,
    SearchResponse,
)
from services.feedback import parse_feedback_body

log = logging.getLogger("ltrr.api")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, details: list[dict[str, Any]] | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.details = details or []
        self.headers = headers


def _error(status: int, code: str, message: str, details: list[dict[str, Any]] | None = None,
           headers: dict[str, str] | None = None) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": details or []}}
    return JSONResponse(status_code=status, content=body, headers=headers)


def _loc(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query")]
    return ".".join(parts) or "request"


ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse, "description": "missing API key"},
    403: {"model": ErrorResponse, "description": "wrong API key"},
    413: {"model": ErrorResponse, "description": "request too large"},
    422: {"model": ErrorResponse, "description": "invalid request; details name each field"},
    503: {"model": ErrorResponse, "description": "Redis unreachable; retry after Retry-After seconds"},
}


class BodyLimit:
    """Refuses bodies over `limit` bytes before they are read into memory (413)."""

    def __init__(self, app: Any, limit: int, max_query_string: int = 4096):
        self.app, self.limit, self.max_qs = app, limit, max_query_string

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
                       send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if len(scope.get("query_string", b"")) > self.max_qs:
            await _error(414, "uri_too_long", f"query string over {self.max_qs} bytes")(scope, receive, send)
            return
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.limit:
                await _error(413, "payload_too_large", f"body over {self.limit} bytes")(scope, receive, send)
                return
        seen = 0

        async def limited() -> dict[str, Any]:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.limit:
                    raise ApiError(413, "payload_too_large", f"body over {self.limit} bytes")
            return msg

        await self.app(scope, limited, send)


def create_app(runtime: Any) -> FastAPI:
    """`runtime` is a services.runtime.Runtime (or anything with the same attributes)."""
    s = runtime.settings

    @asynccontextmanager
    async def lifespan(_: FastAPI):  # type: ignore[no-untyped-def]
        runtime.start_background()
        yield
        runtime.close()

    app = FastAPI(
        title="ltrr", version="0.1.0", lifespan=lifespan,
        description="Music search that learns to rank and to retrieve: a contextual bandit picks the "
                    "retrievers, LightGBM ranks their union, and feedback teaches both.",
    )
    if s.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(s.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Content-Type", "X-API-Key", "Authorization"])
    app.add_middleware(BodyLimit, limit=s.max_body_bytes)

    @app.middleware("http")
    async def count(request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        response = await call_next(request)
        route = request.scope.get("route")
        metrics.HTTP_REQUESTS.labels(route=getattr(route, "path", "unmatched"),
                                     status=str(response.status_code)).inc()
        return response

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = [{"field": _loc(tuple(e["loc"])), "message": e["msg"].removeprefix("Value error, ")}
                   for e in exc.errors()]
        msg = "; ".join(f"{d['field']}: {d['message']}" for d in details[:5])
        return _error(422, "validation_error", msg, details)

    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.code, exc.message, exc.details, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return _error(exc.status_code, "http_error", str(exc.detail))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        # No stack traces or paths to clients; the log has them.
        log.exception("unhandled error on %s", request.url.path)
        metrics.ERRORS.labels(kind="internal").inc()
        return _error(500, "internal_error", "internal error; it has been logged")

    def _check_key(request: Request, required: bool) -> None:
        if not required or not s.api_keys:
            return
        given = request.headers.get("x-api-key")
        auth = request.headers.get("authorization", "")
        if given is None and auth.lower().startswith("bearer "):
            given = auth[7:].strip()
        if not given:
            raise ApiError(401, "unauthorized", "an API key is required (X-API-Key header or Bearer token)",
                           headers={"WWW-Authenticate": "Bearer"})
        # Compare against every key without short-circuiting so timing does not reveal which matched.
        ok = False
        for key in s.api_keys:
            ok |= hmac.compare_digest(given.encode(), key.encode())
        if not ok:
            raise ApiError(403, "forbidden", "the API key is not valid")

    def require_key(request: Request) -> None:
        _check_key(request, True)

    def search_key(request: Request) -> None:
        _check_key(request, s.search_requires_key)

    def _do_search(req: SearchRequest) -> SearchResponse:
        out = runtime.pipeline.search(req.q, req.limit, user_id=req.user_id, session_id=req.session_id,
                                      locale=req.context.locale, device=req.context.device,
                                      ts=req.context.timestamp)
        cat = runtime.catalog
        hits = []
        names = out.record.feature_names
        for i, tid in enumerate(out.record.served):
            t = cat.by_id[tid]
            feats = None
            if req.debug and out.features is not None:
                feats = {n: (None if v != v else float(v)) for n, v in zip(names, out.features[i], strict=True)}
            hits.append(SearchHit(track_id=tid, title=t.title, artist=t.artist, album=t.album, genres=list(t.genres),
                                  score=out.scores[i], retrievers=out.found_by.get(tid, []), features=feats))
        debug = None
        if req.debug:
            rec = out.record
            debug = DebugInfo(
                policy=rec.policy, action=list(rec.actions[rec.chosen].arms), budget=rec.actions[rec.chosen].budget,
                propensity=rec.propensity,
                probabilities={a.key: p for a, p in zip(rec.actions, rec.probabilities, strict=True)},
                timings_ms={k: round(v, 3) for k, v in out.timings_ms.items()}, failed_retrievers=rec.failed,
                candidates_per_retriever={k: len(v) for k, v in rec.candidates.items()},
                bandit_version=rec.bandit_version, ranker_version=rec.ranker_version, context=out.context)
        log.info("search", extra={"search_id": out.record.search_id, "q_len": len(req.q),
                                  "action": out.decision.action.key, "ms": round(out.timings_ms["total"], 2)})
        return SearchResponse(search_id=out.record.search_id, query=req.q, results=hits, debug=debug)

    @app.get("/search", response_model=SearchResponse, responses=ERRORS, tags=["search"],
             dependencies=[Depends(search_key)])
    def search_get(
        q: Annotated[str, Query(max_length=MAX_QUERY_CHARS * 4, description="the query (1-512 chars after trim)")],
        limit: Annotated[int, Query(ge=1, le=100)] = 10,
        user_id: Annotated[str | None, Query(min_length=1, max_length=128)] = None,
        session_id: Annotated[str | None, Query(min_length=1, max_length=128)] = None,
        locale: Annotated[str | None, Query(max_length=16)] = None,
        device: Annotated[str | None, Query(max_length=16)] = None,
        debug: bool = False,
    ) -> SearchResponse:
        try:
            # Validated as one document so errors name their full path (context.device).
            req = SearchRequest.model_validate({
                "q": q, "limit": limit, "user_id": user_id, "session_id": session_id, "debug": debug,
                "context": {k: v for k, v in (("locale", locale), ("device", device)) if v is not None}})
        except ValidationError as exc:
            raise RequestValidationError(exc.errors()) from None
        return _do_search(req)

    @app.post("/search", response_model=SearchResponse, responses=ERRORS, tags=["search"],
              dependencies=[Depends(search_key)])
    def search_post(req: SearchRequest) -> SearchResponse:
        return _do_search(req)

    @app.post("/feedback", status_code=202, response_model=FeedbackAccepted, responses=ERRORS, tags=["feedback"],
              dependencies=[Depends(require_key)],
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {
                  "oneOf": [{"$ref": "#/components/schemas/FeedbackEventIn"},
                            {"$ref": "#/components/schemas/FeedbackBatchIn"}]}}}}})
    async def feedback(request: Request) -> FeedbackAccepted:
        raw = await request.body()
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ApiError(422, "invalid_json", f"body is not valid JSON: {exc}") from None
        parsed, errors = parse_feedback_body(body)
        if parsed is None:
            metrics.FEEDBACK_EVENTS.labels(outcome="rejected").inc()
            raise ApiError(422, "validation_error", errors[0]["message"] + "; nothing was written", errors)
        n = len(parsed) + len({e["index"] for e in errors})
        try:
            # Schema-valid events are checked against their searches too, so one response
            # reports every bad event of the batch.
            ready, bad = await _in_thread(lambda: runtime.ingest.validate(
                [e for _, e in parsed], indices=[i for i, _ in parsed]))
            errors += [e.as_dict() for e in bad]
            if errors:
                metrics.FEEDBACK_EVENTS.labels(outcome="rejected").inc(n)
                n_bad = len({e["index"] for e in errors})
                raise ApiError(422, "invalid_events", f"{n_bad} of {n} event(s) are invalid; nothing was written",
                               sorted(errors, key=lambda e: (e["index"] is None, e["index"] or 0)))
            accepted = await _in_thread(runtime.ingest.write, ready)
        except (redis.RedisError, OSError) as exc:
            metrics.FEEDBACK_EVENTS.labels(outcome="unavailable").inc(n)
            log.warning("feedback refused, redis unavailable: %s", exc)
            raise ApiError(503, "unavailable", "feedback store unavailable; nothing was written, retry later",
                           headers={"Retry-After": "1"}) from None
        metrics.FEEDBACK_EVENTS.labels(outcome="accepted").inc(len(accepted))
        return FeedbackAccepted(accepted=len(accepted), event_ids=accepted)

    @app.get("/health", response_model=Health, tags=["ops"])
    def health() -> Health:
        ok = runtime.redis_ok()
        return Health(status="ok" if ok else "degraded", redis=ok, catalog_tracks=len(runtime.catalog),
                      retrievers=sorted(runtime.pipeline.p.retrievers), bandit_version=runtime.policy.version,
                      ranker_version=runtime.ranker.version, worker=runtime.worker_alive())

    @app.get("/metrics", tags=["ops"], response_class=Response)
    def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/admin/reload", response_model=ReloadResult, responses=ERRORS, tags=["admin"],
              dependencies=[Depends(require_key)])
    def reload_models() -> ReloadResult:
        for h in runtime.holders():
            h.refresh()
        return ReloadResult(bandit_version=runtime.policy.version, ranker_version=runtime.ranker.version,
                            xr_version=runtime.xr_version())

    return app


async def _in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(fn, *args)


def app_from_env() -> FastAPI:
    """uvicorn's app factory for `ltrr serve` with several worker processes: each one builds its
    own Runtime from the LTRR_* environment that the parent exported."""
    from services.config import Settings
    from services.logging_setup import setup_logging
    from services.runtime import Runtime

    settings = Settings.from_env()
    setup_logging(settings.log_level, json_logs=settings.log_json)
    return create_app(Runtime(settings))
