"""The one reward definition (logged.rewards): what the worker, the cold start, the simulator and
replay all score a search with."""

from __future__ import annotations

from dataclasses import dataclass, field

from bandit.actions import Action
from logged.records import FeedbackEvent
from logged.rewards import RewardConfig, action_reward, aggregate, subset_rewards, wanted_events


@dataclass
class Searched:
    candidates: dict[str, list[str]]
    failed: list[str] = field(default_factory=list)


def ev(track: str, kind: str, ts: float = 0.0) -> FeedbackEvent:
    return FeedbackEvent(event_id=f"{track}-{kind}-{ts}", search_id="s", track_id=track, type=kind, position=1,
                         timestamp=ts)


def test_every_positive_event_is_one_and_a_skip_zero_on_the_cold_start_scale() -> None:
    cfg = RewardConfig()
    for kind in ("play", "like", "add_to_favorites", "click"):
        assert aggregate([ev("t", kind)], cfg) == 1.0
    assert aggregate([ev("t", "skip")], cfg) == 0.0
    assert aggregate([], cfg) == 0.0  # nobody acted within the reward wait
    # The cold start's "found the source track" is the same 1.0 as a real play.
    s = Searched({"lexical": ["t"]})
    assert action_reward(s, Action(("lexical",), 10), wanted_events(["t"]), cfg) == \
        action_reward(s, Action(("lexical",), 10), [ev("t", "play")], cfg) == 1.0


def test_only_items_the_chosen_retrievers_found_within_budget_count() -> None:
    acts = [Action(("a",), 2), Action(("a",), 3), Action(("b",), 3), Action(("a", "b"), 3)]
    s = Searched({"a": ["x", "y", "hit"], "b": ["hit"]}, failed=["b"])  # b failed: it found nothing
    assert subset_rewards(s, acts, [ev("hit", "play")], RewardConfig()) == [0.0, 1.0, 0.0, 1.0]
    assert subset_rewards(s, acts, [], RewardConfig()) == [0.0, 0.0, 0.0, 0.0]
    assert subset_rewards(s, acts, [ev("other", "play")], RewardConfig()) == [0.0, 0.0, 0.0, 0.0]


def test_aggregations_and_clip() -> None:
    events = [ev("t", "skip", 1.0), ev("t", "click", 2.0), ev("t", "play", 3.0)]
    weights = {"play": 1.0, "click": 0.5, "skip": -0.3}
    assert aggregate(events, RewardConfig(weights=weights, aggregation="first", clip=(-1, 1))) == 0.5
    assert aggregate(events, RewardConfig(weights=weights, aggregation="max", clip=(-1, 1))) == 1.0
    assert aggregate(events, RewardConfig(weights=weights, aggregation="sum", clip=(-1, 1))) == 1.0
    assert aggregate([ev("t", "skip")], RewardConfig(weights=weights, aggregation="first", clip=(-1, 1))) == -0.3
    assert aggregate([ev("t", "skip")], RewardConfig(weights=weights, aggregation="first")) == 0.0  # clip (0, 1)
