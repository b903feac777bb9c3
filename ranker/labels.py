"""Click-log labels for the ranker: cascade-model relevance plus optional position debiasing.

Input is the worker's joined log as plain dicts (`JoinedRecord.model_dump()`): `served` (track ids
in served order), `feature_names`, `features` (one row per served item, None for NaN) and `events`
(dicts or objects with track_id, type, position and, for an event on an artist or album hit,
entity_id).

Labels (cascade model: the user scans top-down and stops after the last item they acted on):
- graded gain from the strongest action on the item: play 3 > like / add_to_favorites 2 > click 1;
- skip = 0, and a skip also cancels a bare click (clicked, then skipped = not wanted), but not a
  play or like, which are stronger evidence than the skip;
- shown above the last interacted position (click, play, like, fav or skip) and not acted on = 0;
- below the last interacted position = ignored (None): the user probably never looked there;
- a search with no events at all carries no label information and is ignored entirely;
- the sampled unserved candidates a search logged (`sampled_features`) are label 0;
- an event on an artist or album hit (entity_id set) names the top track it played: that track's
  row, when the track was also served as a result, gets the event's label like a click on it, but
  the event says nothing about the results the user scanned (the entity hit sits apart from them),
  so it does not move the last interacted position. When the track is among the sampled unserved
  candidates instead, its row gets the label there (a played track is never a label-0 negative).

Position debiasing (inverse propensity weighting, position-based model): P(examined | position k)
= 1 / k**eta. LightGBM's lambdarank multiplies each row's gradient and hessian by its weight, so a
positive at position k gets weight k**eta (clipped), making a click deep in the list count as much
as the many clicks it stands for; negatives keep weight 1. This reweights the positive side of each
pair only (per-row, not per-pair, weights are what LightGBM offers), the usual IPW-LambdaMART
approximation.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ranker.model import RankData

DEFAULT_GAINS: dict[str, int] = {"play": 3, "like": 2, "add_to_favorites": 2, "click": 1, "skip": 0}


def _event_fields(e: object) -> tuple[str, str, int | None, bool]:
    """(track_id, type, position, on an entity hit)."""
    if isinstance(e, Mapping):
        return str(e["track_id"]), str(e["type"]), e.get("position"), e.get("entity_id") is not None
    if isinstance(e, tuple | list):
        return str(e[0]), str(e[1]), (e[2] if len(e) > 2 else None), False
    return (str(e.track_id), str(e.type), getattr(e, "position", None),  # type: ignore[attr-defined]
            getattr(e, "entity_id", None) is not None)


def cascade_labels(served: Sequence[str], events: Iterable[object],
                   gains: Mapping[str, int] = DEFAULT_GAINS) -> list[int | None]:
    """One label per served position: graded gain, 0, or None (ignored). Events are dicts, objects or
    (track_id, type, position) tuples; an event is placed by its track_id in `served`, and events
    for tracks that were not served are dropped (they cannot be attributed to this ranking)."""
    where = {tid: i for i, tid in reversed(list(enumerate(served)))}  # first occurrence wins
    best: dict[int, int] = {}
    skipped: set[int] = set()
    via_entity: set[int] = set()  # rows labelled by an event on an entity hit
    last = -1
    for e in events:
        tid, etype, _, on_entity = _event_fields(e)
        i = where.get(tid)
        if i is None or etype not in gains:
            continue
        if on_entity:
            via_entity.add(i)
        else:
            last = max(last, i)
        if etype == "skip":
            skipped.add(i)
        else:
            best[i] = max(best.get(i, 0), int(gains[etype]))
    if last < 0 and not via_entity:
        return [None] * len(served)
    click_gain = int(gains.get("click", 1))
    labels: list[int | None] = []
    for i in range(len(served)):
        if i > last and i not in via_entity:
            labels.append(None)
            continue
        g = best.get(i, 0)
        if i in skipped and g <= click_gain:
            g = 0
        labels.append(g)
    return labels


def _entity_plays(rec: Mapping[str, object], events: Sequence[object], gains: Mapping[str, int]) -> dict[str, int]:
    """Labels of the tracks played from an artist or album hit that were not served as results
    themselves (they may be among the sampled candidates): track id -> gain, skips cancelling a
    bare click as in cascade_labels."""
    on_entity = [e for e in events if _event_fields(e)[3]]
    if not on_entity:
        return {}
    served = set(rec.get("served") or [])  # type: ignore[call-overload]
    tracks = list(dict.fromkeys(t for t, *_ in map(_event_fields, on_entity) if t not in served))
    return {t: lab for t, lab in zip(tracks, cascade_labels(tracks, on_entity, gains), strict=True) if lab}


def propensity(position: int, eta: float = 1.0) -> float:
    """Examination probability at a 1-based position under the position-based model."""
    return 1.0 / position**eta


@dataclass
class LabelStats:
    records: int = 0
    groups: int = 0
    rows: int = 0
    skipped_no_events: int = 0
    skipped_no_positive: int = 0
    skipped_feature_mismatch: int = 0
    skipped_malformed: int = 0
    label_counts: dict[int, int] = field(default_factory=dict)


def build_training_set(records: Iterable[Mapping[str, object]], feature_names: Sequence[str], *,
                       gains: Mapping[str, int] = DEFAULT_GAINS, eta: float | None = None,
                       max_weight: float = 20.0) -> tuple[RankData, LabelStats]:
    """Turns joined log records into LambdaMART training data.

    Records logged with other feature names (an older registry) are skipped and counted, never
    re-mapped: the logged vectors are the only copy of what serving saw. Groups without a positive
    label are dropped (lambdarank gets no gradient from them). `eta=None` = no debiasing (weights
    None); otherwise positives get min(k**eta, max_weight) as per-row weight.
    """
    names = list(feature_names)
    d = len(names)
    xs: list[np.ndarray] = []
    ys: list[np.ndarray] = []
    ws: list[np.ndarray] = []
    group: list[int] = []
    st = LabelStats()
    for rec in records:
        st.records += 1
        if list(rec.get("feature_names") or []) != names:
            st.skipped_feature_mismatch += 1
            continue
        served = list(rec.get("served") or [])
        feats = rec.get("features") or []
        if not served or len(feats) != len(served):  # type: ignore[arg-type]
            st.skipped_malformed += 1
            continue
        events = list(rec.get("events") or [])  # type: ignore[call-overload]
        if not events:
            st.skipped_no_events += 1
            continue
        labels = cascade_labels(served, events, gains)
        keep = [i for i, lab in enumerate(labels) if lab is not None]
        y = np.array([labels[i] for i in keep], dtype=np.int32)
        played_unserved = _entity_plays(rec, events, gains)
        if (y.size == 0 or y.max() <= 0) and not played_unserved:
            st.skipped_no_positive += 1
            continue
        try:
            x = np.array([[math.nan if v is None else v for v in feats[i]] for i in keep],  # type: ignore[index]
                         dtype=np.float32) if keep else np.zeros((0, d), dtype=np.float32)
        except (TypeError, ValueError):
            st.skipped_malformed += 1
            continue
        if x.shape != (len(keep), d):
            st.skipped_malformed += 1
            continue
        # Sampled unserved candidates (label 0): what serving ranked below the page. Without them
        # the model only ever compares ten items that already looked good.
        sampled = rec.get("sampled_features") or []
        if sampled:
            try:
                xs_neg = np.array([[math.nan if v is None else v for v in row] for row in sampled],  # type: ignore[union-attr]
                                  dtype=np.float32)
            except (TypeError, ValueError):
                xs_neg = np.zeros((0, d), dtype=np.float32)
            if xs_neg.ndim == 2 and xs_neg.shape[1] == d and xs_neg.shape[0]:
                x = np.vstack([x, xs_neg])
                ids = list(rec.get("sampled") or [])  # type: ignore[call-overload]
                y_neg = [played_unserved.get(t, 0) for t in ids] if len(ids) == xs_neg.shape[0] else [0] * len(xs_neg)
                y = np.concatenate([y, np.array(y_neg, dtype=np.int32)])
        if y.size == 0 or y.max() <= 0:
            st.skipped_no_positive += 1
            continue
        n_rows = x.shape[0]
        xs.append(x)
        ys.append(y)
        group.append(n_rows)
        if eta is not None:
            pos = np.concatenate([np.array(keep, dtype=np.float64) + 1.0, np.ones(n_rows - len(keep))])
            ws.append(np.where(y > 0, np.minimum(pos**eta, max_weight), 1.0).astype(np.float32))
        for lab in y.tolist():
            st.label_counts[lab] = st.label_counts.get(lab, 0) + 1
    st.groups = len(group)
    st.rows = int(sum(group))
    data = RankData(
        X=np.concatenate(xs) if xs else np.zeros((0, d), dtype=np.float32),
        y=np.concatenate(ys) if ys else np.zeros(0, dtype=np.int32),
        group=np.array(group, dtype=np.int64),
        weights=(np.concatenate(ws) if ws else np.zeros(0, dtype=np.float32)) if eta is not None else None,
    )
    return data, st
