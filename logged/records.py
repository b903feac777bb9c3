"""The event model: what was served (DecisionRecord) and what users did (FeedbackEvent).

Every search writes one DecisionRecord keyed by its search_id; every feedback event names that
search_id. The worker joins the two, so training and replay see exactly what serving saw: the
context the bandit saw, every action it could take with its probability, each retriever's
candidates, the served list and the ranker's feature vectors.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

EventType = Literal["click", "play", "like", "add_to_favorites", "skip"]
EntityKind = Literal["artist", "album"]
# `artist:<slug of the primary artist>` or `album:<catalog album id>` (services.serving.entities).
# Track ids cannot hold a colon, so an id with one of these prefixes is never a track.
ENTITY_ID_PATTERN = r"^(artist|album):[A-Za-z0-9_\-.]{1,80}$"


def is_entity_id(item_id: str) -> bool:
    """True for an artist or album id, False for a track id."""
    return item_id.startswith(("artist:", "album:"))


class ActionRecord(BaseModel):
    """One bandit action: a subset of retrievers and the candidate budget for each."""

    model_config = ConfigDict(frozen=True)

    arms: tuple[str, ...]
    budget: int = Field(ge=1)

    @property
    def key(self) -> str:
        return "+".join(self.arms) + f"@{self.budget}"


class ServedEntity(BaseModel):
    """An artist or album hit as served: where, why, and the top tracks it carried."""

    model_config = ConfigDict(extra="forbid")

    entity_id: str
    kind: EntityKind
    position: int = Field(ge=1)  # absolute, like a feedback event's
    # Its top tracks as served, most popular first. Feedback on the entity teaches about one of
    # them: the one the event names, else tracks[0] (what its Play button plays).
    tracks: list[str]
    # "name": the query names it; "typo": names it with a typo; "tracks": shown because its
    # tracks rank (only when the request asked for no tracks).
    match: Literal["name", "typo", "tracks"]


class DecisionRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    search_id: str
    ts: float  # unix seconds at request time
    query: str
    query_norm: str
    user_id: str | None = None
    session_id: str | None = None
    locale: str | None = None
    device: str | None = None
    context: dict[str, float]  # bandit context features, by name
    policy: str  # policy name, e.g. "vw" / "fixed:lexical+dense" / "shadow(vw)"
    bandit_version: str | None = None
    ranker_version: str | None = None
    actions: list[ActionRecord]
    probabilities: list[float]  # over `actions`, sums to 1
    chosen: int  # index into actions of what ran (and was served)
    propensity: float  # probabilities[chosen]
    shadow: bool = False  # every retriever ran; `candidates` holds all of them
    candidates: dict[str, list[str]]  # retriever name -> track ids, best first
    failed: list[str] = Field(default_factory=list)  # retrievers that raised or timed out
    retriever_ms: dict[str, float] = Field(default_factory=dict)
    # Track ids in served order. Without entity hits position p is served[p-1]; with them the
    # tracks fill the positions the `entities` leave free, in this order (page() rebuilds it).
    served: list[str]
    feature_names: list[str] = Field(default_factory=list)
    features: list[list[float | None]] = Field(default_factory=list)  # per served item, NaN as None
    memory: list[str] = Field(default_factory=list)  # served ids the click memory pinned to the top
    # A uniform sample of the ranked but unserved candidates with their feature rows: the
    # ranker's retraining sees what serving ranked low, not only what it showed.
    sampled: list[str] = Field(default_factory=list)
    sampled_features: list[list[float | None]] = Field(default_factory=list)
    # The request's filters (services.serving.filters.SearchFilters, unset fields left out); every
    # candidate list above already holds only the tracks they allow. None: unfiltered.
    filters: dict[str, str | int | float] | None = None
    # Artist and album hits served among the tracks (empty in logs written before they existed).
    entities: list[ServedEntity] = Field(default_factory=list)
    # The request's `types` (track, artist, album); None in logs written before it existed, when
    # every search served tracks only.
    types: list[str] | None = None

    def page(self) -> list[str]:
        """Every served id by absolute position (position p = page()[p-1]): each entity at its
        position, the tracks of `served` in the positions left free, in order."""
        at = {e.position: e.entity_id for e in self.entities}
        tracks = iter(self.served)
        # "" marks a position nothing was served at (an entity placed past the last track).
        out = [at.get(p) or next(tracks, "") for p in range(1, max([len(self.served) + len(at), *at]) + 1)]
        while out and not out[-1]:
            out.pop()
        return out


class FeedbackEvent(BaseModel):
    """One user action on a served result. Maps to OpenSearch User Behavior Insights as
    search_id -> query_id, track_id -> object_id, type -> action_name, position -> position."""

    model_config = ConfigDict(extra="forbid")

    event_id: str = Field(min_length=1, max_length=64)
    search_id: str = Field(min_length=1, max_length=64)
    # The track the event teaches about. For an event on an artist or album hit it is the top
    # track the event named, else the entity's first (ServedEntity.tracks), and `entity_id` names
    # the entity, whose served position is `position`.
    track_id: str = Field(min_length=1, max_length=64)
    entity_id: str | None = Field(default=None, max_length=96)
    type: EventType
    position: int = Field(ge=1, le=1000)
    timestamp: float
    user_id: str | None = Field(default=None, max_length=128)
    session_id: str | None = Field(default=None, max_length=128)
    dwell_ms: int | None = Field(default=None, ge=0, le=86_400_000)


class JoinedRecord(DecisionRecord):
    """A decision with its feedback, as the worker appends it to the training/replay log
    (one JSON object per line). `reward` is the retrieval reward the bandit learned from."""

    events: list[FeedbackEvent] = Field(default_factory=list)
    reward: float = 0.0
