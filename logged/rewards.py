"""The one reward definition: how a search's feedback becomes the retrieval decision's reward.

Used by the feedback worker (what the bandit learns), the cold start (what it learns before any
click), the simulator and offline replay (what a policy is scored on), so all four are on one
scale:

    reward(search, action) = aggregate({ weight(e.type) : e in events within the reward wait,
                                         e.track_id among the first `budget` candidates of
                                         one of the action's (non-failed) retrievers })

with aggregate = max (default), first or sum, clipped to `clip`; no qualifying event = 0. The
defaults weigh every positive action 1.0 and a skip 0.0, so the reward is "did the chosen
retrievers find what the user wanted" in [0, 1] — exactly the cold start's "found the source
track" (1.0) or not (0.0). A click that earned less than the cold-start prior for the same
outcome would teach the bandit that a click on an arm's result is bad news.

The reward wait (`wait_s`) is the same for every search: a search is rewarded when its wait ends,
with every event of the wait, whether anybody acted or not. Rewarding clicked searches at their
first click and silent ones only later would make every action look better than it is for as
long as its failures are still on their way. Music plays come within seconds; 30 s is the
default.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Literal, Protocol

from pydantic import BaseModel, Field

POSITIVE_DEFAULT = {"play": 1.0, "like": 1.0, "add_to_favorites": 1.0, "click": 1.0, "skip": 0.0}


class RewardConfig(BaseModel):
    """How feedback becomes the bandit's reward for one search (LTRR_REWARD, JSON)."""

    weights: dict[str, float] = Field(default_factory=lambda: dict(POSITIVE_DEFAULT))
    aggregation: Literal["first", "max", "sum"] = "max"
    # Seconds after a search during which its events count; then the search is rewarded.
    wait_s: float = Field(default=30.0, gt=0, le=7 * 86400)
    clip: tuple[float, float] = (0.0, 1.0)


class EventLike(Protocol):
    """What the reward needs of an event (FeedbackEvent, or a simulator's event)."""

    @property
    def track_id(self) -> str: ...

    @property
    def type(self) -> str: ...

    @property
    def timestamp(self) -> float: ...


class DecisionLike(Protocol):
    """What the reward needs of a logged search (DecisionRecord / JoinedRecord)."""

    @property
    def candidates(self) -> Mapping[str, Sequence[str]]: ...

    @property
    def failed(self) -> Sequence[str]: ...


class ActionLike(Protocol):
    @property
    def arms(self) -> Sequence[str]: ...

    @property
    def budget(self) -> int: ...


def event_weight(event_type: str, cfg: RewardConfig) -> float:
    return float(cfg.weights.get(event_type, 0.0))


def is_positive(event: EventLike, cfg: RewardConfig) -> bool:
    return event_weight(event.type, cfg) > 0


def aggregate(events: Iterable[EventLike], cfg: RewardConfig) -> float:
    """max / sum / first (first positive, else the lowest) over the events' weights; no events
    -> 0. Clipped to cfg.clip."""
    values = [event_weight(e.type, cfg) for e in sorted(events, key=lambda e: e.timestamp)]
    if not values:
        return 0.0
    if cfg.aggregation == "sum":
        r = sum(values)
    elif cfg.aggregation == "max":
        r = max(values)
    else:
        positives = [v for v in values if v > 0]
        r = positives[0] if positives else min(values)
    lo, hi = cfg.clip
    return max(lo, min(hi, r))


def found_by(record: DecisionLike, arms: Sequence[str], budget: int) -> set[str]:
    """Track ids the given retrievers found within `budget` (failed retrievers found nothing)."""
    failed = set(record.failed)
    out: set[str] = set()
    for arm in arms:
        if arm not in failed:
            out.update(record.candidates.get(arm, [])[:budget])
    return out


def action_reward(record: DecisionLike, action: ActionLike, events: Iterable[EventLike],
                  cfg: RewardConfig) -> float:
    """The reward `action` earns for this search: only events on items its retrievers found count
    (items a fallback or the click memory added earn the decision nothing)."""
    found = found_by(record, action.arms, action.budget)
    return aggregate([e for e in events if e.track_id in found], cfg)


def subset_rewards(record: DecisionLike, actions: Sequence[ActionLike], events: Sequence[EventLike],
                   cfg: RewardConfig) -> list[float]:
    """Every action's reward, for a search where every retriever ran (shadow mode / cold start):
    full information for the bandit."""
    return [action_reward(record, a, events, cfg) for a in actions]


def positive_items(events: Iterable[EventLike], cfg: RewardConfig) -> set[str]:
    return {e.track_id for e in events if is_positive(e, cfg)}


class _Hit:
    """A synthetic positive event: the cold start's "the user wanted this track"."""

    __slots__ = ("timestamp", "track_id", "type")

    def __init__(self, track_id: str):
        self.track_id, self.type, self.timestamp = track_id, "play", 0.0


def wanted_events(track_ids: Collection[str]) -> list[EventLike]:
    """Events that say "these tracks were wanted": the cold start scores every action with the
    same reward function as live feedback, on the same scale."""
    return [_Hit(t) for t in track_ids]
