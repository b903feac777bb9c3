"""Running per-retriever (arm) reward rate and latency, as exponentially weighted averages.

Per-arm credit is the caller's job: with each arm's candidates and the item the user acted on,
the caller knows which arms would have earned the reward (all of them in shadow mode).
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterable
from dataclasses import asdict, dataclass

from bandit.context import ARM_MS_PREFIX, ARM_RATE_PREFIX


@dataclass
class ArmStat:
    reward_rate: float
    latency_ms: float
    n_reward: int = 0
    n_latency: int = 0


class ArmStats:
    """EWMA reward rate and latency per arm.

    `alpha` is the weight of a new observation once warmed up; before that the step is 1/n, so
    the first observations are plain averages instead of being dragged toward the prior.
    """

    def __init__(self, alpha: float = 0.01, prior_reward: float = 0.5, prior_latency_ms: float = 5.0) -> None:
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.alpha = alpha
        self.prior_reward = prior_reward
        self.prior_latency_ms = prior_latency_ms
        self._arms: dict[str, ArmStat] = {}
        self._lock = threading.Lock()

    def _get(self, arm: str) -> ArmStat:
        st = self._arms.get(arm)
        if st is None:
            st = self._arms[arm] = ArmStat(self.prior_reward, self.prior_latency_ms)
        return st

    def observe_reward(self, arm: str, reward: float) -> None:
        if not math.isfinite(reward):
            raise ValueError(f"reward must be finite, got {reward}")
        with self._lock:
            st = self._get(arm)
            st.n_reward += 1
            step = max(self.alpha, 1.0 / st.n_reward)
            st.reward_rate += step * (reward - st.reward_rate)

    def observe_latency(self, arm: str, latency_ms: float) -> None:
        if not math.isfinite(latency_ms) or latency_ms < 0:
            raise ValueError(f"latency_ms must be finite and >= 0, got {latency_ms}")
        with self._lock:
            st = self._get(arm)
            st.n_latency += 1
            step = max(self.alpha, 1.0 / st.n_latency)
            st.latency_ms += step * (latency_ms - st.latency_ms)

    def reward_rate(self, arm: str) -> float:
        st = self._arms.get(arm)
        return st.reward_rate if st else self.prior_reward

    def latency_ms(self, arm: str) -> float:
        st = self._arms.get(arm)
        return st.latency_ms if st else self.prior_latency_ms

    def expected_latency_ms(self, arms: Iterable[str]) -> float:
        """Total retrieval cost of running these arms (sum: they share the same 2 cores)."""
        return sum(self.latency_ms(a) for a in arms)

    def arms(self) -> list[str]:
        return sorted(self._arms)

    def as_context(self, arms: Iterable[str] | None = None) -> dict[str, float]:
        """Per-arm features to merge into the bandit context (and so into the logged record)."""
        out: dict[str, float] = {}
        # Rounded: the logs stay readable and the policy's rendered action lines can be reused until
        # a statistic moves visibly (an EWMA otherwise changes in the 10th digit on every event).
        for arm in (self.arms() if arms is None else arms):
            out[ARM_RATE_PREFIX + arm] = round(self.reward_rate(arm), 3)
            out[ARM_MS_PREFIX + arm] = round(self.latency_ms(arm), 2)
        return out

    def to_dict(self) -> dict[str, object]:
        with self._lock:
            return {"alpha": self.alpha, "prior_reward": self.prior_reward, "prior_latency_ms": self.prior_latency_ms,
                    "arms": {a: asdict(s) for a, s in self._arms.items()}}

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> ArmStats:
        stats = cls(float(data["alpha"]), float(data["prior_reward"]), float(data["prior_latency_ms"]))
        for arm, st in dict(data.get("arms", {})).items():
            stats._arms[arm] = ArmStat(**st)
        return stats

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> ArmStats:
        return cls.from_dict(json.loads(text))
