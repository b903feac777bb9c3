"""The promotion gate: a newly learned model serves only if held-out evidence says it is no worse
than the one serving now.

One small class per model kind, each with `evaluate(...) -> GateResult`; the numbers go into the
artifact store's decision log (models/decisions.jsonl), `/metrics` and the web page.

* Ranker: nDCG@10 of both models on the same held-out logged searches (the most recent labelled
  ones, never trained on): the logged feature rows of the served list plus the sampled unserved
  candidates, with cascade click labels. And on the cold start's held-out pseudo-queries, so a
  model fitted to the queries that get traffic cannot buy that with the queries that do not.
      promote  iff  nDCG_recent(new) >= nDCG_recent(old) - tol  and
                    nDCG_general(new) >= nDCG_general(cold start) - tol_general
  (nDCG_general(old) when the cold start's figure is unknown). The floor is the cold-start model's
  own figure, not the serving one's, so a chain of promotions that each lose a little on the
  general queries cannot add up to a large loss.
* XR-Linear: the same test with MRR@100 of the played track on held-out recent (query, track)
  pairs.
* Bandit: progressive validation. Before the learner applies a logged search, the candidate's
  probability of the logged action is recorded, so every search is evaluated before the model
  has learned from it. The candidate's value is the self-normalized IPS estimate
      V_new = sum_i w_i r_i / sum_i w_i,   w_i = pi_new(a_i | x_i) / p_i,
  the serving policy's is its on-policy mean net reward (1/n) sum_i r_i over the same searches,
  r_i = reward - latency cost. promote iff V_new >= V_old - tol; refuse iff the bootstrap 95%
  interval of V_new lies wholly below V_old - tol; otherwise hold and keep collecting.
A model is promoted without a comparison only when nothing serves yet (the first cold start).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from ranker.model import RankData
from replay.estimators import SelfNormalizedIPS, bootstrap_ratio_interval

GENERAL_TOLERANCE = 0.01  # cold-start held-out set: ~300 pseudo-queries, nDCG noise ~0.01


@dataclass
class GateResult:
    promote: bool
    report: dict[str, object] = field(default_factory=dict)


def ndcg_at(scores: np.ndarray, labels: np.ndarray, k: int = 10) -> float:
    """nDCG@k of one ranked group with graded labels (gain 2^l - 1), 0 when nothing is relevant."""
    if labels.size == 0 or labels.max() <= 0:
        return 0.0
    order = np.argsort(-scores, kind="stable")[:k]
    disc = 1.0 / np.log2(np.arange(2, order.size + 2))
    dcg = float(((2.0 ** labels[order] - 1) * disc).sum())
    ideal = np.sort(labels)[::-1][:k]
    idcg = float(((2.0 ** ideal - 1) * disc[: ideal.size]).sum())
    return dcg / idcg if idcg > 0 else 0.0


def mean_ndcg(predict: Callable[[np.ndarray], np.ndarray], data: RankData, k: int = 10) -> float:
    if data.group.size == 0:
        return float("nan")
    scores = np.asarray(predict(np.asarray(data.X, dtype=np.float32)), dtype=float)
    out, start = [], 0
    for g in data.group.tolist():
        out.append(ndcg_at(scores[start:start + g], np.asarray(data.y[start:start + g], dtype=float), k))
        start += g
    return float(np.mean(out))


class Predictor(Protocol):
    """Anything that scores feature rows (ranker.model.LTRModel)."""

    def predict(self, x: np.ndarray) -> np.ndarray: ...


class RankerGate:
    def __init__(self, tolerance: float, general_tolerance: float = GENERAL_TOLERANCE, min_groups: int = 20):
        self.tolerance, self.general_tolerance, self.min_groups = tolerance, general_tolerance, min_groups

    def evaluate(self, candidate: Predictor, serving: Predictor | None, recent: RankData,
                 general: RankData | None, general_baseline: float | None = None) -> GateResult:
        if recent.group.size < self.min_groups:
            return GateResult(False, {"reason": f"only {recent.group.size} held-out searches "
                                                f"(need {self.min_groups})"})
        rep: dict[str, object] = {"holdout_searches": int(recent.group.size),
                                  "ndcg10_recent_new": mean_ndcg(candidate.predict, recent)}
        if general is not None and general.group.size:
            rep["ndcg10_general_new"] = mean_ndcg(candidate.predict, general)
        if serving is None:
            return GateResult(True, {**rep, "reason": "nothing serving"})
        rep["ndcg10_recent_old"] = mean_ndcg(serving.predict, recent)
        ok = rep["ndcg10_recent_new"] >= rep["ndcg10_recent_old"] - self.tolerance  # type: ignore[operator]
        if "ndcg10_general_new" in rep:
            rep["ndcg10_general_old"] = mean_ndcg(serving.predict, general)  # type: ignore[arg-type]
            floor = float(rep["ndcg10_general_old"])  # type: ignore[arg-type]
            if general_baseline is not None:
                rep["ndcg10_general_coldstart"] = floor = general_baseline
            ok = ok and rep["ndcg10_general_new"] >= floor - self.general_tolerance  # type: ignore[operator]
        rep["reason"] = "no worse than serving" if ok else "worse than serving on held-out searches"
        return GateResult(bool(ok), rep)


def mrr_at(ranked: Sequence[Sequence[str]], targets: Sequence[str], k: int = 100) -> float:
    if not targets:
        return float("nan")
    total = 0.0
    for ids, t in zip(ranked, targets, strict=True):
        top = list(ids[:k])
        total += 1.0 / (top.index(t) + 1) if t in top else 0.0
    return total / len(targets)


class XRGate:
    def __init__(self, tolerance: float, min_pairs: int = 20):
        self.tolerance, self.min_pairs = tolerance, min_pairs

    def evaluate(self, candidate: Callable[[list[str]], list[list[str]]],
                 serving: Callable[[list[str]], list[list[str]]] | None,
                 holdout: Sequence[tuple[str, str]]) -> GateResult:
        if len(holdout) < self.min_pairs:
            return GateResult(False, {"reason": f"only {len(holdout)} held-out pairs (need {self.min_pairs})"})
        queries = [q for q, _ in holdout]
        targets = [t for _, t in holdout]
        rep: dict[str, object] = {"holdout_pairs": len(holdout), "mrr100_new": mrr_at(candidate(queries), targets)}
        if serving is None:
            return GateResult(True, {**rep, "reason": "nothing serving"})
        rep["mrr100_old"] = mrr_at(serving(queries), targets)
        ok = rep["mrr100_new"] >= rep["mrr100_old"] - self.tolerance  # type: ignore[operator]
        rep["reason"] = "no worse than serving" if ok else "worse than serving on held-out clicks"
        return GateResult(bool(ok), rep)


class BanditGate:
    """Progressive validation of the learning bandit against the serving one (module docstring)."""

    def __init__(self, tolerance: float, min_searches: int = 50):
        self.tolerance, self.min_searches = tolerance, min_searches
        self.reset()

    def reset(self) -> None:
        self.rewards: list[float] = []
        self.pscores: list[float] = []
        self.p_new: list[float] = []

    def observe(self, p_new_of_logged: float, propensity: float, net_reward: float) -> None:
        self.p_new.append(float(p_new_of_logged))
        self.pscores.append(float(propensity))
        self.rewards.append(float(net_reward))

    def __len__(self) -> int:
        return len(self.rewards)

    def evaluate(self) -> GateResult:
        n = len(self.rewards)
        if n < self.min_searches:
            return GateResult(False, {"reason": f"only {n} searches since the last promotion "
                                                f"(need {self.min_searches})", "searches": n})
        r = np.asarray(self.rewards)
        ps = np.asarray(self.pscores)
        # SNIPS needs the target's probability of the logged action only: a 1-column action_dist.
        dist = np.asarray(self.p_new)[:, None]
        act = np.zeros(n, dtype=int)
        v_new = SelfNormalizedIPS().estimate_policy_value(reward=r, pscore=ps, action_dist=dist, action=act)
        v_old = float(r.mean())
        w = dist[:, 0] / ps
        ci = bootstrap_ratio_interval(w * r, w, random_state=0, n_bootstrap=200)
        ok = v_new >= v_old - self.tolerance
        # Refuse only on evidence: the whole 95% interval below the serving value. In between,
        # the candidate is held (kept learning, not served) until more searches decide.
        worse = ci["upper"] == ci["upper"] and ci["upper"] < v_old - self.tolerance
        verdict = "no worse than serving" if ok else ("worse than serving" if worse else "not yet shown no worse")
        return GateResult(bool(ok), {
            "searches": n, "value_new_snips": float(v_new), "value_new_ci95": [ci["lower"], ci["upper"]],
            "value_serving": v_old, "clearly_worse": bool(worse), "reason": verdict})
