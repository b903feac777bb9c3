"""Shadow mode: every retriever ran, so the reward of every subset is known (full information).

These helpers turn one shadow search (each arm's candidates, the items the user acted on, each
arm's latency) into per-action rewards and latencies for VWPolicy.learn_full_information, and
into per-arm credit for ArmStats.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence

from bandit.actions import Action


def arm_hits(candidates: Mapping[str, Sequence[str]], acted: Collection[str], budget: int) -> dict[str, bool]:
    """Whether each arm's top-`budget` candidates contain an item the user acted on."""
    acted_set = set(acted)
    return {arm: not acted_set.isdisjoint(ids[:budget]) for arm, ids in candidates.items()}


def subset_rewards(actions: Sequence[Action], candidates: Mapping[str, Sequence[str]],
                   acted: Collection[str]) -> list[float]:
    """Reward of each action: 1 if the union of its arms' top-budget candidates holds an acted-on
    item, else 0 (no action in the join window is reward 0 for every subset). An arm missing from
    `candidates` (failed or timed out) contributes nothing."""
    acted_set = set(acted)
    out = []
    hits_by_budget: dict[int, dict[str, bool]] = {}
    for action in actions:
        hits = hits_by_budget.get(action.budget)
        if hits is None:
            hits = hits_by_budget[action.budget] = arm_hits(candidates, acted_set, action.budget)
        out.append(1.0 if any(hits.get(a, False) for a in action.arms) else 0.0)
    return out


def subset_latencies(actions: Sequence[Action], arm_ms: Mapping[str, float]) -> list[float | None]:
    """Latency each action would have cost: the sum of its arms' measured latencies (they compete for
    the same cores), None when an arm's latency was not measured."""
    out: list[float | None] = []
    for action in actions:
        vals = [arm_ms.get(a) for a in action.arms]
        out.append(None if any(v is None for v in vals) else float(sum(vals)))  # type: ignore[arg-type]
    return out
