"""`/feedback` ingestion: validate against the logged search, then append to a Redis Stream.

The 202 is only returned after XADD succeeded (Redis runs with AOF), so an acknowledged event is
durable; the worker applies it later, idempotently by event_id. A batch is all-or-nothing: if any
event is invalid, nothing is written and every bad event is reported.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Annotated, Any

import redis
from annotated_types import Interval
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator
from pydantic_core import PydanticCustomError

from logged.records import ENTITY_ID_PATTERN, EventType, FeedbackEvent
from services.decision_store import DecisionStore, Served
from services.keys import Keys
from services.serving.json_types import JSON_INTEGER, JsonInt

MAX_CLOCK_SKEW_S = 300.0
MAX_FEEDBACK_BATCH = 1000  # events per request: the schema, the parser and the docs say the same


class FeedbackEventIn(BaseModel):
    """What clients send. `event_id` is the client's idempotency key (a UUID is generated if
    absent); `timestamp` is unix seconds or ISO-8601 and defaults to receipt time. An event on an
    artist or album hit names its `entity_id` (at the entity's position) and, optionally, which of
    its top tracks was played (`track_id`; default the first, what the entity's Play plays)."""

    event_id: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_\-:.]+$")
    search_id: str = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_\-]+$")
    # Before track_id: its validator reads entity_id.
    entity_id: str | None = Field(default=None, max_length=96, pattern=ENTITY_ID_PATTERN,
                                  description="an artist or album hit's id, for an event on that hit")
    track_id: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_\-]+$",
                                 validate_default=True,
                                 description="the track acted on; with `entity_id`, one of the entity's top tracks "
                                             "(default its first)")
    type: EventType
    position: JsonInt = Field(ge=1, le=1000)
    timestamp: float | None = None
    user_id: str | None = Field(default=None, min_length=1, max_length=128)
    session_id: str | None = Field(default=None, min_length=1, max_length=128)
    dwell_ms: Annotated[int, Interval(ge=0, le=86_400_000), JSON_INTEGER] | None = None

    # strict: a JSON `true` is not position 1 and "3" is not 3; only timestamp converts (ISO-8601).
    model_config = ConfigDict(extra="forbid", strict=True)

    @field_validator("track_id")
    @classmethod
    def _track_or_entity(cls, v: str | None, info: ValidationInfo) -> str | None:
        if v is None and info.data.get("entity_id") is None:
            raise PydanticCustomError("missing", "Field required (or an entity_id for an event on an artist or "
                                                 "album hit)")
        return v

    @field_validator("timestamp", mode="before")
    @classmethod
    def _ts(cls, v: Any) -> Any:
        if isinstance(v, str):
            from datetime import datetime

            try:
                return datetime.fromisoformat(v.replace("Z", "+00:00")).timestamp()
            except ValueError:
                raise ValueError("timestamp must be unix seconds or ISO-8601") from None
        return v


class FeedbackBatchIn(BaseModel):
    events: list[FeedbackEventIn] = Field(min_length=1, max_length=MAX_FEEDBACK_BATCH)
    model_config = ConfigDict(extra="forbid", strict=True)


@dataclass
class EventError:
    index: int
    field: str
    message: str

    def as_dict(self) -> dict[str, object]:
        return {"index": self.index, "field": self.field, "message": self.message}


@dataclass
class IngestResult:
    accepted: list[str] = field(default_factory=list)
    errors: list[EventError] = field(default_factory=list)


class FeedbackIngest:
    def __init__(self, client: redis.Redis, keys: Keys, decisions: DecisionStore, *, stream_maxlen: int = 5_000_000,
                 recording_of: Mapping[str, str] | None = None):
        self.redis = client
        self.keys = keys
        self.decisions = decisions
        self.stream_maxlen = stream_maxlen
        # track id -> recording (services.serving.recordings.recording_key): a page shows one hit per
        # recording, and a client that plays another release of it (the hit's `versions`) names
        # that release; the event is then recorded on the hit that was served.
        self.recording_of = recording_of or {}

    def validate(self, events: list[FeedbackEventIn], *, now: float | None = None,
                 indices: list[int] | None = None) -> tuple[list[FeedbackEvent], list[EventError]]:
        """Checks events against their logged searches (one pipelined round trip). `indices` are
        the events' positions in the client's batch, for error reports."""
        now = time.time() if now is None else now
        indices = indices if indices is not None else list(range(len(events)))
        served = self.decisions.served(e.search_id for e in events)
        ready: list[FeedbackEvent] = []
        errors: list[EventError] = []
        for i, e in zip(indices, events, strict=True):
            err = self._check(e, served, now)
            if err:
                errors.append(EventError(i, *err))
                continue
            ready.append(FeedbackEvent(
                event_id=e.event_id or uuid.uuid4().hex, search_id=e.search_id,
                track_id=self._recorded_track(e, served[e.search_id]), entity_id=e.entity_id,
                type=e.type, position=e.position, timestamp=e.timestamp if e.timestamp is not None else now,
                user_id=e.user_id, session_id=e.session_id, dwell_ms=e.dwell_ms))
        return ready, errors

    def write(self, ready: list[FeedbackEvent]) -> list[str]:
        """Appends the events and returns their ids. An event_id repeated within the batch is
        written (and counted) once, the first occurrence winning, as a retry would be applied."""
        unique: dict[str, FeedbackEvent] = {}
        for ev in ready:
            unique.setdefault(ev.event_id, ev)
        ready = list(unique.values())
        # One MULTI/EXEC: either every event of the batch is in the stream or none is.
        pipe = self.redis.pipeline(transaction=True)
        for ev in ready:
            pipe.xadd(self.keys.feedback_stream, {"e": ev.model_dump_json()}, maxlen=self.stream_maxlen,
                      approximate=True)
        pipe.execute()
        return [ev.event_id for ev in ready]

    def ingest(self, events: list[FeedbackEventIn], *, now: float | None = None) -> IngestResult:
        """Validates every event, then writes all of them or none. Raises redis errors upward
        (the API turns them into 503): an event is never acknowledged without the XADD."""
        ready, errors = self.validate(events, now=now)
        if errors:
            return IngestResult(errors=errors)
        return IngestResult(accepted=self.write(ready))

    def _check(self, e: FeedbackEventIn, served: dict[str, Served], now: float) -> tuple[str, str] | None:
        if e.search_id not in served:
            return "search_id", f"unknown or expired search_id '{e.search_id}' (feedback is accepted for " \
                                f"{self.decisions.feedback_window_s} s after a search)"
        search_ts, ids = served[e.search_id].ts, served[e.search_id].ids
        if e.entity_id is not None:
            err = self._check_entity(e, served[e.search_id])
            if err:
                return err
        elif e.track_id not in ids:
            if not self._version_of_hit(e, ids):
                return "track_id", f"track_id '{e.track_id}' was not returned by search '{e.search_id}'"
        elif ids.index(e.track_id) + 1 != e.position:
            return "position", f"track_id '{e.track_id}' was served at position {ids.index(e.track_id) + 1}, " \
                               f"not {e.position}"
        if e.timestamp is not None and not (search_ts - MAX_CLOCK_SKEW_S <= e.timestamp <= now + MAX_CLOCK_SKEW_S):
            return "timestamp", "timestamp must lie between the search time and now (±5 min clock skew)"
        return None

    def _version_of_hit(self, e: FeedbackEventIn, ids: list[str]) -> bool:
        """Whether the event names another release of the recording served at its position."""
        if e.track_id is None or not 1 <= e.position <= len(ids):
            return False
        rec = self.recording_of.get(e.track_id)
        return rec is not None and rec == self.recording_of.get(ids[e.position - 1])

    def _recorded_track(self, e: FeedbackEventIn, shown: Served) -> str:
        """The track an accepted event is recorded on: the one named; an entity's first top track
        when none is; the served hit when the event names another version of it (the reward, the
        click memory and the ranker's labels then count the recording once, on what was served)."""
        if e.track_id is None:
            return shown.entity_tracks[e.entity_id or ""][0]
        if e.entity_id is None and e.track_id not in shown.ids:
            return shown.ids[e.position - 1]
        return e.track_id

    @staticmethod
    def _check_entity(e: FeedbackEventIn, shown: Served) -> tuple[str, str] | None:
        """An event on an artist or album hit: the entity was served at `position`, and the track
        it names is one of the top tracks the hit carried."""
        eid = e.entity_id or ""
        if eid not in shown.ids or eid not in shown.entity_tracks:
            return "entity_id", f"entity_id '{eid}' was not returned by search '{e.search_id}'"
        if shown.ids.index(eid) + 1 != e.position:
            return "position", f"entity_id '{eid}' was served at position {shown.ids.index(eid) + 1}, not {e.position}"
        tracks = shown.entity_tracks[eid]
        if not tracks:
            return "entity_id", f"entity_id '{eid}' was served without tracks"
        if e.track_id is not None and e.track_id not in tracks:
            return "track_id", f"track_id '{e.track_id}' is not one of the top tracks served with '{eid}'"
        return None


def parse_feedback_body(body: Any) -> tuple[list[tuple[int, FeedbackEventIn]] | None, list[dict[str, object]]]:
    """Accepts one event or {"events": [...]}. Returns (index, event) for every schema-valid event
    and an error per invalid field; None instead of the list when the body itself is unusable."""
    if isinstance(body, dict) and "events" in body:
        raw = body.get("events")
        if not isinstance(raw, list):
            return None, [{"index": None, "field": "events", "message": "events must be a list"}]
        if not 1 <= len(raw) <= MAX_FEEDBACK_BATCH:
            return None, [{"index": None, "field": "events",
                           "message": f"a batch holds 1 to {MAX_FEEDBACK_BATCH} events"}]
        extra = set(body) - {"events"}
        if extra:
            return None, [{"index": None, "field": sorted(extra)[0], "message": "unexpected field"}]
    elif isinstance(body, dict):
        raw = [body]
    else:
        return None, [{"index": None, "field": "body", "message": "expected an event object or {\"events\": [...]}"}]
    events: list[tuple[int, FeedbackEventIn]] = []
    errors: list[dict[str, object]] = []
    for i, item in enumerate(raw):
        try:
            events.append((i, FeedbackEventIn.model_validate(item)))
        except ValidationError as exc:
            for err in exc.errors():
                errors.append({"index": i, "field": ".".join(str(p) for p in err["loc"]) or "event",
                               "message": err["msg"]})
    return events, errors


def decode_event(fields: dict[bytes, bytes]) -> FeedbackEvent:
    return FeedbackEvent.model_validate(json.loads(fields[b"e"]))
