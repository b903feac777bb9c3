"""The `Q2EStore` protocol: what the retriever and the service need from a Q2E store.

Two stores implement it: `MemoryQ2EStore` (library use, tests of the logic) and `RedisQ2EStore`
(service mode). `_progress` is the seeding progress bar both use.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

from retrievers.q2e.config import Q2EConfig
from retrievers.q2e.events import Q2EEvent
from retrievers.q2e.stats import Learned, Q2EStats, TrackStats


@runtime_checkable
class Q2EStore(Protocol):
    config: Q2EConfig

    def seed(self, pairs: Iterable[tuple[str, str, float]], *, version: str = "", progress: bool = False,
             total: int | None = None) -> int: ...

    def seed_version(self) -> str | None: ...

    def lookup(self, query: str, k: int, *, now: float | None = None) -> list[tuple[str, float]]: ...

    def lookup_many(self, queries: Sequence[str], k: int, *,
                    now: float | None = None) -> list[list[tuple[str, float]]]: ...

    def scores(self, query: str, track_ids: Sequence[str], *, now: float | None = None) -> dict[str, float]: ...

    def apply_events(self, events: Sequence[Q2EEvent], *, now: float | None = None) -> int: ...

    def impressions(self, query: str, track_ids: Sequence[str], search_id: str, *, ts: float | None = None) -> bool: ...

    def stats(self, query: str, *, now: float | None = None) -> Q2EStats: ...

    def track_stats(self, query: str, track_id: str) -> TrackStats | None: ...

    def learned(self, query: str, *, now: float | None = None) -> list[Learned]: ...

    def clear(self) -> None: ...


def _progress(it: Iterable | None, enabled: bool, total: int | None, desc: str = "seed q2e") -> Any:
    """A tqdm bar when asked for. With `it` None, returns the bar (or None) for manual updates."""
    if not enabled:
        return it
    from tqdm.auto import tqdm

    if it is None:
        return tqdm(total=total, desc=desc, unit="pair")
    return tqdm(it, total=total, desc=desc, unit="pair")
