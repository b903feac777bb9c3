"""The HTTP API: /search, /feedback, /health, /metrics, /admin/*. Models in api_models are the
contract; every error is an ErrorResponse with a code, a message and per-field details.

Client input never produces a 5xx: JSON bodies are parsed here with a nesting limit and a check
for lone surrogates (both used to escape as 500s), and an unexpected exception is answered as a
500 by the innermost middleware instead of propagating to the server, which would otherwise
close the client's keep-alive connection.

Why one module of this size: it is the HTTP contract of /search and /feedback in one place (the
middlewares that keep client input from becoming a 5xx, the error shape, the handlers); the
suggest and page routes already live in their own routers.
"""

from __future__ import annotations

import asyncio
import functools
import hmac
import json
import logging
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Annotated, Any

import redis
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import ConfigDict, ValidationError
from pydantic.json_schema import models_json_schema
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp

from services import metrics
from services.serving.admission import Overloaded, SearchAdmission
from services.serving.api_models import (
    LOCALE_PATTERN,
    MAX_QUERY_CHARS,
    QUERY_PATTERN,
    Device,
    ErrorResponse,
    FeedbackAccepted,
    Health,
    ReloadResult,
    SearchRequest,
    SearchResponse,
)
from services.serving.feedback import MAX_FEEDBACK_BATCH, FeedbackBatchIn, FeedbackEventIn, parse_feedback_body
from services.serving.filters import SearchFilters
from services.serving.routes_pages import pages_router
from services.serving.routes_suggest import suggest_router
from services.serving.routes_ui import ui_router
from services.serving.search_http import json_bytes, lean_request, response_document, send_json

if TYPE_CHECKING:  # the runtime imports every part; the app only needs its type here
    from services.serving.runtime import Runtime

log = logging.getLogger("ltrr.api")

MAX_JSON_DEPTH = 32  # the deepest valid body is {"events": [{...}]}: 3 levels
MAX_QUERY_STRING = 12_288  # a 512-character q of 4-byte characters is 6 KiB percent-encoded


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, details: list[dict[str, Any]] | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.details = details or []
        self.headers = headers


def _printable(value: Any) -> Any:
    """Lone surrogates cannot be encoded as UTF-8, so an error message quoting one (a field name
    a client sent) would fail to render; they are shown as escapes instead."""
    if isinstance(value, str):
        return value.encode("utf-8", "backslashreplace").decode("utf-8")
    return value


def _error(status: int, code: str, message: str, details: list[dict[str, Any]] | None = None,
           headers: dict[str, str] | None = None) -> JSONResponse:
    clean = [{k: _printable(v) for k, v in d.items()} for d in details or []]
    body = {"error": {"code": code, "message": _printable(message), "details": clean}}
    return JSONResponse(status_code=status, content=body, headers=headers)


def _loc(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query")]
    return ".".join(parts) or "request"


def _responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    return {c: ERRORS[c] for c in codes}


_RETRY_AFTER = {"Retry-After": {"description": "seconds to wait before retrying", "schema": {"type": "integer"}}}
_AUTH = {"WWW-Authenticate": {"description": "Bearer", "schema": {"type": "string"}}}
ERRORS: dict[int, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "the body could not be read as JSON"},
    401: {"model": ErrorResponse, "description": "missing API key", "headers": _AUTH},
    403: {"model": ErrorResponse, "description": "wrong API key"},
    413: {"model": ErrorResponse, "description": "request too large"},
    414: {"model": ErrorResponse, "description": "query string too long"},
    415: {"model": ErrorResponse, "description": "the body must be sent as Content-Type: application/json"},
    422: {"model": ErrorResponse, "description": "invalid request; details name each field"},
    500: {"model": ErrorResponse, "description": "internal error (logged; no internals in the body)"},
    503: {"model": ErrorResponse, "description": "unavailable (feedback: Redis unreachable; search: the "
                                                "wait queue is full); retry after Retry-After seconds",
          "headers": _RETRY_AFTER},
}


def parse_json(raw: bytes) -> Any:
    """json.loads for untrusted bodies: 422 for invalid JSON, for nesting deeper than
    MAX_JSON_DEPTH (a 2,000-level body used to raise RecursionError) and for strings holding
    lone surrogates (legal JSON escapes, but not Unicode text: they cannot be stored or echoed)."""
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ApiError(422, "invalid_json", f"body is not valid JSON: {exc}") from None
    except RecursionError:
        raise ApiError(422, "invalid_json", f"body nests deeper than {MAX_JSON_DEPTH} levels") from None
    stack: list[tuple[Any, int]] = [(body, 1)]
    while stack:  # iterative: the check itself must not recurse
        value, depth = stack.pop()
        if isinstance(value, (dict, list)):
            if depth > MAX_JSON_DEPTH:
                raise ApiError(422, "invalid_json", f"body nests deeper than {MAX_JSON_DEPTH} levels")
            items = [*value.keys(), *value.values()] if isinstance(value, dict) else value
            stack.extend((v, depth + 1) for v in items)
        elif isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise ApiError(422, "invalid_json", "body holds a string with a lone surrogate (\\ud800-\\udfff "
                                                    "without its pair); send valid Unicode") from None
    return body


def require_json(request: Request) -> None:
    """415 unless the body is declared application/json. Besides being the contract, this keeps
    a page on another origin from posting feedback with a 'simple' (preflight-free) request."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/json":
        raise ApiError(415, "unsupported_media_type",
                       f"send the body as Content-Type: application/json (got '{media or 'none'}')",
                       headers={"Accept-Post": "application/json"})


class CatchAll:
    """Innermost middleware: an unexpected exception becomes a logged 500 ErrorResponse here.
    Left to propagate, it reaches the server, which then closes the connection, so the client's
    next request on that keep-alive connection failed with ECONNRESET."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
                       send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking(msg: dict[str, Any]) -> None:
            nonlocal started
            started = started or msg["type"] == "http.response.start"
            await send(msg)

        try:
            await self.app(scope, receive, tracking)
        except Exception:
            log.exception("unhandled error on %s", scope.get("path"))
            metrics.ERRORS.labels(kind="internal").inc()
            if started:  # half a response is out: only closing the connection can signal the error
                raise
            # No stack traces or paths to clients; the log has them.
            await _error(500, "internal_error", "internal error; it has been logged")(scope, receive, send)


class BodyLimit:
    """Refuses bodies over `limit` bytes before they are read into memory (413)."""

    def __init__(self, app: ASGIApp, limit: int, max_query_string: int = MAX_QUERY_STRING):
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


class CountRequests:
    """ltrr_http_requests_total by route and status. A plain ASGI middleware: Starlette's
    BaseHTTPMiddleware (`@app.middleware("http")`) runs every request through a task group and
    memory streams, which cost more per /search than the request counting itself (py-spy)."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
                       send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 0

        async def tracking(msg: dict[str, Any]) -> None:
            nonlocal status
            if msg["type"] == "http.response.start":
                status = msg["status"]
            await send(msg)

        await self.app(scope, receive, tracking)
        route = scope.get("route")  # set by the router (or the lean /search route) on the shared scope
        metrics.HTTP_REQUESTS.labels(route=getattr(route, "path", "unmatched"), status=str(status)).inc()


class LeanSearchGet:
    """GET /search without FastAPI's per-parameter machinery for the plain case (see
    services.serving.search_http): innermost middleware, so the size limits, the 500 guard, the
    request counter and CORS apply as to every route. Anything it does not take goes on to the
    FastAPI route unchanged."""

    def __init__(self, app: ASGIApp, handler: Callable[[dict[str, Any], SearchRequest], Awaitable[bytes]],
                 route: Callable[[], APIRoute | None]):
        self.app, self.handler, self.route = app, handler, route

    async def __call__(self, scope: dict[str, Any], receive: Callable[[], Awaitable[dict[str, Any]]],
                       send: Callable[[dict[str, Any]], Awaitable[None]]) -> None:
        if scope["type"] == "http" and scope["method"] == "GET" and scope["path"] == "/search":
            req = lean_request(scope.get("query_string", b""))
            if req is not None:
                scope["route"] = self.route()
                try:
                    body = await self.handler(scope, req)
                except ApiError as exc:
                    await _error(exc.status, exc.code, exc.message, exc.details, exc.headers)(scope, receive, send)
                    return
                await send_json(send, 200, body)
                return
        await self.app(scope, receive, send)


def create_app(runtime: Runtime) -> FastAPI:
    """The app over one assembled services.serving.runtime.Runtime."""
    s = runtime.settings

    # Searches run on threads of their own (at most max_active_searches at once, admission
    # control): loop.run_in_executor is a leaner hop than Starlette's run_in_threadpool (anyio
    # capacity limiter, backend detection), ~0.3 ms of the GIL per search in the py-spy profile.
    search_threads = ThreadPoolExecutor(max_workers=s.max_active_searches, thread_name_prefix="search")

    @asynccontextmanager
    async def lifespan(_: FastAPI):  # type: ignore[no-untyped-def]
        runtime.start_background()
        try:
            yield
        finally:
            # close() logs and skips what it cannot stop; nothing may escape into uvicorn's
            # "Application shutdown failed", which would skip the rest of the shutdown.
            try:
                search_threads.shutdown(wait=True)
                await _in_thread(runtime.close)
            except Exception:
                log.exception("shutdown failed")

    app = FastAPI(
        title="ltrr", version="0.1.0", lifespan=lifespan,
        description="Music search that learns to rank and to retrieve: a contextual bandit picks the "
                    "retrievers, LightGBM ranks their union, and feedback teaches both.",
    )
    # Added innermost first.
    # LeanSearchGet < CatchAll < BodyLimit < request counter < CORS (outermost, so every
    # response, errors included, carries the CORS headers).
    routes: dict[str, APIRoute] = {}  # filled in below, once the routes exist
    app.add_middleware(LeanSearchGet, handler=lambda scope, req: _lean_search(scope, req),
                       route=lambda: routes.get("GET /search"))
    app.add_middleware(CatchAll)
    app.add_middleware(BodyLimit, limit=s.max_body_bytes)
    app.add_middleware(CountRequests)

    if s.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(s.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Content-Type", "X-API-Key", "Authorization"])

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        details = [{"field": _loc(tuple(e["loc"])), "message": e["msg"].removeprefix("Value error, ")}
                   for e in exc.errors()]
        if any(e.get("type") == "json_invalid" for e in exc.errors()):
            return _error(422, "invalid_json", "body is not valid JSON", details)
        msg = "; ".join(f"{d['field']}: {d['message']}" for d in details[:5])
        return _error(422, "validation_error", msg, details)

    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> JSONResponse:
        return _error(exc.status, exc.code, exc.message, exc.details, exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {400: "invalid_body", 404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            # Starlette names only the first route on the path (GET /search and POST /search are
            # two routes); Allow must list every method the path answers.
            headers["Allow"] = ", ".join(_allowed_methods(app, request))
        return _error(exc.status_code, code, str(exc.detail), headers=headers)

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

    admission = SearchAdmission(s.max_active_searches, s.search_queue, s.shed_queue)

    async def _admitted_search(req: SearchRequest) -> bytes:
        """The response body of one admitted search (a SearchResponse document, serialized)."""
        try:
            async with admission.admit() as shed:
                loop = asyncio.get_running_loop()
                return await loop.run_in_executor(search_threads, functools.partial(_do_search, req, shed))
        except Overloaded:
            raise ApiError(503, "overloaded", f"{admission.waiting} searches are waiting; retry shortly",
                           headers={"Retry-After": "1"}) from None

    def _do_search(req: SearchRequest, shed: bool = False) -> bytes:
        out = runtime.pipeline.search(req.q, req.limit, user_id=req.user_id, session_id=req.session_id,
                                      locale=req.context.locale, device=req.context.device,
                                      ts=req.context.timestamp, analytics=req.analytics,
                                      collapse_versions=req.collapse, shed=shed, filters=req.filters,
                                      facets=req.facets, types=req.types)
        if log.isEnabledFor(logging.DEBUG):  # one line per search is a debugging aid, not an access log
            log.debug("search", extra={"search_id": out.record.search_id, "q_len": len(req.q),
                                       "action": out.decision.action.key, "ms": round(out.timings_ms["total"], 2)})
        # The document SearchResponse describes, built and serialized without re-validation
        # (services.serving.search_http); response_model below still documents it.
        return json_bytes(response_document(out, req, runtime.catalog))

    async def _lean_search(scope: dict[str, Any], req: SearchRequest) -> bytes:
        if s.search_requires_key:
            search_key(Request(scope))
        return await _admitted_search(req)

    search_errors = (401, 403, 414, 422, 500, 503)

    @app.get("/search", response_model=SearchResponse, responses=_responses(*search_errors), tags=["search"],
             dependencies=[Depends(search_key)])
    async def search_get(
        request: Request,
        q: Annotated[str, Query(description="the query: 1-512 characters, not only whitespace, no NUL",
                                json_schema_extra={"minLength": 1, "maxLength": MAX_QUERY_CHARS,
                                                   "pattern": QUERY_PATTERN})],
        filter_params: Annotated[FilterQuery, Query()],
        limit: Annotated[int, Query(ge=1, le=100)] = 10,
        user_id: Annotated[str | None, Query(min_length=1, max_length=128)] = None,
        session_id: Annotated[str | None, Query(min_length=1, max_length=128)] = None,
        locale: Annotated[str | None, Query(max_length=16, pattern=LOCALE_PATTERN)] = None,
        device: Annotated[Device | None, Query()] = None,
        debug: Annotated[bool, Query(description="`true` or `false` (also `1` / `0`)")] = False,
        analytics: Annotated[bool, Query(description="`false`: log nothing, accept no feedback")] = True,
        collapse: Annotated[bool, Query(description="one hit per recording")] = True,
        facets: Annotated[str | None, Query(max_length=64, pattern=r"^(genre|decade)(,(genre|decade))?$",
                                            description="comma list: `genre`, `decade`")] = None,
        types: Annotated[str | None, Query(max_length=64, pattern=TYPES_PATTERN,
                                           description="comma list of hit kinds: `track`, `artist`, `album` "
                                                       "(default all three)")] = None,
    ) -> Response:
        unknown = sorted(set(request.query_params) - GET_SEARCH_PARAMS)
        if unknown:
            # A misspelt filter (`yaer_from`) silently ignored would answer an unfiltered search.
            raise ApiError(422, "validation_error", f"unknown query parameter(s): {', '.join(unknown)}",
                           [{"field": u, "message": "unknown query parameter"} for u in unknown])
        for flag in ("debug", "analytics", "collapse"):
            raw = request.query_params.get(flag)
            if raw is not None and raw.lower() not in ("true", "false", "1", "0"):
                # Strict at the edge: "yes" or "on" is a typo more often than a wish for debug output.
                raise ApiError(422, "validation_error", f"{flag}: must be true or false",
                               [{"field": flag, "message": "must be true or false"}])
        try:
            # Validated as one document so errors name their full path (context.device).
            req = SearchRequest.model_validate({
                "q": q, "limit": limit, "user_id": user_id, "session_id": session_id, "debug": debug,
                "analytics": analytics, "collapse": collapse,
                "filters": filter_params.model_dump(exclude_none=True) or None,
                "facets": [f.strip() for f in facets.split(",") if f.strip()] if facets else [],
                **({"types": [t.strip() for t in types.split(",")]} if types is not None else {}),
                "context": {k: v for k, v in (("locale", locale), ("device", device)) if v is not None}})
        except ValidationError as exc:
            raise RequestValidationError(exc.errors()) from None
        return Response(await _admitted_search(req), media_type="application/json")

    @app.post("/search", response_model=SearchResponse, responses=_responses(400, 413, *search_errors),
              tags=["search"], dependencies=[Depends(search_key)])
    async def search_post(req: SearchRequest) -> Response:
        return Response(await _admitted_search(req), media_type="application/json")

    @app.post("/feedback", status_code=202, response_model=FeedbackAccepted,
              responses=_responses(401, 403, 413, 414, 415, 422, 500, 503), tags=["feedback"],
              dependencies=[Depends(require_key)],
              description=f"One event or `{{\"events\": [...]}}` (1-{MAX_FEEDBACK_BATCH}). 202 only once every "
                          "event is in the Redis stream; an `event_id` repeated within a batch is written and counted "
                          "once. "
                          "A batch is all or nothing: any invalid event gets a 422 and nothing is written.",
              openapi_extra={"requestBody": {"required": True, "content": {"application/json": {"schema": {
                  "anyOf": [{"$ref": "#/components/schemas/FeedbackEventIn"},
                            {"$ref": "#/components/schemas/FeedbackBatchIn"}]}}}}})
    async def feedback(request: Request) -> FeedbackAccepted:
        require_json(request)
        body = parse_json(await request.body())
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

    @app.get("/health", response_model=Health, tags=["ops"],
             responses={503: {"model": Health, "description": "degraded: Redis unreachable or the feedback "
                                                               "worker died (status says which)"}})
    def health() -> Response:
        ok = runtime.redis_ok()
        worker_dead = runtime.worker is not None and not runtime.worker_alive()
        body = Health(status="ok" if ok and not worker_dead else "degraded", redis=ok,
                      catalog_tracks=len(runtime.catalog), retrievers=sorted(runtime.pipeline.parts.retrievers),
                      bandit_version=runtime.policy.version, ranker_version=runtime.ranker.version,
                      worker=runtime.worker_alive(), trainer=runtime.trainer_alive(),
                      models=runtime.model_status())
        # 503 when degraded, so load balancers and orchestrators take the replica out of rotation.
        return JSONResponse(body.model_dump(mode="json"), status_code=200 if body.status == "ok" else 503)

    @app.get("/metrics", tags=["ops"], response_class=Response,
             responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {"schema": {"type": "string"}}},
                              "description": "Prometheus text exposition"}})
    def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @app.post("/admin/reload", response_model=ReloadResult, responses=_responses(401, 403, 500), tags=["admin"],
              dependencies=[Depends(require_key)])
    def reload_models() -> ReloadResult:
        for h in runtime.holders():
            h.refresh()
        return ReloadResult(bandit_version=runtime.policy.version, ranker_version=runtime.ranker.version,
                            xr_version=runtime.xr_version())

    # --- further routers (suggest, UI, ...) are included here: app.include_router(...) ------
    app.include_router(suggest_router(runtime))  # GET /suggest
    app.include_router(pages_router(runtime, guard=search_key))  # GET /search/{search_id}: later pages
    app.include_router(ui_router(runtime, stats_guard=search_key))  # the web page, /stats/learning

    _complete_openapi(app)
    # The lean GET /search names the FastAPI route in its scope, as the router does (metrics label).
    routes["GET /search"] = next(r for r in app.routes if isinstance(r, APIRoute) and r.path == "/search"
                                 and "GET" in (r.methods or ()))
    return app


class FilterQuery(SearchFilters):
    """SearchFilters as GET /search query parameters (strings converted; every other parameter
    of the endpoint is its own)."""

    model_config = ConfigDict(extra="ignore", strict=False)


TYPES_PATTERN = r"^ *(track|artist|album) *(, *(track|artist|album) *){0,2}$"
GET_SEARCH_PARAMS = frozenset({"q", "limit", "user_id", "session_id", "locale", "device", "debug", "analytics",
                               "collapse", "facets", "types", *SearchFilters.model_fields})


def _allowed_methods(app: FastAPI, request: Request) -> list[str]:
    methods: set[str] = set()
    for route in app.routes:
        if isinstance(route, APIRoute) and route.path_regex.match(request.url.path):
            methods |= route.methods or set()
    return sorted(methods)


def _complete_openapi(app: FastAPI) -> None:
    """The /feedback body is parsed by hand (per-event error reports), so FastAPI does not know
    its models: add FeedbackEventIn / FeedbackBatchIn to the components its schema refers to."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            spec = get_openapi(title=app.title, version=app.version, description=app.description,
                               routes=app.routes, tags=app.openapi_tags)
            _, defs = models_json_schema([(FeedbackEventIn, "validation"), (FeedbackBatchIn, "validation")],
                                         ref_template="#/components/schemas/{model}")
            spec.setdefault("components", {}).setdefault("schemas", {}).update(defs.get("$defs", {}))
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


async def _in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    from starlette.concurrency import run_in_threadpool

    return await run_in_threadpool(fn, *args)


def app_from_env() -> FastAPI:
    """uvicorn's app factory for `ltrr serve` with several worker processes: each one builds its
    own Runtime from the LTRR_* environment that the parent exported."""
    from services.config import Settings
    from services.logging_setup import setup_logging
    from services.serving.runtime import Runtime, freeze_loaded_heap

    settings = Settings.from_env()
    setup_logging(settings.log_level, json_logs=settings.log_json)
    runtime = Runtime(settings)
    freeze_loaded_heap()
    return create_app(runtime)
