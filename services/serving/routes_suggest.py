"""GET /suggest: session-aware query autocompletion.

The previous query of the session is the newest entry of the Redis list
`keys.session_queries(session_id)`, which the search pipeline LPUSHes. The route only reads:
a bad request or a Redis outage never writes anything. Without Redis the suggestions lose their
session context but still come back (autocompletion should degrade, not fail, on every keystroke).
"""

# No `from __future__ import annotations`: FastAPI must resolve the route's Annotated[...,
# Depends(get_runtime)], and get_runtime is local to suggest_router.
import logging
import time
from typing import Annotated, Literal, Protocol

import redis
from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse
from pydantic import AfterValidator, BaseModel, Field

from services.keys import Keys
from services.serving.api_models import QUERY_PATTERN, ErrorBody, ErrorResponse
from services.serving.suggest_service import SuggestService

log = logging.getLogger("ltrr.suggest")
MAX_PREFIX_CHARS = 100
MAX_LIMIT = 20


class SuggestItem(BaseModel):
    text: str = Field(description="the completed query, normalized as /search sees it")
    kind: Literal["query", "artist", "track", "album"]
    entity_id: str | None = Field(description="the track a `track` suggestion opens; null otherwise")
    score: float


class SuggestResponse(BaseModel):
    prefix: str
    previous_query: str | None = Field(description="the session's previous query the ranking used, if any")
    suggestions: list[SuggestItem]
    model_version: str
    took_ms: float


class SuggestRuntime(Protocol):
    """What the route needs from services.serving.runtime.Runtime."""

    suggest: SuggestService | None
    redis: redis.Redis | None
    keys: Keys


def _prefix(value: str) -> str:
    # The published schema (QUERY_PATTERN) says the same: some non-whitespace character, no NUL.
    if "\x00" in value:
        raise ValueError("must not contain NUL")
    if not value.strip():
        raise ValueError("must not be empty or only whitespace")
    # A trailing space is meaningful ("taylor " = first word complete); leading ones are not.
    return value.lstrip()


Prefix = Annotated[str, Query(description=f"what the user typed: 1-{MAX_PREFIX_CHARS} characters, not only "
                                          "whitespace, no NUL; a trailing space means the last word is complete",
                              max_length=MAX_PREFIX_CHARS,
                              json_schema_extra={"minLength": 1, "pattern": QUERY_PATTERN}),
                   AfterValidator(_prefix)]


def previous_query(runtime: SuggestRuntime, session_id: str | None) -> str | None:
    if not session_id or runtime.redis is None:
        return None
    try:
        got = runtime.redis.lindex(runtime.keys.session_queries(session_id), 0)
    except (redis.RedisError, OSError):
        log.warning("suggest: session store unavailable; suggesting without session context")
        return None
    if got is None:
        return None
    return got.decode("utf-8", "replace") if isinstance(got, bytes) else str(got)


def suggest_router(runtime: SuggestRuntime) -> APIRouter:
    """The router, bound to a runtime through a dependency: the route reads `runtime.suggest`
    on every request, so a runtime that swaps in a newer model is picked up without a restart."""
    router = APIRouter()

    def get_runtime() -> SuggestRuntime:
        return runtime

    @router.get("/suggest", response_model=SuggestResponse, tags=["suggest"],
                responses={422: {"model": ErrorResponse, "description": "invalid parameters; details name each"},
                           503: {"model": ErrorResponse, "description": "no suggestion model is built yet"}})
    def suggest(
        rt: Annotated[SuggestRuntime, Depends(get_runtime)],
        prefix: Prefix,
        session_id: Annotated[str | None, Query(min_length=1, max_length=128)] = None,
        user_id: Annotated[str | None, Query(min_length=1, max_length=128,
                                             description="accepted for parity with /search; not used yet")] = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIMIT)] = 10,
    ) -> SuggestResponse | JSONResponse:
        t0 = time.perf_counter()
        service = rt.suggest
        if service is None:
            body = ErrorResponse(error=ErrorBody(code="unavailable", message="no suggestion model is built yet; "
                                                 "run the build (ltrr up / ltrr index build)"))
            return JSONResponse(status_code=503, content=body.model_dump())
        prev = previous_query(rt, session_id)
        items = service.suggest(prefix, prev, limit)
        return SuggestResponse(
            prefix=prefix, previous_query=prev or None, model_version=service.version,
            suggestions=[SuggestItem(text=s.text, kind=s.kind, entity_id=s.entity_id,  # type: ignore[arg-type]
                                     score=s.score) for s in items],
            took_ms=round((time.perf_counter() - t0) * 1e3, 3))

    return router

