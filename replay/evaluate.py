"""Evaluate target policies and rankers on a `BanditLog`.

A policy is anything with `probabilities(context, actions) -> list[float]` (`PolicyLike`), so the
VW bandit, fixed subsets and uniform exploration all plug in the same way; `LoggingPolicy` is the
one exception: it answers with the probabilities that were logged.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Protocol, runtime_checkable

import numpy as np

from logged.records import ActionRecord
from replay.estimators import (
    BaseOffPolicyEstimator,
    DirectMethod,
    DoublyRobust,
    FullFeedback,
    InverseProbabilityWeighting,
    ReplayMethod,
    SelfNormalizedIPS,
    weight_diagnostics,
)
from replay.logs import BanditLog, ServedList, action_from_key, iter_contexts_numeric
from replay.reward_models import RegressionRewardModel, RewardModel, cross_fit_predict


@runtime_checkable
class PolicyLike(Protocol):
    def probabilities(self, context: dict[str, float], actions: list[ActionRecord]) -> list[float]: ...


class UniformPolicy:
    """Uniform over the available actions."""

    def probabilities(self, context: dict[str, float], actions: list[ActionRecord]) -> list[float]:
        return [1.0 / len(actions)] * len(actions)


class FixedSubsetPolicy:
    """Always run one retriever subset, e.g. FixedSubsetPolicy("lexical+dense").

    Picks the available action whose arms equal the subset (and whose budget equals `budget` when
    given). When no action matches exactly, the mass is split evenly over the actions with the
    highest Jaccard overlap with the subset (then the nearest budget), so the policy is defined on
    every record instead of failing on records with a narrower action set.
    """

    def __init__(self, arms: str | Sequence[str], budget: int | None = None) -> None:
        self.arms = frozenset(arms.split("+") if isinstance(arms, str) else arms)
        self.budget = budget

    def _score(self, a: ActionRecord) -> tuple[float, float]:
        arms = set(a.arms)
        jaccard = len(arms & self.arms) / len(arms | self.arms)
        budget_gap = 0.0 if self.budget is None else -abs(a.budget - self.budget)
        return jaccard, budget_gap

    def probabilities(self, context: dict[str, float], actions: list[ActionRecord]) -> list[float]:
        scores = [self._score(a) for a in actions]
        best = max(scores)
        hits = [s == best for s in scores]
        return [1.0 / sum(hits) if h else 0.0 for h in hits]


class LoggingPolicy:
    """The policy that produced the log, read from its logged probabilities (on-policy check:
    IPS/SNIPS/replay of this policy reproduce the observed mean reward)."""

    def action_dist(self, log: BanditLog) -> np.ndarray:
        probs = log.logging_probs.copy()
        unknown = np.isnan(probs).any(axis=1)
        if unknown.any():
            # Only the chosen action's propensity was logged: that is all IPS/SNIPS/replay need, but
            # DM/DR would need the full distribution, so evaluate_policies skips them for this policy.
            probs[unknown] = 0.0
            rows = np.flatnonzero(unknown)
            probs[rows, log.action[rows]] = log.pscore[rows]
        return probs

    def probabilities(self, context: dict[str, float], actions: list[ActionRecord]) -> list[float]:
        raise TypeError("LoggingPolicy answers from the log: use policy_action_dist(log, policy)")


def policy_action_dist(log: BanditLog, policy: PolicyLike | LoggingPolicy) -> np.ndarray:
    """(n, n_actions) target probabilities of `policy` on every logged record (0 off the record's
    action set). Raises if the policy returns a malformed distribution."""
    if isinstance(policy, LoggingPolicy):
        return policy.action_dist(log)
    dist = np.zeros((len(log), log.n_actions))
    contexts = iter_contexts_numeric(log.contexts)
    cache: dict[tuple[int, ...], list[ActionRecord]] = {}
    for i, idx in enumerate(log.record_actions):
        key = tuple(idx.tolist())
        actions = cache.get(key)
        if actions is None:
            actions = cache[key] = [action_from_key(log.action_keys[j]) for j in idx]
        p = np.asarray(policy.probabilities(contexts[i], actions), dtype=float)
        if p.shape != (len(actions),) or (p < -1e-9).any() or abs(p.sum() - 1.0) > 1e-6:
            raise ValueError(f"policy {policy!r} returned {p.tolist()} for record {i} with {len(actions)} actions: "
                             "need one non-negative probability per action, summing to 1")
        dist[i, idx] = np.clip(p, 0.0, None)
    return dist


def default_estimators(clip: float | None = None) -> list[BaseOffPolicyEstimator]:
    return [ReplayMethod(), InverseProbabilityWeighting(clip=clip), SelfNormalizedIPS(clip=clip),
            DirectMethod(), DoublyRobust(clip=clip), FullFeedback()]


@dataclass
class PolicyResult:
    policy: str
    estimator: str
    estimate: float
    lower: float
    upper: float
    n: int
    ess: float
    max_weight: float
    mean_weight: float
    matched_share: float
    coverage: float  # share of rounds the estimator could use (FullFeedback); 1 otherwise

    def as_dict(self) -> dict[str, float | str | int]:
        return asdict(self)


def evaluate_policies(log: BanditLog, policies: Mapping[str, PolicyLike | LoggingPolicy],
                      estimators: Sequence[BaseOffPolicyEstimator] | None = None, clip: float | None = None, *,
                      reward_model: Callable[[], RewardModel] | None = None, n_folds: int = 2,
                      alpha: float = 0.05, n_bootstrap: int = 1000,
                      random_state: int | None = 0) -> list[PolicyResult]:
    """One row per (policy, estimator): point estimate, (1 - alpha) bootstrap interval, and weight
    diagnostics. The reward model for DM/DR is fit once (cross-fitted over `n_folds`) and shared by
    all policies; FullFeedback runs only when the log has per-action rewards (shadow records).
    `clip` caps importance weights of the IPS-family estimators passed by default."""
    if len(log) == 0:
        raise ValueError("empty log")
    estimators = list(estimators) if estimators is not None else default_estimators(clip)
    needs_model = any(isinstance(e, DirectMethod | DoublyRobust) for e in estimators)
    q = (cross_fit_predict(reward_model or RegressionRewardModel, log, n_folds=n_folds, random_state=random_state)
         if needs_model else None)
    rows: list[PolicyResult] = []
    for name, policy in policies.items():
        dist = policy_action_dist(log, policy)
        diag = weight_diagnostics(log.pscore, dist, log.action, clip)
        partial_logging = isinstance(policy, LoggingPolicy) and np.isnan(log.logging_probs).any()
        for est in estimators:
            extra = q
            coverage = 1.0
            if isinstance(est, FullFeedback):
                if log.full_rewards is None:
                    continue
                extra = log.full_rewards
                usable = ~((dist > 0) & np.isnan(extra)).any(axis=1)
                coverage = float(usable.mean())
                if not usable.any():
                    continue
            elif isinstance(est, DirectMethod | DoublyRobust) and partial_logging:
                continue
            ci = est.estimate_interval(log.reward, log.pscore, dist, log.action, extra, alpha=alpha,
                                       n_bootstrap=n_bootstrap, random_state=random_state)
            rows.append(PolicyResult(policy=name, estimator=est.estimator_name, estimate=ci["mean"],
                                     lower=ci["lower"], upper=ci["upper"], n=len(log), ess=diag["ess"],
                                     max_weight=diag["max_weight"], mean_weight=diag["mean_weight"],
                                     matched_share=diag["matched_share"], coverage=coverage))
    return rows


# ---------------------------------------------------------------------------------------------
# Ranker metrics from logged clicks
# ---------------------------------------------------------------------------------------------

def _dcg(labels: np.ndarray, k: int) -> float:
    top = labels[:k]
    return float(((2.0 ** top - 1.0) / np.log2(np.arange(2, top.size + 2))).sum())


def list_metrics(labels: np.ndarray, k: int = 10) -> dict[str, float]:
    """nDCG@k, MRR and recall@k of one ranked list of labels. The ideal ranking and the recall
    denominator only know the served items: unserved relevant items are invisible in a click log."""
    labels = np.asarray(labels, float)
    ideal = _dcg(np.sort(labels)[::-1], k)
    rel = np.flatnonzero(labels > 0)
    return {
        f"ndcg@{k}": _dcg(labels, k) / ideal if ideal > 0 else 0.0,
        "mrr": 1.0 / (rel[0] + 1) if rel.size else 0.0,
        f"recall@{k}": float((rel < k).sum() / rel.size) if rel.size else 0.0,
    }


def _aggregate(per_query: list[dict[str, float]], n_queries: int, name: str) -> dict[str, float | str | int]:
    out: dict[str, float | str | int] = {"ranker": name, "n_queries": n_queries, "n_with_click": len(per_query)}
    for key in per_query[0] if per_query else []:
        out[key] = float(np.mean([m[key] for m in per_query]))
    return out


def ranker_metrics(served: Sequence[ServedList], k: int = 10, name: str = "logged") -> dict[str, float | str | int]:
    """Metrics of the lists as served. Labels are cascade-style: an item is relevant when the user
    clicked, played, liked or favourited it; skips and unexamined items count as not relevant.
    Averages over queries with at least one relevant item (`n_with_click`); queries without any
    click say nothing about the order and would only dilute the mean."""
    per_query = [list_metrics(s.labels, k) for s in served if (s.labels > 0).any()]
    return _aggregate(per_query, len(served), name)


# A scorer sees one served list's feature matrix (items x features, NaN for missing) and the
# feature names it was logged with, and returns one score per item (higher = earlier).
Scorer = Callable[[np.ndarray, list[str]], np.ndarray]


def compare_rankers(served: Sequence[ServedList], scorers: Mapping[str, Scorer], k: int = 10,
                    include_logged: bool = True) -> list[dict[str, float | str | int]]:
    """Counterfactual comparison of rankers on the logged candidate sets: each scorer reorders every
    served list by its scores (stable, so ties keep the served order) and is scored against the
    logged click labels.

    Biased toward the logged order: users only clicked what they saw, mostly near the top of the
    logged ranking, so items the logged ranker buried have few chances to be labelled relevant and
    a new ranker that promotes them is under-credited. Read differences as a lower bound on a
    challenger's gain, use it to catch regressions, and confirm wins with an interleaving or A/B test.
    """
    with_click = [s for s in served if (s.labels > 0).any()]
    rows = []
    if include_logged:
        rows.append(ranker_metrics(served, k, "logged"))
    for name, scorer in scorers.items():
        per_query = []
        for s in with_click:
            scores = np.asarray(scorer(s.features, s.feature_names), float)
            if scores.shape != (len(s.served),):
                raise ValueError(f"scorer {name!r} returned {scores.shape} scores for {len(s.served)} items")
            scores = np.where(np.isnan(scores), -math.inf, scores)
            order = np.argsort(-scores, kind="stable")
            per_query.append(list_metrics(s.labels[order], k))
        rows.append(_aggregate(per_query, len(served), name))
    return rows
