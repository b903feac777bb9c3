"""Request/response models: the API's contract (they generate /docs)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_QUERY_CHARS = 512


class SearchContext(BaseModel):
    model_config = ConfigDict(extra="forbid")

    locale: str | None = Field(default=None, max_length=16, pattern=r"^[A-Za-z]{2,3}([_-][A-Za-z0-9]{2,8})?$",
                               examples=["en-US"])
    device: Literal["mobile", "desktop", "tablet", "tv", "car", "speaker", "other"] | None = None
    timestamp: float | None = Field(default=None, ge=0, le=4_102_444_800,
                                    description="unix seconds of the request; default: server time")


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    q: str = Field(description="the query, 1-512 characters after trimming", examples=["tayler swift love story"])
    limit: int = Field(default=10, ge=1, le=100)
    user_id: str | None = Field(default=None, min_length=1, max_length=128)
    session_id: str | None = Field(default=None, min_length=1, max_length=128)
    context: SearchContext = Field(default_factory=SearchContext)
    debug: bool = False

    @field_validator("q")
    @classmethod
    def _q(cls, v: str) -> str:
        v = v.strip()
        if not v:
            raise ValueError("q must not be empty or whitespace only")
        if len(v) > MAX_QUERY_CHARS:
            raise ValueError(f"q is {len(v)} characters; at most {MAX_QUERY_CHARS} are allowed")
        if "\x00" in v:
            raise ValueError("q must not contain NUL characters")
        return v


class SearchHit(BaseModel):
    track_id: str
    title: str
    artist: str
    album: str
    genres: list[str]
    score: float
    retrievers: list[str] = Field(description="which retrievers found this track")
    features: dict[str, float | None] | None = Field(default=None, description="ranker features (debug only)")


class DebugInfo(BaseModel):
    policy: str
    action: list[str]
    budget: int
    propensity: float
    probabilities: dict[str, float]
    timings_ms: dict[str, float]
    failed_retrievers: list[str]
    candidates_per_retriever: dict[str, int]
    bandit_version: str | None
    ranker_version: str | None
    context: dict[str, float]


class SearchResponse(BaseModel):
    search_id: str = Field(description="name this id in every /feedback event for these results")
    query: str
    results: list[SearchHit]
    debug: DebugInfo | None = None


class FeedbackAccepted(BaseModel):
    accepted: int
    event_ids: list[str]


class ErrorDetail(BaseModel):
    index: int | None = Field(default=None, description="event index in a batch, when it applies")
    field: str
    message: str


class ErrorBody(BaseModel):
    code: str
    message: str
    details: list[ErrorDetail] = Field(default_factory=list)


class ErrorResponse(BaseModel):
    error: ErrorBody


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    redis: bool
    catalog_tracks: int
    retrievers: list[str]
    bandit_version: str | None
    ranker_version: str | None
    worker: bool


class ReloadResult(BaseModel):
    bandit_version: str | None
    ranker_version: str | None
    xr_version: str | None
