"""Reward models q(x, a) for the direct method and doubly robust estimators.

Kept deliberately small: DM/DR need a calibrated estimate of E[r | x, a], not a strong ranker.

* `BucketMeanRewardModel`: the mean reward per (context bucket, action), shrunk towards the
  action's overall mean with `prior_strength` pseudo-observations. Exact for discrete contexts.
* `RegressionRewardModel`: logistic (0/1 rewards) or ridge regression on
  [one-hot(a), x (x) one-hot(a)], i.e. an intercept and a linear model of the context per action.

`cross_fit_predict` fits on K-1 folds and predicts the held-out fold, so DR's residual term does
not see the model's own training noise (the usual cross-fitting for DR).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import numpy as np
from scipy import sparse
from sklearn.feature_extraction import DictVectorizer
from sklearn.linear_model import LogisticRegression, Ridge

from replay.logs import BanditLog, Context, iter_contexts_numeric


class RewardModel(Protocol):
    def fit(self, contexts: Sequence[Context], action: np.ndarray, reward: np.ndarray,
            n_actions: int) -> RewardModel: ...

    def predict(self, contexts: Sequence[Context]) -> np.ndarray:
        """(n, n_actions) predicted rewards."""
        ...


def _whole_context(ctx: Context) -> Hashable:
    return tuple(sorted(ctx.items()))


@dataclass
class BucketMeanRewardModel:
    """q(x, a) = (sum of r in bucket(x) with action a + m * mean_a) / (count + m).

    `bucket` maps a context to a hashable key (default: the whole context, right for a few
    discrete context types; pass e.g. `lambda c: c.get("intent")` for continuous contexts).
    """

    bucket: Callable[[Context], Hashable] = _whole_context
    prior_strength: float = 1.0
    _sums: dict[tuple[Hashable, int], float] = field(default_factory=dict, init=False, repr=False)
    _counts: dict[tuple[Hashable, int], int] = field(default_factory=dict, init=False, repr=False)
    _action_mean: np.ndarray = field(default_factory=lambda: np.zeros(0), init=False, repr=False)

    def fit(self, contexts: Sequence[Context], action: np.ndarray, reward: np.ndarray,
            n_actions: int) -> BucketMeanRewardModel:
        self._sums, self._counts = {}, {}
        for ctx, a, r in zip(contexts, action, reward, strict=True):
            key = (self.bucket(ctx), int(a))
            self._sums[key] = self._sums.get(key, 0.0) + float(r)
            self._counts[key] = self._counts.get(key, 0) + 1
        overall = float(np.mean(reward)) if len(reward) else 0.0
        sums = np.bincount(action, weights=reward, minlength=n_actions)
        counts = np.bincount(action, minlength=n_actions)
        # Actions never logged fall back to the overall mean rather than 0.
        self._action_mean = (sums + self.prior_strength * overall) / (counts + self.prior_strength)
        return self

    def predict(self, contexts: Sequence[Context]) -> np.ndarray:
        n_actions = self._action_mean.shape[0]
        out = np.tile(self._action_mean, (len(contexts), 1))
        m = self.prior_strength
        for i, ctx in enumerate(contexts):
            b = self.bucket(ctx)
            for a in range(n_actions):
                c = self._counts.get((b, a))
                if c:
                    out[i, a] = (self._sums[(b, a)] + m * self._action_mean[a]) / (c + m)
        return out


@dataclass
class RegressionRewardModel:
    """Logistic or ridge regression on [one-hot(a), x (x) one-hot(a)].

    `kind="auto"` picks logistic when every reward is 0 or 1. String context values become
    one-hot features `k=v`. `alpha` is the L2 strength (ridge alpha, logistic C = 1 / alpha).
    """

    kind: Literal["auto", "logistic", "ridge"] = "auto"
    alpha: float = 1.0
    _vec: DictVectorizer | None = field(default=None, init=False, repr=False)
    _model: LogisticRegression | Ridge | None = field(default=None, init=False, repr=False)
    _n_actions: int = field(default=0, init=False, repr=False)
    _constant: float | None = field(default=None, init=False, repr=False)

    def _design(self, x: sparse.csr_matrix, action: np.ndarray) -> sparse.csr_matrix:
        n, d = x.shape
        k = self._n_actions
        onehot = sparse.csr_matrix((np.ones(n), (np.arange(n), action)), shape=(n, k))
        # Row i's context lands in the column block of its action: a separate slope per action.
        coo = x.tocoo()
        inter = sparse.csr_matrix((coo.data, (coo.row, action[coo.row] * d + coo.col)), shape=(n, k * d))
        return sparse.hstack([onehot, inter], format="csr")

    def fit(self, contexts: Sequence[Context], action: np.ndarray, reward: np.ndarray,
            n_actions: int) -> RegressionRewardModel:
        self._n_actions = n_actions
        self._vec = DictVectorizer(sparse=True)
        x = self._vec.fit_transform(iter_contexts_numeric(contexts)).tocsr()
        binary = bool(np.isin(reward, (0.0, 1.0)).all())
        kind = ("logistic" if binary else "ridge") if self.kind == "auto" else self.kind
        self._constant = None
        if kind == "logistic" and np.unique(reward).size < 2:
            # A single observed class: logistic regression cannot fit, and the answer is that class.
            self._constant = float(reward[0]) if len(reward) else 0.0
            return self
        design = self._design(x, np.asarray(action, np.int64))
        if kind == "logistic":
            self._model = LogisticRegression(C=1.0 / self.alpha, max_iter=1000)
        else:
            self._model = Ridge(alpha=self.alpha)
        self._model.fit(design, reward)
        return self

    def predict(self, contexts: Sequence[Context]) -> np.ndarray:
        if self._vec is None:
            raise RuntimeError("fit the reward model first")
        n = len(contexts)
        if self._constant is not None:
            return np.full((n, self._n_actions), self._constant)
        x = self._vec.transform(iter_contexts_numeric(contexts)).tocsr()
        out = np.empty((n, self._n_actions))
        for a in range(self._n_actions):
            design = self._design(x, np.full(n, a, dtype=np.int64))
            if isinstance(self._model, LogisticRegression):
                out[:, a] = self._model.predict_proba(design)[:, 1]
            else:
                out[:, a] = self._model.predict(design)
        return out


def cross_fit_predict(model_factory: Callable[[], RewardModel], log: BanditLog, n_folds: int = 2,
                      random_state: int | None = 0) -> np.ndarray:
    """(n, n_actions) predictions, each round predicted by a model that did not train on it
    (n_folds=1: one model fit and evaluated on everything)."""
    n = len(log)
    if n_folds <= 1:
        return model_factory().fit(log.contexts, log.action, log.reward, log.n_actions).predict(log.contexts)
    folds = np.random.default_rng(random_state).permutation(n) % n_folds
    out = np.empty((n, log.n_actions))
    for k in range(n_folds):
        train, test = np.flatnonzero(folds != k), np.flatnonzero(folds == k)
        model = model_factory().fit([log.contexts[i] for i in train], log.action[train], log.reward[train],
                                    log.n_actions)
        out[test] = model.predict([log.contexts[i] for i in test])
    return out
