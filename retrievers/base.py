"""The retriever contract every strategy (lexical, dense, XR-Linear, Q2E, OpenSearch) implements."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Self, runtime_checkable


@dataclass(frozen=True, slots=True)
class Candidate:
    """One retrieved item. `rank` is 1-based within the retriever's own list."""

    track_id: str
    score: float
    rank: int


@dataclass(frozen=True, slots=True)
class Document:
    """What a retriever indexes. Field names are free so the same code indexes tracks
    (title, artist, album, genres, subgenres) and benchmark corpora (title, text)."""

    doc_id: str
    fields: Mapping[str, str]
    popularity: float = 0.0  # 0..1, used as a prior by retrievers that want one
    extra: Mapping[str, object] = field(default_factory=dict)


@runtime_checkable
class Retriever(Protocol):
    name: str

    def build(self, docs: Sequence[Document], *, progress: bool = False) -> None: ...

    def retrieve(self, query: str, k: int) -> list[Candidate]: ...

    def retrieve_batch(self, queries: Sequence[str], k: int) -> list[list[Candidate]]: ...

    def save(self, path: Path) -> None: ...

    @classmethod
    def load(cls, path: Path) -> Self: ...


def ranked(pairs: Sequence[tuple[str, float]]) -> list[Candidate]:
    """Turns (id, score) pairs already sorted best-first into candidates with 1-based ranks."""
    return [Candidate(track_id=i, score=float(s), rank=r) for r, (i, s) in enumerate(pairs, start=1)]
