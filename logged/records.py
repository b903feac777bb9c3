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


class ActionRecord(BaseModel):
    """One bandit action: a subset of retrievers and the candidate budget for each."""

    model_config = ConfigDict(frozen=True)

    arms: tuple[str, ...]
    budget: int = Field(ge=1)

    @property
    def key(self) -> str:
        return "+".join(self.arms) + f"@{self.budget}"


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
    served: list[str]  # track ids in served order (position 1 = served[0])
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


class FeedbackEvent(BaseModel):
    """One user action on a served result. Maps to OpenSearch User Behavior Insights as
    search_id -> query_id, track_id -> object_id, type -> action_name, position -> position."""

    model_config = ConfigDict(extra="forbid")

    event_id: str = Field(min_length=1, max_length=64)
    search_id: str = Field(min_length=1, max_length=64)
    track_id: str = Field(min_length=1, max_length=64)
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
