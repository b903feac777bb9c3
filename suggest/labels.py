"""The label space of autocompletion: queries the system has seen, each with what it leads to."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

KINDS = ("query", "artist", "track", "album")


@dataclass(frozen=True, slots=True)
class Label:
    """A completion. `text` is normalized (what the search pipeline would see as query_norm);
    `entity_id` is the track a "track" label opens, None for artists, albums and plain queries;
    `weight` is the popularity prior the trie ranks by (catalog popularity plus logged counts)."""

    text: str
    kind: str
    entity_id: str | None
    weight: float

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"label kind {self.kind!r} not in {KINDS}")


def merge_labels(labels: Iterable[Label]) -> list[Label]:
    """One label per text, sorted by text (the trie layers of the label tree need that order).

    Weights add up: a title that people also type as a logged query gains both. The kind and
    entity come from the heaviest catalog source when there is one, whatever the logged weight,
    so a query that is exactly a catalog entity's name still leads to that entity."""
    total: dict[str, float] = {}
    best: dict[str, Label] = {}
    for lab in labels:
        if not lab.text or not (lab.weight >= 0):
            continue
        total[lab.text] = total.get(lab.text, 0.0) + lab.weight
        cur = best.get(lab.text)
        if cur is None or _key(lab) > _key(cur):
            best[lab.text] = lab
    return [Label(t, best[t].kind, best[t].entity_id, total[t]) for t in sorted(best)]


def _key(lab: Label) -> tuple[bool, float, int]:
    # An entity beats a plain query (it can open a page directly); then weight; then kind order.
    return lab.kind != "query", lab.weight, {"track": 3, "artist": 2, "album": 1, "query": 0}[lab.kind]
