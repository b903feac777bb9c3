"""Q2E's configuration: the prior, the decay and the event weights every store scores with,
the lookup and deduplication limits, and the format version of what the stores and the
retriever's manifest hold. Frozen dataclasses, so a store and a retriever can compare configs and
the retriever can save one with `to_dict` and load it with `from_dict`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

FORMAT_VERSION = 1


@dataclass(frozen=True, slots=True)
class EventWeights:
    """How much one event moves the posterior. Positive: click, play, like, add_to_favorites.
    Negative: skip, and each impression that did not lead to a click or play."""

    click: float = 1.0
    play: float = 1.0
    like: float = 2.0
    add_to_favorites: float = 2.0
    skip: float = 1.0
    impression: float = 0.25  # a shown-not-clicked result is weak evidence (position bias, scanning)


@dataclass(frozen=True, slots=True)
class Q2EConfig:
    prior_strength: float = 5.0  # pseudo-observations behind the predicted score
    default_prior: float = 0.05  # predicted score of a pair first seen through feedback
    half_life_s: float = 30 * 86400.0
    weights: EventWeights = field(default_factory=EventWeights)
    seen_ttl_s: int = 7 * 86400  # how long an event/search id is remembered for deduplication
    order_insensitive: bool = False  # second lookup by sorted tokens when the exact query misses
    max_query_chars: int = 256  # longer normalized queries are not remembered (never repeated)
    max_exact_evidence: int = 256  # above this many pairs with evidence, lookups rescore a window only
    moods: bool = True  # generate "chill dance pop"-style pseudo-queries at seeding

    def to_dict(self) -> dict[str, object]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, object]) -> Q2EConfig:
        d = dict(d)
        weights = EventWeights(**d.pop("weights", {}))  # type: ignore[arg-type]
        return cls(weights=weights, **d)  # type: ignore[arg-type]
