"""Turning a search's feedback events into the bandit's reward (configuration: RewardConfig)."""

from __future__ import annotations

from collections.abc import Sequence

from services.config import RewardConfig
from services.records import DecisionRecord, FeedbackEvent


def event_reward(event: FeedbackEvent, cfg: RewardConfig) -> float:
    return float(cfg.weights.get(event.type, 0.0))


def aggregate(events: Sequence[FeedbackEvent], cfg: RewardConfig) -> float:
    """max / sum / first over the events' weights; no events -> 0 (the join window closed with
    no action: the bandit learns from non-clicks too). Clipped to cfg.clip."""
    if not events:
        return 0.0
    values = [event_reward(e, cfg) for e in sorted(events, key=lambda e: e.timestamp)]
    if cfg.aggregation == "sum":
        r = sum(values)
    elif cfg.aggregation == "max":
        r = max(values)
    else:
        positives = [v for v in values if v > 0]
        r = positives[0] if positives else min(values)
    lo, hi = cfg.clip
    return max(lo, min(hi, r))


def subset_rewards(record: DecisionRecord, events: Sequence[FeedbackEvent], cfg: RewardConfig) -> list[float]:
    """Full-information rewards for every action of a shadow decision: an action earns the events
    on tracks that its own retrievers found (within its budget), since only those it could have
    served. Needs record.shadow (every retriever ran)."""
    out = []
    for action in record.actions:
        found: set[str] = set()
        for arm in action.arms:
            found.update(record.candidates.get(arm, [])[: action.budget])
        out.append(aggregate([e for e in events if e.track_id in found], cfg))
    return out


def chosen_reward(record: DecisionRecord, events: Sequence[FeedbackEvent], cfg: RewardConfig) -> float:
    """The retrieval decision's reward: only events on items that the chosen retrievers found
    count (the brief's "was the acted-on item in the union of the chosen retrievers"). Items a
    fallback retriever added after the chosen ones failed earn the decision nothing."""
    action = record.actions[record.chosen]
    found: set[str] = set()
    for arm in action.arms:
        found.update(record.candidates.get(arm, [])[: action.budget])
    return aggregate([e for e in events if e.track_id in found], cfg)


def is_positive(event: FeedbackEvent, cfg: RewardConfig) -> bool:
    return event_reward(event, cfg) > 0
