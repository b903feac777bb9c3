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

from bandit.context import ARM_MS_PREFIX, ARM_RATE_PREFIX, vw_feature

ACTION_NAMESPACE = "a"
# Normalizes latencies so action features and the latency cost are O(1) numbers.
DEFAULT_REFERENCE_MS = 10.0
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


def _stat_features(action: Action, context: Mapping[str, float], reference_ms: float) -> dict[str, float]:
    feats: dict[str, float] = {}
    if context:
        total_ms = 0.0
        have_ms = False
        best_rate = 0.0
        for a in action.arms:
            rate = context.get(ARM_RATE_PREFIX + a)
            if rate is not None:
                feats[f"rate={a}"] = rate
                best_rate = max(best_rate, rate)
            ms = context.get(ARM_MS_PREFIX + a)
            if ms is not None:
                feats[f"ms={a}"] = ms / reference_ms
                total_ms += ms
                have_ms = True
        if best_rate:
            feats["best_rate"] = best_rate
        if have_ms:
            feats["lat_total"] = total_ms / reference_ms
    return feats


def action_features(
    action: Action, context: Mapping[str, float] | None = None, reference_ms: float = DEFAULT_REFERENCE_MS
) -> dict[str, float]:
    """Features of one action: which arms (one-hot), log budget, subset size, and, when the context
    carries arm statistics (ArmStats.as_context), each arm's reward rate and latency and the total."""
    return {**_static_features(action), **_stat_features(action, context or {}, reference_ms)}


@lru_cache(maxsize=4096)
def _static_line(action: Action) -> str:
    # The arm/budget part of an action line never changes: render it once per action.
    return _render_features(_static_features(action))


def _render_features(features: Mapping[str, float]) -> str:
    return " ".join(vw_feature(n, v) for n, v in features.items() if v != 0.0 and math.isfinite(v))


def render_action_lines(actions: Sequence[Action], context: Mapping[str, float] | None = None,
                        reference_ms: float = DEFAULT_REFERENCE_MS, labelled: int | None = None,
                        label: str | None = None) -> list[str]:
    """[render_action(action_features(a, context, reference_ms)) for a in actions], with `label` on
    action `labelled`, but rendering each action's static part once per process and each arm's
    statistics once per call: this is the decide() hot path."""
    arm_info: dict[str, tuple[float | None, float | None, str]] = {}
    lines = []
    for i, action in enumerate(actions):
        body = _static_line(action)
        if context:
            parts = [body]
            total_ms = 0.0
            have_ms = False
            best_rate = 0.0
            for arm in action.arms:
                info = arm_info.get(arm)
                if info is None:
                    rate = context.get(ARM_RATE_PREFIX + arm)
                    ms = context.get(ARM_MS_PREFIX + arm)
                    feats = {}
                    if rate is not None:
                        feats[f"rate={arm}"] = rate
                    if ms is not None:
                        feats[f"ms={arm}"] = ms / reference_ms
                    info = arm_info[arm] = (rate, ms, _render_features(feats))
                rate, ms, rendered = info
                if rendered:
                    parts.append(rendered)
                if rate is not None:
                    best_rate = max(best_rate, rate)
                if ms is not None:
                    total_ms += ms
                    have_ms = True
            extra = {"best_rate": best_rate, "lat_total": total_ms / reference_ms if have_ms else 0.0}
            tail = _render_features(extra)
            if tail:
                parts.append(tail)
            body = " ".join(parts)
        prefix = f"{label} " if (label and i == labelled) else ""
        lines.append(f"{prefix}|{ACTION_NAMESPACE} {body}")
    return lines


def expected_latency_ms(action: Action, context: Mapping[str, float] | None) -> float | None:
    """Sum of the arms' running latencies from the context, or None when the context has none."""
    if not context:
        return None
    vals = [context.get(ARM_MS_PREFIX + a) for a in action.arms]
    if any(v is None for v in vals):
        return None
    return float(sum(vals))  # type: ignore[arg-type]


def render_action(features: Mapping[str, float], label: str | None = None) -> str:
    """One ADF action line; `label` is VW's 'action:cost:probability' on the chosen action."""
    body = _render_features(features)
    prefix = f"{label} " if label else ""
    return f"{prefix}|{ACTION_NAMESPACE} {body}"
