"""Bandit actions: a subset of retrievers ("arms") plus the candidate budget for each.

`Action` has the same fields as logged.records.ActionRecord (arms, budget) so the service can
convert either way with `ActionRecord(**action.as_dict())` / `Action.from_record(record)`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from bandit.context import vw_feature

ACTION_NAMESPACE = "a"
# Budgets enter as log(budget / REFERENCE_BUDGET): 0 (so absent) at the usual budget, which keeps a
# constant feature from soaking up the arms' weights when only one budget is offered.
REFERENCE_BUDGET = 100


@dataclass(frozen=True, slots=True)
class Action:
    arms: tuple[str, ...]
    budget: int

    def __post_init__(self) -> None:
        if not self.arms:
            raise ValueError("an action needs at least one arm")
        if len(set(self.arms)) != len(self.arms):
            raise ValueError(f"duplicate arms in {self.arms}")
        if self.budget < 1:
            raise ValueError(f"budget must be >= 1, got {self.budget}")

    @property
    def key(self) -> str:
        """Same format as ActionRecord.key, e.g. 'lexical+dense@100'."""
        return "+".join(self.arms) + f"@{self.budget}"

    def as_dict(self) -> dict[str, Any]:
        return {"arms": self.arms, "budget": self.budget}

    @classmethod
    def from_record(cls, record: Any) -> Action:
        """From an ActionRecord, a dict with arms/budget, or an Action."""
        if isinstance(record, Mapping):
            return cls(tuple(record["arms"]), int(record["budget"]))
        return cls(tuple(record.arms), int(record.budget))


def enumerate_actions(
    retrievers: Sequence[str], max_arms: int = 2, budgets: Iterable[int] = (100,), include_all: bool = True
) -> list[Action]:
    """Every non-empty subset of at most `max_arms` retrievers with every budget, plus (optionally)
    the "run everything" action per budget. Arms keep the order of `retrievers`, so a subset has a
    single canonical key."""
    names = list(dict.fromkeys(retrievers))
    if not names:
        raise ValueError("no retrievers")
    budgets = list(budgets)
    subsets: list[tuple[str, ...]] = []
    for size in range(1, min(max_arms, len(names)) + 1):
        subsets.extend(itertools.combinations(names, size))
    if include_all and tuple(names) not in subsets:
        subsets.append(tuple(names))
    return [Action(s, b) for s in subsets for b in budgets]


def _static_features(action: Action) -> dict[str, float]:
    feats: dict[str, float] = {f"arm={a}": 1.0 for a in action.arms}
    feats["log_budget"] = math.log(action.budget / REFERENCE_BUDGET)
    feats["n_arms"] = float(len(action.arms))
    return feats


def action_features(action: Action) -> dict[str, float]:
    """Features of one action: which arms (one-hot), log budget and subset size. They depend on the
    action alone (the context goes on VW's shared line), so each action renders once per process."""
    return _static_features(action)


@lru_cache(maxsize=4096)
def _static_line(action: Action) -> str:
    return _render_features(_static_features(action))


def _render_features(features: Mapping[str, float]) -> str:
    return " ".join(vw_feature(n, v) for n, v in features.items() if v != 0.0 and math.isfinite(v))


def render_action_lines(actions: Sequence[Action], labelled: int | None = None,
                        label: str | None = None) -> list[str]:
    """[render_action(action_features(a)) for a in actions], with `label` on action `labelled`,
    each action's line rendered once per process: this is the decide() hot path."""
    return [f"{label} |{ACTION_NAMESPACE} {_static_line(a)}" if (label and i == labelled)
            else f"|{ACTION_NAMESPACE} {_static_line(a)}" for i, a in enumerate(actions)]


def render_action(features: Mapping[str, float], label: str | None = None) -> str:
    """One ADF action line; `label` is VW's 'action:cost:probability' on the chosen action."""
    body = _render_features(features)
    prefix = f"{label} " if label else ""
    return f"{prefix}|{ACTION_NAMESPACE} {body}"
