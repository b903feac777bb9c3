"""Off-policy estimators of a target policy's value from logged bandit feedback.

Modelled on Open Bandit Pipeline's `obp.ope.estimators` (which does not install on Python 3.11):
one small class per estimator, the same argument names (`reward`, `pscore`, `action_dist`,
`action`, `estimated_rewards`), `estimate_policy_value(...) -> float` and
`estimate_interval(...) -> {"mean", "lower", "upper"}`.

Notation: n logged rounds (x_i, a_i, r_i) with logging propensity p_i = pi_b(a_i | x_i); the target
policy's probabilities pi_e(a | x_i) are `action_dist[i, a]`; the importance weight is
w_i = pi_e(a_i | x_i) / p_i; q(x, a) is a reward model's prediction.

Every estimator here is a ratio of per-round sums, V = sum_i num_i / sum_i den_i (den_i = 1 for
the plain means). The bootstrap resamples rounds and recomputes that ratio on each resample, so
self-normalised estimators get their normaliser resampled too (OBP resamples the already
normalised per-round terms, which understates SNIPS/replay variance).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

# Per-round (numerator, denominator); a None denominator means 1 per round.
Terms = tuple[np.ndarray, np.ndarray | None]

_BOOTSTRAP_CHUNK_CELLS = 4_000_000  # resample indices in blocks of this many cells to bound memory


def _check(reward: np.ndarray, pscore: np.ndarray, action_dist: np.ndarray, action: np.ndarray) -> None:
    n = reward.shape[0]
    if action_dist.ndim != 2 or action_dist.shape[0] != n or pscore.shape != (n,) or action.shape != (n,):
        raise ValueError(f"shape mismatch: reward {reward.shape}, pscore {pscore.shape}, "
                         f"action {action.shape}, action_dist {action_dist.shape} (want (n,), (n,), (n,), (n, k))")
    if n and (pscore <= 0).any():
        raise ValueError("pscore must be > 0 for every logged round")


def importance_weights(pscore: np.ndarray, action_dist: np.ndarray, action: np.ndarray,
                       clip: float | None = None) -> np.ndarray:
    """w_i = pi_e(a_i|x_i) / pi_b(a_i|x_i), optionally capped at `clip` (trades bias for variance)."""
    w = action_dist[np.arange(action.shape[0]), action] / pscore
    return np.minimum(w, clip) if clip is not None else w


def bootstrap_ratio_interval(num: np.ndarray, den: np.ndarray | None, *, alpha: float = 0.05,
                             n_bootstrap: int = 1000, random_state: int | None = None) -> dict[str, float]:
    """Percentile bootstrap interval of sum(num)/sum(den) (den=None: the mean of num)."""
    n = num.shape[0]
    if n == 0:
        return {"mean": float("nan"), "lower": float("nan"), "upper": float("nan")}
    rng = np.random.default_rng(random_state)
    chunk = max(1, _BOOTSTRAP_CHUNK_CELLS // n)
    stats = np.empty(n_bootstrap)
    for start in range(0, n_bootstrap, chunk):
        b = min(chunk, n_bootstrap - start)
        idx = rng.integers(0, n, size=(b, n))
        top = num[idx].sum(axis=1)
        bottom = den[idx].sum(axis=1) if den is not None else np.full(b, float(n))
        with np.errstate(invalid="ignore", divide="ignore"):
            stats[start:start + b] = np.where(bottom > 0, top / np.where(bottom > 0, bottom, 1.0), np.nan)
    point = num.sum() / den.sum() if den is not None and den.sum() > 0 else (num.mean() if den is None else np.nan)
    if np.isnan(stats).all():
        return {"mean": float(point), "lower": float("nan"), "upper": float("nan")}
    lo, hi = np.nanpercentile(stats, [100 * alpha / 2, 100 * (1 - alpha / 2)])
    return {"mean": float(point), "lower": float(lo), "upper": float(hi)}


@dataclass
class BaseOffPolicyEstimator(ABC):
    """Shared plumbing: subclasses say how each round contributes to the numerator/denominator."""

    estimator_name: str = "base"

    @abstractmethod
    def _round_terms(self, reward: np.ndarray, pscore: np.ndarray, action_dist: np.ndarray, action: np.ndarray,
                     estimated_rewards: np.ndarray | None) -> Terms:
        """Per-round (numerator, denominator) of the estimator's ratio."""

    def _terms(self, reward: np.ndarray, pscore: np.ndarray, action_dist: np.ndarray, action: np.ndarray,
               estimated_rewards: np.ndarray | None) -> Terms:
        reward, pscore = np.asarray(reward, float), np.asarray(pscore, float)
        action_dist, action = np.asarray(action_dist, float), np.asarray(action, np.int64)
        _check(reward, pscore, action_dist, action)
        if estimated_rewards is not None:
            estimated_rewards = np.asarray(estimated_rewards, float)
            if estimated_rewards.shape != action_dist.shape:
                raise ValueError(f"estimated_rewards {estimated_rewards.shape} must match action_dist "
                                 f"{action_dist.shape}")
        return self._round_terms(reward, pscore, action_dist, action, estimated_rewards)

    def estimate_policy_value(self, reward: np.ndarray, pscore: np.ndarray, action_dist: np.ndarray,
                              action: np.ndarray, estimated_rewards: np.ndarray | None = None) -> float:
        num, den = self._terms(reward, pscore, action_dist, action, estimated_rewards)
        if den is None:
            return float(num.mean()) if num.size else float("nan")
        total = den.sum()
        return float(num.sum() / total) if total > 0 else float("nan")

    def estimate_interval(self, reward: np.ndarray, pscore: np.ndarray, action_dist: np.ndarray,
                          action: np.ndarray, estimated_rewards: np.ndarray | None = None, *,
                          alpha: float = 0.05, n_bootstrap: int = 1000,
                          random_state: int | None = None) -> dict[str, float]:
        num, den = self._terms(reward, pscore, action_dist, action, estimated_rewards)
        return bootstrap_ratio_interval(num, den, alpha=alpha, n_bootstrap=n_bootstrap, random_state=random_state)


@dataclass
class ReplayMethod(BaseOffPolicyEstimator):
    """Replay / rejection sampling (Li, Chu, Langford, Wang 2011).

    Deterministic target: keep the rounds where the target picks the logged action and average
    their rewards, V = sum_i 1{pi_e(x_i) = a_i} r_i / sum_i 1{pi_e(x_i) = a_i}.

    Stochastic target (probability-weighted variant): instead of sampling a ~ pi_e(.|x_i) and
    keeping the round on a match, weight it by the match probability,
    V = sum_i pi_e(a_i|x_i) r_i / sum_i pi_e(a_i|x_i). This is the expectation of the rejection
    sampler over its own coin flips (same mean, less variance); for 0/1 action_dist it is the
    formula above.

    Unbiased only when the logging policy was uniform over the available actions (as in Li et
    al.'s uniformly random bucket): pscore is not used. With a non-uniform logger, use IPS / SNIPS
    / DR (SNIPS is this same ratio with pi_e / pi_b as the weight). `matched_share` reports the
    expected share of accepted rounds, sum_i pi_e(a_i|x_i) / n.
    """

    estimator_name: str = "replay"

    def _round_terms(self, reward: np.ndarray, pscore: np.ndarray, action_dist: np.ndarray, action: np.ndarray,
                     estimated_rewards: np.ndarray | None) -> Terms:
        match = action_dist[np.arange(action.shape[0]), action]
        return match * reward, match


@dataclass
class InverseProbabilityWeighting(BaseOffPolicyEstimator):
    """Inverse propensity scoring, V = (1/n) sum_i w_i r_i with w_i = pi_e(a_i|x_i) / pi_b(a_i|x_i).

    Unbiased when the logged propensities are right and pi_b > 0 wherever pi_e > 0; its variance
    grows with the weights. `clip` caps w_i (biased low for non-negative rewards, lower variance).
    """

    estimator_name: str = "ips"
    clip: float | None = None

    def _round_terms(self, reward: np.ndarray, pscore: np.ndarray, action_dist: np.ndarray, action: np.ndarray,
                     estimated_rewards: np.ndarray | None) -> Terms:
        return importance_weights(pscore, action_dist, action, self.clip) * reward, None


@dataclass
class SelfNormalizedIPS(BaseOffPolicyEstimator):
    """Self-normalised IPS (Swaminathan & Joachims 2015), V = sum_i w_i r_i / sum_i w_i.

    Biased (O(1/n)) but consistent and always inside the observed reward range. E[w] = 1 under
    correct propensities, so sum_i w_i ~ n and SNIPS ~ IPS; when the weights sum to exactly n
    (e.g. target = logging policy) the two are equal.
    """

    estimator_name: str = "snips"
    clip: float | None = None

    def _round_terms(self, reward: np.ndarray, pscore: np.ndarray, action_dist: np.ndarray, action: np.ndarray,
                     estimated_rewards: np.ndarray | None) -> Terms:
        w = importance_weights(pscore, action_dist, action, self.clip)
        return w * reward, w


def _need_model(estimated_rewards: np.ndarray | None, name: str) -> np.ndarray:
    if estimated_rewards is None:
        raise ValueError(f"{name} needs estimated_rewards (n, n_actions) from a reward model")
    return estimated_rewards


@dataclass
class DirectMethod(BaseOffPolicyEstimator):
    """Direct method, V = (1/n) sum_i sum_a pi_e(a|x_i) q(x_i, a).

    Uses no propensities and has low variance; its bias is the reward model's bias under the
    target policy's action distribution (see replay.reward_models).
    """

    estimator_name: str = "dm"

    def _round_terms(self, reward: np.ndarray, pscore: np.ndarray, action_dist: np.ndarray, action: np.ndarray,
                     estimated_rewards: np.ndarray | None) -> Terms:
        q = _need_model(estimated_rewards, "DirectMethod")
        return (action_dist * q).sum(axis=1), None


@dataclass
class DoublyRobust(BaseOffPolicyEstimator):
    """Doubly robust (Dudik, Langford, Li 2011),
    V = (1/n) sum_i [ sum_a pi_e(a|x_i) q(x_i, a) + w_i (r_i - q(x_i, a_i)) ].

    Unbiased if either the propensities or the reward model are right; the importance-weighted
    residual corrects the model's bias, and a good model shrinks IPS's variance. `clip` caps w_i.
    """

    estimator_name: str = "dr"
    clip: float | None = None

    def _round_terms(self, reward: np.ndarray, pscore: np.ndarray, action_dist: np.ndarray, action: np.ndarray,
                     estimated_rewards: np.ndarray | None) -> Terms:
        q = _need_model(estimated_rewards, "DoublyRobust")
        w = importance_weights(pscore, action_dist, action, self.clip)
        q_logged = q[np.arange(action.shape[0]), action]
        return (action_dist * q).sum(axis=1) + w * (reward - q_logged), None


@dataclass
class FullFeedback(BaseOffPolicyEstimator):
    """Exact counterfactual value on records where every action's reward is known (shadow records
    run every retriever, so the reward of each subset is observed):
    V = mean over complete rounds of sum_a pi_e(a|x_i) r_i(a).

    Pass the known per-action rewards (NaN where unknown) as `estimated_rewards`. Rounds where the
    target puts probability on an action with unknown reward are left out; `coverage` says how many
    were used. Unbiased for the shadow-traffic population, which must match real traffic.
    """

    estimator_name: str = "full"

    def _round_terms(self, reward: np.ndarray, pscore: np.ndarray, action_dist: np.ndarray, action: np.ndarray,
                     estimated_rewards: np.ndarray | None) -> Terms:
        full = _need_model(estimated_rewards, "FullFeedback")
        unknown = np.isnan(full)
        usable = ~((action_dist > 0) & unknown).any(axis=1)
        values = (action_dist * np.where(unknown, 0.0, full)).sum(axis=1)
        return np.where(usable, values, 0.0), usable.astype(float)


def weight_diagnostics(pscore: np.ndarray, action_dist: np.ndarray, action: np.ndarray,
                       clip: float | None = None) -> dict[str, float]:
    """How trustworthy importance weighting is for this target policy.

    ess: Kish's effective sample size (sum w)^2 / sum w^2 (n when pi_e = pi_b); ess_share = ess / n;
    max_weight; mean_weight (~1 when propensities are right and pi_b covers pi_e; far from 1
    signals wrong propensities or actions the logger never took); matched_share: expected share of
    rounds the replay method accepts; clipped_share: share of weights `clip` capped.
    """
    pscore, action_dist, action = np.asarray(pscore, float), np.asarray(action_dist, float), np.asarray(action)
    n = action.shape[0]
    raw = importance_weights(pscore, action_dist, action)
    w = np.minimum(raw, clip) if clip is not None else raw
    sq = float((w ** 2).sum())
    ess = float(w.sum() ** 2 / sq) if sq > 0 else 0.0
    return {
        "n": float(n),
        "ess": ess,
        "ess_share": ess / n if n else float("nan"),
        "max_weight": float(w.max()) if n else float("nan"),
        "mean_weight": float(w.mean()) if n else float("nan"),
        "matched_share": float(action_dist[np.arange(n), action].mean()) if n else float("nan"),
        "clipped_share": float((raw > clip).mean()) if clip is not None and n else 0.0,
    }
