"""Retriever-selection policies behind one interface: the VW contextual bandit and baselines.

Every policy returns the full distribution over the offered actions, so whatever it chose can be
logged with its propensity and evaluated off-policy later. Cost (what VW minimizes) is
    cost = -reward + latency_lambda * latency_cost(action)
where latency_cost is the number of arms ("arms" mode), the latency in units of reference_ms
("ms" mode), or the action's arms priced by their measured milliseconds ("arm_ms" mode: a price
table of per-arm median ms, scaled so that the mean arm costs 1, i.e. what every arm costs in
"arms" mode): the bandit buys recall at a price instead of always running everything.
"""

from __future__ import annotations

import math
import random
import threading
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal, Protocol, runtime_checkable

import vowpal_wabbit_next as vw

from bandit.actions import Action, render_action_lines
from bandit.context import render_shared

# Bumped when the example layout (namespaces, feature names) changes: a model trained on another
# layout must not be loaded silently.
FEATURE_LAYOUT_VERSION = 1
VW_VERSION: str = vw.VW_VERSION
# "ms" mode divides a search's latency by this, so that the latency cost is an O(1) number.
DEFAULT_REFERENCE_MS = 10.0


class RandomLike(Protocol):
    def random(self) -> float: ...


@dataclass(frozen=True)
class Decision:
    actions: list[Action]
    probabilities: list[float]  # over `actions`, sums to 1
    chosen: int
    propensity: float  # probabilities[chosen]
    policy: str
    version: str | None = None

    @property
    def action(self) -> Action:
        return self.actions[self.chosen]


@runtime_checkable
class Policy(Protocol):
    name: str

    def decide(self, context: Mapping[str, float], actions: Sequence[Action], rng: RandomLike | None = None
               ) -> Decision: ...

    def learn(self, context: Mapping[str, float], actions: Sequence[Action], chosen: int, reward: float,
              propensity: float, latency_ms: float | None = None) -> None: ...


@dataclass(frozen=True)
class CostModel:
    latency_lambda: float = 0.05
    latency_mode: Literal["arms", "ms", "arm_ms"] = "arms"
    reference_ms: float = DEFAULT_REFERENCE_MS
    # "arm_ms" mode's price table: (arm, median ms when run alone), as measured by the cold start.
    # A fixed table rather than each search's observed time, so that the cold start and online
    # learning price an action alike, and a cache hit or a loaded machine does not make an arm
    # look cheap or dear for one search.
    arm_ms: tuple[tuple[str, float], ...] = ()

    def with_arm_ms(self, arm_ms: Mapping[str, float]) -> CostModel:
        """This cost model in "arm_ms" mode with the given per-arm milliseconds."""
        table = tuple(sorted((a, float(ms)) for a, ms in arm_ms.items() if math.isfinite(ms) and ms >= 0))
        return replace(self, latency_mode="arm_ms", arm_ms=table)

    def latency_cost(self, action: Action, latency_ms: float | None = None) -> float:
        if self.latency_mode == "arm_ms":
            prices = dict(self.arm_ms)
            mean = sum(prices.values()) / len(prices) if prices else 0.0
            if mean > 0 and all(a in prices for a in action.arms):
                return sum(prices[a] for a in action.arms) / mean
            # No table (a model trained before prices were measured) or an arm it does not know:
            # every arm costs the same, as in "arms" mode.
            return float(len(action.arms))
        if self.latency_mode == "arms":
            return float(len(action.arms))
        if latency_ms is None:
            raise ValueError("latency_mode='ms' needs the search's latency_ms")
        return latency_ms / self.reference_ms

    def cost(self, reward: float, action: Action, latency_ms: float | None = None) -> float:
        if not math.isfinite(reward):
            raise ValueError(f"reward must be finite, got {reward}")
        return -reward + self.latency_lambda * self.latency_cost(action, latency_ms)


@dataclass(frozen=True)
class VWConfig:
    exploration: Literal["epsilon", "squarecb"] = "epsilon"
    # With ~11 actions, 0.05 leaves each non-greedy action 0.45% and the policy can sit on a safe
    # two-arm subset for thousands of rounds; 0.1 learned the simulation's mapping in every seed.
    epsilon: float = 0.1
    gamma_scale: float = 10.0
    gamma_exponent: float = 0.5
    interactions: tuple[str, ...] = ("sa",)
    # VW's default 0.5 left the greedy policy stuck on the "safe" pair in the two-query-type
    # simulation (tests/test_bandit.py) in some seeds; 2.0 learned the single arms in every seed.
    learning_rate: float = 2.0
    cost: CostModel = field(default_factory=CostModel)
    seed: int = 0
    # Importance probability given to each action's example in full-information (shadow) learning;
    # None means 1/len(actions). 1.0 treats every action as observed with certainty.
    full_info_probability: float | None = 1.0
    extra_args: tuple[str, ...] = ()

    def vw_args(self) -> list[str]:
        args = ["--cb_explore_adf", "--quiet", "--learning_rate", repr(self.learning_rate),
                "--random_seed", str(self.seed)]
        if self.exploration == "epsilon":
            args += ["--epsilon", repr(self.epsilon)]
        elif self.exploration == "squarecb":
            args += ["--squarecb", "--gamma_scale", repr(self.gamma_scale), "--gamma_exponent",
                     repr(self.gamma_exponent)]
        else:
            raise ValueError(f"unknown exploration {self.exploration!r}")
        for q in self.interactions:
            args += ["--interactions", q]
        return args + list(self.extra_args)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["interactions"] = list(self.interactions)
        d["extra_args"] = list(self.extra_args)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> VWConfig:
        d = dict(d)
        cost = dict(d.get("cost", {}))
        cost["arm_ms"] = tuple((str(a), float(ms)) for a, ms in cost.get("arm_ms", ()))  # JSON gives lists
        d["cost"] = CostModel(**cost)
        d["interactions"] = tuple(d.get("interactions", ("sa",)))
        d["extra_args"] = tuple(d.get("extra_args", ()))
        return cls(**d)


def _sample(probabilities: Sequence[float], rng: RandomLike) -> int:
    u = rng.random()
    acc = 0.0
    last = 0
    for i, p in enumerate(probabilities):
        if p > 0:
            acc += p
            last = i
            if u < acc:
                return i
    # Float round-off can leave u >= the final cumulative sum: fall back to the last possible action.
    return last


def _check_propensity(propensity: float) -> None:
    if not (0.0 < propensity <= 1.0):
        raise ValueError(f"propensity must be in (0, 1], got {propensity}")


def _fast_path(ws: vw.Workspace) -> tuple[Any, Any] | None:
    """vowpal-wabbit-next's core parse/predict functions when this version exposes them (0.7.0
    does; tests check both paths agree), else None and the public API is used."""
    core_mod = getattr(vw, "_core", None)
    parse = getattr(core_mod, "_parse_line_text", None)
    core = getattr(ws, "_workspace", None)
    if parse is None or core is None or not all(hasattr(core, m) for m in ("predict_multi_ex_one",
                                                                          "learn_multi_ex_one")):
        return None
    return parse, core


class VWPolicy:
    """Contextual bandit over retriever subsets: VW `--cb_explore_adf` (epsilon-greedy or SquareCB)."""

    name = "vw"

    def __init__(self, config: VWConfig | None = None, model_data: bytes | None = None, version: str = "v0000",
                 fast_path: bool = True) -> None:
        self.config = config or VWConfig()
        self.version = version
        args = self.config.vw_args()
        self._ws = vw.Workspace(args, model_data=model_data) if model_data is not None else vw.Workspace(args)
        self._parser = vw.TextFormatParser(self._ws)
        self._fast = _fast_path(self._ws) if fast_path else None
        self._rng = random.Random(self.config.seed)
        # A VW workspace is not thread safe; serving threads and the learner share one.
        self._lock = threading.Lock()
        self.n_learned = 0

    @classmethod
    def from_bytes(cls, data: bytes, config: VWConfig | None = None, version: str = "v0000") -> VWPolicy:
        """Restore a serialized model; raises ValueError if VW cannot read the bytes."""
        try:
            return cls(config, model_data=data, version=version)
        except RuntimeError as e:
            raise ValueError(f"not a loadable VW model ({len(data)} bytes): {e}") from e

    def serialize(self) -> bytes:
        with self._lock:
            return bytes(self._ws.serialize())

    # -- examples ---------------------------------------------------------------------------------
    def example_lines(self, context: Mapping[str, float], actions: Sequence[Action],
                      labelled: int | None = None, cost: float = 0.0, probability: float = 1.0) -> list[str]:
        """The VW text lines for one decision; `labelled` puts '0:cost:probability' on that action."""
        lines = [render_shared(context), *render_action_lines(actions)]
        if labelled is not None:
            lines[labelled + 1] = f"0:{cost:.6g}:{probability:.6g} {lines[labelled + 1]}"
        return lines

    def _parse(self, lines: list[str]) -> list[vw.Example]:
        return [self._parser.parse_line(line) for line in lines]

    def _predict(self, lines: list[str]) -> list[tuple[int, float]]:
        if self._fast is not None:
            # The public wrappers re-check label types and wrap every example in Python objects,
            # which costs more than VW's own prediction for 11 actions; call the core directly.
            parse, core = self._fast
            return core.predict_multi_ex_one([parse(core, line) for line in lines])
        return self._ws.predict_one(self._parse(lines))

    def _learn(self, lines: list[str]) -> None:
        if self._fast is not None:
            parse, core = self._fast
            core.learn_multi_ex_one([parse(core, line) for line in lines])
        else:
            self._ws.learn_one(self._parse(lines))

    # -- policy interface -------------------------------------------------------------------------
    def probabilities(self, context: Mapping[str, float], actions: Sequence[Action]) -> list[float]:
        if not actions:
            raise ValueError("no actions to choose from")
        lines = self.example_lines(context, actions)
        with self._lock:
            pred = self._predict(lines)
        probs = [0.0] * len(actions)
        for idx, p in pred:
            probs[idx] = max(0.0, float(p))
        total = sum(probs)
        # VW returns float32 probabilities; renormalize so the logged distribution sums to 1.
        return [p / total for p in probs] if total > 0 else [1.0 / len(actions)] * len(actions)

    def decide(self, context: Mapping[str, float], actions: Sequence[Action], rng: RandomLike | None = None
               ) -> Decision:
        probs = self.probabilities(context, actions)
        chosen = _sample(probs, rng or self._rng)
        return Decision(list(actions), probs, chosen, probs[chosen], self.name, self.version)

    def learn_cost(self, context: Mapping[str, float], actions: Sequence[Action], chosen: int, cost: float,
                   propensity: float) -> None:
        """Learn one logged decision with an already computed cost. `propensity` is the probability
        the logging policy (any policy, not necessarily this one) gave the chosen action; VW's cb
        estimators use it as the importance weight."""
        _check_propensity(propensity)
        if not 0 <= chosen < len(actions):
            raise IndexError(f"chosen={chosen} outside {len(actions)} actions")
        if not math.isfinite(cost):
            raise ValueError(f"cost must be finite, got {cost}")
        lines = self.example_lines(context, actions, chosen, cost, propensity)
        with self._lock:
            self._learn(lines)
            self.n_learned += 1

    def learn(self, context: Mapping[str, float], actions: Sequence[Action], chosen: int, reward: float,
              propensity: float, latency_ms: float | None = None) -> None:
        cost = self.config.cost.cost(reward, actions[chosen], latency_ms)
        self.learn_cost(context, actions, chosen, cost, propensity)

    def learn_full_information(self, context: Mapping[str, float], actions: Sequence[Action],
                               rewards: Sequence[float], latencies: Sequence[float | None] | None = None) -> None:
        """Shadow mode: every retriever ran, so every action's reward is known. Teaches VW each
        action's cost as its own cb_adf example (same context, that action labelled)."""
        if len(rewards) != len(actions):
            raise ValueError(f"{len(rewards)} rewards for {len(actions)} actions")
        if latencies is not None and len(latencies) != len(actions):
            raise ValueError(f"{len(latencies)} latencies for {len(actions)} actions")
        p = self.config.full_info_probability or 1.0 / len(actions)
        for i, action in enumerate(actions):
            lat = latencies[i] if latencies is not None else None
            self.learn_cost(context, actions, i, self.config.cost.cost(rewards[i], action, lat), p)


class FixedPolicy:
    """Always the action with exactly these arms (probability 1). `arms=None` means the action
    with the most arms ("run every retriever"). With `budget` None the first matching budget wins."""

    def __init__(self, arms: Sequence[str] | None, budget: int | None = None) -> None:
        self.arms = frozenset(arms) if arms is not None else None
        self.budget = budget
        self.name = "fixed:" + ("+".join(arms) if arms is not None else "all")

    def index(self, actions: Sequence[Action]) -> int:
        if not actions:
            raise ValueError("no actions to choose from")
        candidates = [i for i, a in enumerate(actions) if self.budget is None or a.budget == self.budget]
        if self.arms is None:
            if candidates:
                return max(candidates, key=lambda i: len(actions[i].arms))
        else:
            for i in candidates:
                if frozenset(actions[i].arms) == self.arms:
                    return i
        raise ValueError(f"{self.name} (budget {self.budget}) is not among the offered actions")

    def decide(self, context: Mapping[str, float], actions: Sequence[Action], rng: RandomLike | None = None
               ) -> Decision:
        idx = self.index(actions)
        probs = [0.0] * len(actions)
        probs[idx] = 1.0
        return Decision(list(actions), probs, idx, 1.0, self.name)

    def learn(self, context: Mapping[str, float], actions: Sequence[Action], chosen: int, reward: float,
              propensity: float, latency_ms: float | None = None) -> None:
        """A fixed policy does not learn."""


class UniformRandomPolicy:
    """Every offered action with equal probability: the logging policy with the widest support."""

    name = "uniform"

    def __init__(self, seed: int = 0) -> None:
        self._rng = random.Random(seed)

    def decide(self, context: Mapping[str, float], actions: Sequence[Action], rng: RandomLike | None = None
               ) -> Decision:
        if not actions:
            raise ValueError("no actions to choose from")
        probs = [1.0 / len(actions)] * len(actions)
        chosen = min(int((rng or self._rng).random() * len(actions)), len(actions) - 1)
        return Decision(list(actions), probs, chosen, probs[chosen], self.name)

    def learn(self, context: Mapping[str, float], actions: Sequence[Action], chosen: int, reward: float,
              propensity: float, latency_ms: float | None = None) -> None:
        """Uniform random does not learn."""
