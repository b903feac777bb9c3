"""GET /search/{search_id}: a later page of a search.

A page is cut from the ranking the search kept (services.decision_store `ranked`, the first
`page_depth` results), not from a new search: pages of one search never repeat or skip a track
when the models change in between, they keep its `search_id`, and their hits carry absolute
positions. Showing a page records its tracks in the search's served list at those positions,
so `/feedback` on the 14th result names position 14, and the reward, the click memory and the
ranker's labels count it like a first-page click.
"""

# No `from __future__ import annotations`: FastAPI must resolve the route's Annotated[...,
# Depends(get_runtime)], and get_runtime is local to pages_router.
import logging
from collections.abc import Callable
from typing import Annotated, Protocol

import redis
from fastapi import APIRouter, Depends, Path, Query, Request
from fastapi.responses import JSONResponse

from logged.records import is_entity_id
from services.catalog import Catalog
from services.decision_store import DecisionStore
from services.serving.api_models import EntityHit, ErrorBody, ErrorResponse, SearchHit, SearchResponse
from services.serving.entities import EntityIndex, PlacedEntity

log = logging.getLogger("ltrr.pages")
SEARCH_ID_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"


class PagesRuntime(Protocol):
    """What the route needs from services.serving.runtime.Runtime."""

    catalog: Catalog
    decisions: DecisionStore
    entities: EntityIndex


def _error(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse(status_code=status,
                        content=ErrorResponse(error=ErrorBody(code=code, message=message)).model_dump())


def pages_router(runtime: PagesRuntime, guard: Callable[[Request], None]) -> APIRouter:
    """The router; `guard` is /search's API-key check (a page is part of a search)."""
    router = APIRouter()

    def get_runtime() -> PagesRuntime:
        return runtime

    @router.get("/search/{search_id}", response_model=SearchResponse, tags=["search"],
                dependencies=[Depends(guard)],
                responses={404: {"model": ErrorResponse, "description": "unknown or expired search_id"},
                           422: {"model": ErrorResponse, "description": "invalid parameters; details name each"},
                           503: {"model": ErrorResponse, "description": "the search state store is unavailable"}})
    def search_page(
        rt: Annotated[PagesRuntime, Depends(get_runtime)],
        search_id: Annotated[str, Path(description="the `search_id` of the search's first page",
                                       pattern=SEARCH_ID_PATTERN)],
        offset: Annotated[int, Query(ge=0, le=99, description="results to skip (10 = the second page of 10)")] = 10,
        limit: Annotated[int, Query(ge=1, le=100)] = 10,
    ) -> SearchResponse | JSONResponse:
        store = rt.decisions
        try:
            ranked = store.ranked(search_id)
            if ranked is None:
                return _error(404, "search_not_found", f"unknown or expired search_id '{search_id}' (a search "
                                                       f"keeps its pages for {store.page_ttl_s} s)")
            cut = slice(offset, offset + limit)
            ids = ranked.ids[cut]
            # Before answering: a page whose tracks could not be recorded would refuse their feedback.
            shown = {i: ranked.entities[i][1] for i in ids if i in ranked.entities}
            if not store.show(search_id, offset, ids, shown):
                return _error(404, "search_not_found", f"search '{search_id}' expired")
        except (redis.RedisError, OSError) as exc:
            log.warning("page of %s: search state store unavailable: %s", search_id, exc)
            return _error(503, "unavailable", "the search state store is unavailable; retry shortly")
        hits: list[SearchHit | EntityHit] = []
        for pos, (tid, score, by) in enumerate(zip(ids, ranked.scores[cut], ranked.found_by[cut], strict=True),
                                               start=offset + 1):
            if is_entity_id(tid):  # an artist or album hit, with the top tracks it was served with
                e = rt.entities.get(tid)
                if e is not None and tid in ranked.entities:
                    match, tracks = ranked.entities[tid]
                    hits.append(EntityHit.of_entity(PlacedEntity(pos, e, tuple(tracks), match, score),  # type: ignore[arg-type]
                                                    rt.catalog))
                continue
            t = rt.catalog.by_id.get(tid)
            if t is None:  # the catalog was rebuilt since the search: skip what it no longer holds
                continue
            hits.append(SearchHit.of_track(t, position=pos, score=score, retrievers=by,
                                           versions=ranked.versions.get(tid, [])))
        return SearchResponse(search_id=search_id, query=ranked.query, results=hits, offset=offset,
                              total=len(ranked.ids))

    return router
