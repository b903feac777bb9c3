"""Request/response models: the API's contract (they generate /docs)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from services.catalog import Catalog, Track
from services.serving.entities import HIT_TYPES, HitType, PlacedEntity
from services.serving.filters import Facet, SearchFilters
from services.serving.json_types import JsonInt

MAX_QUERY_CHARS = 512
# What the validators below enforce, stated for the OpenAPI document: some non-whitespace
# character and no NUL. (Enforced in code rather than as a pydantic pattern so that errors say
# "must not be empty" instead of quoting a regex.)
QUERY_PATTERN = r"^[^\x00]*[^\s\x00][^\x00]*$"
LOCALE_PATTERN = r"^[A-Za-z]{2,3}([_-][A-Za-z0-9]{2,8})?$"
Device = Literal["mobile", "desktop", "tablet", "tv", "car", "speaker", "other"]




def reject_lone_surrogates(v: str | None, name: str) -> str | None:
    """JSON can carry "\\ud800" without its pair; such a string is not Unicode text and fails
    later, when it is logged, stored or echoed back (it used to be a 500)."""
    if v is not None:
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError(f"{name} holds a lone surrogate code point; send valid Unicode") from None
    return v


class SearchContext(BaseModel):
    # strict: no coercion at the edge ("yes" is not true, true is not 1).
    model_config = ConfigDict(extra="forbid", strict=True)

    locale: str | None = Field(default=None, max_length=16, pattern=LOCALE_PATTERN, examples=["en-US"])
    device: Device | None = None
    timestamp: float | None = Field(default=None, ge=0, le=4_102_444_800,
                                    description="unix seconds of the request; default: server time")


class SearchRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    q: str = Field(description="the query: 1-512 characters, not only whitespace, no NUL; it is trimmed",
                   examples=["tayler swift love story"],
                   json_schema_extra={"minLength": 1, "maxLength": MAX_QUERY_CHARS, "pattern": QUERY_PATTERN})
    limit: JsonInt = Field(default=10, ge=1, le=100)
    user_id: str | None = Field(default=None, min_length=1, max_length=128)
    session_id: str | None = Field(default=None, min_length=1, max_length=128)
    context: SearchContext = Field(default_factory=SearchContext)
    debug: bool = False
    analytics: bool = Field(default=True, description="false: serve the same results but log nothing (monitoring "
                                                      "probes, evaluations); the search then accepts no feedback "
                                                      "and teaches no model")
    collapse: bool = Field(default=True, description="one hit per recording (other versions in `versions`)")
    filters: SearchFilters | None = Field(default=None, description="narrow the results; every retriever's "
                                                                   "candidates are filtered, and a short page is "
                                                                   "filled from every matching track")
    facets: list[Facet] = Field(default_factory=list, max_length=2,
                                description="value counts over the ranked candidates: `genre`, `decade`")
    types: list[HitType] = Field(default_factory=lambda: list(HIT_TYPES), min_length=1, max_length=3,
                                 description="kinds of hit: `track`, `artist`, `album` (default all three: a query "
                                             "naming an artist or album gets it first; `[\"track\"]` serves tracks "
                                             "only)")

    @field_validator("types", mode="before")
    @classmethod
    def _types(cls, v: Any) -> Any:
        # Checked here so that an unknown type is one clear message on `types`, not a Literal
        # error per list index.
        if isinstance(v, list):
            unknown = [t for t in v if t not in HIT_TYPES]
            if unknown:
                raise ValueError(f"unknown type {unknown[0]!r}; use {', '.join(HIT_TYPES)}")
            # A repeated type asks for nothing more: served once (the published schema allows
            # repeats, so refusing them would refuse a valid request).
            if len(v) <= len(HIT_TYPES):  # a longer list stays too long (maxItems)
                v = list(dict.fromkeys(v))
        return v

    @field_validator("q")
    @classmethod
    def _q(cls, v: str) -> str:
        if len(v) > MAX_QUERY_CHARS:
            raise ValueError(f"q is {len(v)} characters; at most {MAX_QUERY_CHARS} are allowed")
        v = v.strip()
        if not v:
            raise ValueError("q must not be empty or whitespace only")
        if "\x00" in v:
            raise ValueError("q must not contain NUL characters")
        reject_lone_surrogates(v, "q")
        return v

    @field_validator("user_id", "session_id")
    @classmethod
    def _ids(cls, v: str | None, info: ValidationInfo) -> str | None:
        return reject_lone_surrogates(v, str(info.field_name))


class SearchHit(BaseModel):
    type: Literal["track"] = "track"
    track_id: str
    position: int = Field(description="1-based rank within the whole search (pages included): "
                                      "name it in this hit's /feedback events")
    title: str
    artist: str
    album: str
    genres: list[str]
    year: int | None = Field(default=None, description="release year")
    score: float
    retrievers: list[str] = Field(description="which retrievers found this track; `memory` = the click memory")
    versions: list[str] = Field(default_factory=list, description="other releases of the same recording, "
                                                                  "not served separately")
    features: dict[str, float | None] | None = Field(default=None, description="ranker features (debug only)")

    @classmethod
    def of_track(cls, t: Track, *, position: int, score: float, retrievers: list[str], versions: list[str],
                 features: dict[str, float | None] | None = None) -> SearchHit:
        """A hit for catalog track `t`: first pages (api.py) and later pages (routes_pages.py) alike."""
        return cls(track_id=t.track_id, position=position, title=t.title, artist=t.artist, album=t.album,
                   genres=list(t.genres), year=t.year, score=score, retrievers=retrievers, versions=versions,
                   features=features)


class TopTrack(BaseModel):
    track_id: str = Field(description="name it as `track_id`, with the entity's `entity_id` and position, in "
                                      "/feedback when this track is played from the entity")
    title: str
    artist: str
    album: str
    year: int | None = None


class EntityHit(BaseModel):
    """An artist or album among the results, with the top tracks a client plays for it."""

    type: Literal["artist", "album"]
    entity_id: str = Field(description="`artist:<slug>` or `album:<album id>`; name it in this hit's /feedback "
                                       "events (with its `position`)")
    position: int = Field(description="1-based rank within the whole search, like a track's")
    name: str
    artist: str = Field(description="the artist itself, or the album's artist")
    year: int | None = Field(default=None, description="albums: release year")
    genres: list[str]
    score: float = Field(description="1 when the query names it, less for a typo (0.1 per edit); the best "
                                     "track's ranker score when it is here for its tracks")
    match: Literal["name", "typo", "tracks"] = Field(
        description="why it is a hit: the query names it, names it with a typo, or (`types` without `track`) "
                    "its tracks rank")
    recordings: int = Field(description="songs of this artist / album in the catalog")
    top_tracks: list[TopTrack] = Field(description="most popular first, one per recording; a Play on the entity "
                                                   "plays the first")

    @classmethod
    def of_entity(cls, placed: PlacedEntity, catalog: Catalog) -> EntityHit:
        """The hit for a planned entity: first pages (api.py) and later pages (routes_pages.py)."""
        e = placed.entity
        tracks = [t for t in (catalog.by_id.get(tid) for tid in placed.tracks) if t is not None]
        return cls(type=e.kind, entity_id=e.entity_id, position=placed.position, name=e.name, artist=e.artist,
                   year=e.year, genres=list(e.genres), score=placed.score, match=placed.match,
                   recordings=e.n_recordings,
                   top_tracks=[TopTrack(track_id=t.track_id, title=t.title, artist=t.artist, album=t.album,
                                        year=t.year) for t in tracks])


Hit = Annotated[SearchHit | EntityHit, Field(discriminator="type")]


class DebugInfo(BaseModel):
    policy: str
    action: list[str]
    budget: int
    propensity: float
    probabilities: dict[str, float]
    timings_ms: dict[str, float]
    failed_retrievers: list[str] = Field(description="chosen retrievers dropped for an error or a missed deadline")
    retriever_deadlines_ms: dict[str, float] = Field(
        description="how long this search waited for each retriever it ran (its measured p95 x a factor, capped)")
    candidates_per_retriever: dict[str, int]
    bandit_version: str | None
    ranker_version: str | None
    context: dict[str, float]


class SearchResponse(BaseModel):
    search_id: str = Field(description="name this id in every /feedback event for these results")
    query: str
    results: list[Hit] = Field(description="tracks (`type` track) and artists / albums (`type` artist, album), "
                                           "in rank order")
    offset: int = Field(default=0, description="position of the first result minus one")
    total: int = Field(default=0, description="results this search can page through "
                                              "(GET /search/{search_id}?offset=); 0 when it logs nothing")
    facets: dict[str, dict[str, int]] | None = Field(
        default=None, description="per requested facet, value -> number of ranked candidates (top 20)")
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


class ModelStatus(BaseModel):
    version: str | None = Field(description="the version this process serves")
    serving: str | None = Field(default=None, description="the promoted version in the artifact store")
    refused: list[str] = Field(default_factory=list, description="versions this process refused to load")
    fallback: bool = Field(default=False, description="serving an older version than the promoted one")


class Health(BaseModel):
    status: Literal["ok", "degraded"]
    redis: bool
    catalog_tracks: int
    retrievers: list[str]
    bandit_version: str | None
    ranker_version: str | None
    worker: bool
    trainer: bool = Field(default=False, description="the retraining process of this replica is running")
    models: dict[str, ModelStatus] = Field(default_factory=dict, description="per model kind")


class ReloadResult(BaseModel):
    bandit_version: str | None
    ranker_version: str | None
    xr_version: str | None
