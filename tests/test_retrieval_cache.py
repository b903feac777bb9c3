"""The per-arm retrieval cache on its own: bounded LRU, keys by retriever object and version."""

from __future__ import annotations

from dataclasses import dataclass

from retrievers.base import Candidate
from services.serving.retrieval_cache import RetrievalCache


@dataclass
class _Arm:
    """Only identity and `version` enter a key; nothing here is run."""

    name: str
    version: str | None = None


def _cands(*ids: str) -> list[Candidate]:
    return [Candidate(track_id=t, score=1.0 / r, rank=r) for r, t in enumerate(ids, start=1)]


def test_keys_name_the_model_and_entries_are_bounded_lru() -> None:
    cache = RetrievalCache(max_entries=2)
    lexical, xr_v1, xr_v2 = _Arm("lexical"), _Arm("xr", "v0001"), _Arm("xr", "v0002")
    cache.put(cache.key("lexical", lexical, "q", 100), _cands("a", "b"))
    got = cache.get(cache.key("lexical", lexical, "q", 100))
    assert got == _cands("a", "b")
    got.append(Candidate("z", 0.0, 9))  # the caller's list: the cache keeps its own
    assert cache.get(cache.key("lexical", lexical, "q", 100)) == _cands("a", "b")
    assert cache.get(cache.key("lexical", lexical, "q", 50)) is None  # another budget
    assert cache.get(cache.key("lexical", lexical, "Q", 100)) is None  # the query as the arm sees it
    assert cache.get(cache.key("lexical", _Arm("lexical"), "q", 100)) is None  # another retriever object
    cache.put(cache.key("xr", xr_v1, "q", 100), _cands("c"))
    assert cache.get(cache.key("xr", xr_v2, "q", 100)) is None  # a new version is a new key
    assert cache.get(cache.key("lexical", lexical, "q", 100)) is not None  # now xr v1 is the least recent
    cache.put(cache.key("xr", xr_v2, "q", 100), _cands("d"))  # evicts the least recently used
    assert len(cache) == 2 and cache.get(cache.key("lexical", lexical, "q", 100)) is not None
    assert cache.get(cache.key("xr", xr_v1, "q", 100)) is None
    assert cache.invalidate("xr") == 1 and len(cache) == 1
    assert 0 < (cache.hit_rate() or 0) < 1


def test_only_pure_arms_are_cached_and_zero_entries_is_off() -> None:
    assert RetrievalCache(10).enabled("lexical") and RetrievalCache(10).enabled("xr")
    assert not RetrievalCache(10).enabled("q2e")  # the click memory changes with every event
    assert not RetrievalCache(0).enabled("lexical")
