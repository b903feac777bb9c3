"""The /search hot path over HTTP: the response document built straight from the pipeline's
outcome and serialized with orjson, and a lean route for the common GET /search.

Why: per request, FastAPI's parameter machinery (some 35 declared query parameters, most of them
filters) and the response model's re-validation cost as much CPU as the search itself (py-spy,
BENCHMARKS.md "The HTTP layer"). The published contract does not change:

* the response is the document `SearchResponse` describes, field for field (tests compare it
  with `SearchResponse.model_validate(...).model_dump(mode="json")`); the FastAPI routes keep
  `response_model=SearchResponse`, so /docs and /openapi.json are as before;
* the lean route answers only a GET whose parameters are all among `LEAN_PARAMS` and whose values
  are plainly valid (a 1-3 digit `limit`, `true`/`false`/`1`/`0` flags, a `SearchRequest` that
  validates). Anything else (filters, facets, a repeated or unknown parameter, any invalid value)
  goes to the FastAPI route, which answers exactly as it always did, errors included.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl

import orjson
from pydantic import ValidationError

from services.catalog import Catalog
from services.serving.api_models import EntityHit, SearchRequest

if TYPE_CHECKING:  # the pipeline imports the retrievers; this module only needs its types
    from services.serving.pipeline import SearchOutcome

# GET /search parameters the lean route understands; any other one (filters, facets) means the
# FastAPI route, whose declared parameters convert and validate it.
LEAN_PARAMS = frozenset({"q", "limit", "user_id", "session_id", "locale", "device", "debug", "analytics",
                         "collapse"})
_FLAGS = {"true": True, "false": False, "1": True, "0": False}
JSON_HEADERS = [(b"content-type", b"application/json")]

Message = dict[str, Any]


def lean_request(query_string: bytes) -> SearchRequest | None:
    """The SearchRequest of a plain GET /search, or None when the FastAPI route must decide.
    Parsed as Starlette parses it (latin-1 bytes, percent-decoded as UTF-8, blank values kept),
    so a request taken here means what it means there."""
    values: dict[str, str] = {}
    for name, value in parse_qsl(query_string.decode("latin-1"), keep_blank_values=True):
        if name not in LEAN_PARAMS or name in values:
            return None
        values[name] = value
    if "q" not in values:
        return None
    doc: dict[str, object] = {"q": values["q"]}
    limit = values.get("limit")
    if limit is not None:
        # Digits only: pydantic's lax int parsing ("+5", " 5", "5.0") is the FastAPI route's call.
        if not (limit.isascii() and limit.isdigit() and len(limit) <= 3):
            return None
        doc["limit"] = int(limit)
    for flag in ("debug", "analytics", "collapse"):
        raw = values.get(flag)
        if raw is not None:
            if raw not in _FLAGS:
                return None
            doc[flag] = _FLAGS[raw]
    for name in ("user_id", "session_id"):
        if name in values:
            doc[name] = values[name]
    context = {k: values[k] for k in ("locale", "device") if k in values}
    if context:
        doc["context"] = context
    try:
        return SearchRequest.model_validate(doc)
    except ValidationError:
        return None  # the FastAPI route names the field in its 422


def response_document(out: SearchOutcome, req: SearchRequest, catalog: Catalog) -> dict[str, object]:
    """The SearchResponse of a first page as plain JSON types, in its field order, without
    building and re-validating pydantic models per hit."""
    hits = []
    names = out.record.feature_names
    rows = out.features if req.debug else None
    for i, tid in enumerate(out.record.served):
        t = catalog.by_id[tid]
        feats = None
        if rows is not None:
            feats = {n: (None if v != v else float(v)) for n, v in zip(names, rows[i].tolist(), strict=True)}
        hits.append({"type": "track", "track_id": t.track_id, "position": out.positions[i], "title": t.title,
                     "artist": t.artist,
                     "album": t.album, "genres": list(t.genres), "year": t.year, "score": _num(out.scores[i]),
                     "retrievers": list(out.found_by.get(tid, ())), "versions": list(out.versions.get(tid, ())),
                     "features": feats})
    if out.entities:
        # Artists and albums at their positions among the tracks; few per page, so built through
        # their model (which resolves their top tracks) and dumped.
        hits += [EntityHit.of_entity(p, catalog).model_dump(mode="json") for p in out.entities]
        hits.sort(key=lambda h: h["position"])  # type: ignore[arg-type, return-value]
    debug = None
    if req.debug:
        rec = out.record
        chosen = rec.actions[rec.chosen]
        debug = {"policy": rec.policy, "action": list(chosen.arms), "budget": chosen.budget,
                 "propensity": float(rec.propensity),
                 "probabilities": {a.key: float(p) for a, p in zip(rec.actions, rec.probabilities, strict=True)},
                 "timings_ms": {k: round(float(v), 3) for k, v in out.timings_ms.items()},
                 "failed_retrievers": list(rec.failed),
                 "retriever_deadlines_ms": {k: round(float(v), 2) for k, v in out.deadlines_ms.items()},
                 "candidates_per_retriever": {k: len(v) for k, v in rec.candidates.items()},
                 "bandit_version": rec.bandit_version, "ranker_version": rec.ranker_version,
                 "context": {k: _num(v) for k, v in out.context.items()}}
    return {"search_id": out.record.search_id, "query": req.q, "results": hits, "offset": 0, "total": out.total,
            "facets": _facets(out.facets), "debug": debug}


def _num(v: float) -> float | None:
    """A float for the JSON document; NaN and infinities as null, as pydantic writes them."""
    f = float(v)
    return f if f - f == 0 else None


def _facets(facets: Mapping[str, Mapping[str, int]] | None) -> dict[str, dict[str, int]] | None:
    return None if facets is None else {k: {str(v): int(n) for v, n in c.items()} for k, c in facets.items()}


def json_bytes(doc: object) -> bytes:
    """Compact UTF-8 JSON, as Starlette's JSONResponse writes it (non-ASCII as is, no spaces)."""
    return orjson.dumps(doc)


async def send_json(send: Callable[[Message], Awaitable[None]], status: int, body: bytes,
                    headers: list[tuple[bytes, bytes]] | None = None) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [*JSON_HEADERS, (b"content-length", str(len(body)).encode()), *(headers or [])]})
    await send({"type": "http.response.body", "body": body})
