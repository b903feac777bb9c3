"""Logged bandit data in memory (`BanditLog`) and the readers/writers that produce it.

Two on-disk formats (documented with examples in docs/logged-data-format.md):

* the decision log: one `logged.records.JoinedRecord` per JSONL line, as the feedback worker
  appends it. It carries the full action set with the logging probabilities, every retriever's
  candidates, the served list with its ranker features and the user's events.
* a generic bandit log, CSV or JSONL, so logs from elsewhere (or synthetic ones) can be replayed:
  `context`, `action`, `propensity`, `reward` and optionally `actions`, `probabilities`,
  `rewards` (per-action rewards when known), `latency_ms`, `id`.

Both become one `BanditLog`: dense `(n, n_actions)` arrays over the union of all action keys in
the file, so estimators can stay vectorised. Actions a record could not take have availability
False and logging probability 0.

Why one module of this size: both readers must produce exactly the same `BanditLog` layout, and
the writer is their inverse; keeping them beside the dataclass keeps the format in one place.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import ValidationError

from logged import rewards
from logged.records import ActionRecord, JoinedRecord
from logged.rewards import RewardConfig

DEFAULT_REWARD = RewardConfig()

ContextValue = float | str
Context = dict[str, ContextValue]

# Event types that make a served item relevant; a skip is an explicit negative and counts as no action.

_PROB_TOL = 1e-6
_KEY_RE = re.compile(r"^(?P<arms>[^@]+)@(?P<budget>\d+)$")


class LogFormatError(ValueError):
    """A log line that cannot be read; the message names the file, line number and field."""

    def __init__(self, path: str | Path, line: int, field: str, message: str) -> None:
        self.path = str(path)
        self.line = line
        self.field = field
        super().__init__(f"{path}:{line}: field '{field}': {message}")


def action_from_key(key: str) -> ActionRecord:
    """Turn an action key into the `ActionRecord` a policy sees.

    Our keys look like "lexical+dense@100". Keys from other systems without a budget ("arm_3")
    become a one- or multi-arm action with budget 1; the original key is kept in `BanditLog`.
    """
    m = _KEY_RE.match(key)
    if m and int(m["budget"]) >= 1:
        return ActionRecord(arms=tuple(m["arms"].split("+")), budget=int(m["budget"]))
    return ActionRecord(arms=tuple(key.split("+")), budget=1)


@dataclass
class ServedList:
    """One served result list with its ranker features and per-item relevance labels."""

    search_id: str
    served: list[str]
    labels: np.ndarray  # (len(served),) 1.0 if the user acted positively on the item, else 0.0
    feature_names: list[str]
    features: np.ndarray  # (len(served), len(feature_names)), NaN where missing


@dataclass
class BanditLog:
    """Logged bandit feedback, one row per decision.

    `action_keys` is the global action vocabulary; every `(n, n_actions)` array is indexed by it.
    `record_actions[i]` holds record i's global action indices in the order its policy saw them,
    which is the order `probabilities(...)` answers in.
    """

    action_keys: list[str]
    record_actions: list[np.ndarray]  # per record: int array of global indices, record order
    action: np.ndarray  # (n,) int, global index of the chosen action
    pscore: np.ndarray  # (n,) logging propensity of the chosen action
    reward: np.ndarray  # (n,) observed reward
    contexts: list[Context]
    logging_probs: np.ndarray  # (n, n_actions), 0 where unavailable, NaN rows where unknown
    full_rewards: np.ndarray | None = None  # (n, n_actions) reward of every action when known, NaN otherwise
    latency_ms: np.ndarray | None = None  # (n, n_actions) summed retriever time per action when known
    ids: list[str] = field(default_factory=list)
    ts: np.ndarray | None = None
    served: list[ServedList] | None = None  # only from the decision log
    n_skipped: int = 0
    skipped_errors: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return int(self.action.shape[0])

    @property
    def n_actions(self) -> int:
        return len(self.action_keys)

    @property
    def available(self) -> np.ndarray:
        mask = np.zeros((len(self), self.n_actions), dtype=bool)
        for i, idx in enumerate(self.record_actions):
            mask[i, idx] = True
        return mask

    def actions_of(self, i: int) -> list[ActionRecord]:
        return [action_from_key(self.action_keys[j]) for j in self.record_actions[i]]

    @classmethod
    def from_rows(cls, rows: Sequence[LogRow], *, n_skipped: int = 0, skipped_errors: list[str] | None = None,
                  served: list[ServedList] | None = None) -> BanditLog:
        """Build the arrays from parsed rows. The action vocabulary is canonical (numeric order when
        every key is an integer, else first appearance) so that write -> read reproduces it."""
        keys: dict[str, None] = {}
        for r in rows:
            for k in r.actions:
                keys.setdefault(k, None)
        vocab = list(keys)
        if vocab and all(k.lstrip("-").isdigit() for k in vocab):
            vocab.sort(key=int)
        index = {k: j for j, k in enumerate(vocab)}
        n, m = len(rows), len(vocab)
        probs = np.zeros((n, m))
        full = np.full((n, m), np.nan)
        lat = np.full((n, m), np.nan)
        record_actions = []
        for i, r in enumerate(rows):
            idx = np.array([index[k] for k in r.actions], dtype=np.int64)
            record_actions.append(idx)
            if r.probabilities is None:
                probs[i] = np.nan
            else:
                probs[i, idx] = r.probabilities
            for k, v in (r.rewards or {}).items():
                full[i, index[k]] = v
            for k, v in (r.latency_ms or {}).items():
                lat[i, index[k]] = v
        has_full = any(r.rewards for r in rows)
        has_lat = any(r.latency_ms for r in rows)
        has_ts = any(r.ts is not None for r in rows)
        return cls(
            action_keys=vocab,
            record_actions=record_actions,
            action=np.array([index[r.action] for r in rows], dtype=np.int64),
            pscore=np.array([r.propensity for r in rows], dtype=float),
            reward=np.array([r.reward for r in rows], dtype=float),
            contexts=[r.context for r in rows],
            logging_probs=probs,
            full_rewards=full if has_full else None,
            latency_ms=lat if has_lat else None,
            ids=[r.id for r in rows],
            ts=np.array([np.nan if r.ts is None else r.ts for r in rows]) if has_ts else None,
            served=served,
            n_skipped=n_skipped,
            skipped_errors=skipped_errors or [],
        )


@dataclass
class LogRow:
    """One parsed record, before the vocabulary is known."""

    id: str
    context: Context
    actions: list[str]
    action: str
    propensity: float
    reward: float
    probabilities: list[float] | None = None
    rewards: dict[str, float] | None = None
    latency_ms: dict[str, float] | None = None
    ts: float | None = None


# ---------------------------------------------------------------------------------------------
# Decision log (JoinedRecord JSONL)
# ---------------------------------------------------------------------------------------------

RewardFn = Callable[[JoinedRecord, ActionRecord], float]


def positive_items(rec: JoinedRecord, cfg: RewardConfig = DEFAULT_REWARD) -> set[str]:
    return rewards.positive_items(rec.events, cfg)


def union_hit_reward(rec: JoinedRecord, action: ActionRecord) -> float:
    """The reward `action` would have earned on this search: the one reward definition
    (logged.rewards.action_reward) with the default RewardConfig, i.e. on the scale the worker
    logged `rec.reward` on, so IPS/DR (logged reward) and the full-information row agree."""
    return rewards.action_reward(rec, action, rec.events, DEFAULT_REWARD)


def _ran(rec: JoinedRecord) -> set[str]:
    return set(rec.candidates) - set(rec.failed)


def _decision_row(rec: JoinedRecord, reward_fn: RewardFn) -> LogRow:
    keys = [a.key for a in rec.actions]
    ran = _ran(rec)
    rewards: dict[str, float] = {}
    latency: dict[str, float] = {}
    for a, k in zip(rec.actions, keys, strict=True):
        # The counterfactual reward of an action is known whenever all its retrievers ran: always
        # for shadow records, and for sub-subsets of the chosen action otherwise.
        if rec.shadow or set(a.arms) <= ran:
            rewards[k] = reward_fn(rec, a)
        if all(arm in rec.retriever_ms for arm in a.arms):
            # Summed, not max: the cost the bandit trades off is compute, and retrievers share 2 cores.
            latency[k] = float(sum(rec.retriever_ms[arm] for arm in a.arms))
    return LogRow(id=rec.search_id, context=dict(rec.context), actions=keys, action=keys[rec.chosen],
                  propensity=rec.propensity, reward=rec.reward, probabilities=list(rec.probabilities),
                  rewards=rewards, latency_ms=latency, ts=rec.ts)


def served_list(rec: JoinedRecord) -> ServedList:
    wanted = positive_items(rec)
    labels = np.array([1.0 if t in wanted else 0.0 for t in rec.served])
    d = len(rec.feature_names)
    feats = np.full((len(rec.served), d), np.nan)
    for i, row in enumerate(rec.features[: len(rec.served)]):
        feats[i, : len(row)] = [np.nan if v is None else v for v in row]
    return ServedList(search_id=rec.search_id, served=list(rec.served), labels=labels,
                      feature_names=list(rec.feature_names), features=feats)


def _check_decision(rec: JoinedRecord) -> tuple[str, str] | None:
    """Invariants pydantic does not check; returns (field, message) on violation."""
    if not rec.actions:
        return "actions", "empty action set"
    if len(rec.probabilities) != len(rec.actions):
        return "probabilities", f"{len(rec.probabilities)} probabilities for {len(rec.actions)} actions"
    if any(p < 0 for p in rec.probabilities) or abs(sum(rec.probabilities) - 1.0) > 1e-4:
        return "probabilities", "must be non-negative and sum to 1"
    if not 0 <= rec.chosen < len(rec.actions):
        return "chosen", f"index {rec.chosen} outside 0..{len(rec.actions) - 1}"
    if not 0 < rec.propensity <= 1 or abs(rec.propensity - rec.probabilities[rec.chosen]) > 1e-4:
        return "propensity", f"{rec.propensity} must be in (0, 1] and equal probabilities[chosen]"
    if len({a.key for a in rec.actions}) != len(rec.actions):
        return "actions", "duplicate actions"
    return None


def read_decision_log(path: str | Path, *, skip_bad: bool = False, reward_fn: RewardFn = union_hit_reward,
                      with_served: bool = True) -> BanditLog:
    """Read a JoinedRecord JSONL log.

    `reward` is the logged reward (what the bandit learned from, cost term included if the worker
    applied one); `full_rewards` holds `reward_fn(record, action)` for every action whose retrievers
    all ran. Pass a `reward_fn` that applies the same cost term as the worker when comparing both.
    """
    rows: list[LogRow] = []
    served: list[ServedList] = []
    skipped: list[str] = []
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                try:
                    rec = JoinedRecord.model_validate_json(line)
                except ValidationError as e:
                    err = e.errors()[0]
                    where = ".".join(str(p) for p in err["loc"]) or "<record>"
                    raise LogFormatError(path, lineno, where, err["msg"]) from None
                problem = _check_decision(rec)
                if problem:
                    raise LogFormatError(path, lineno, *problem)
            except LogFormatError as e:
                if not skip_bad:
                    raise
                skipped.append(str(e))
                continue
            rows.append(_decision_row(rec, reward_fn))
            if with_served:
                served.append(served_list(rec))
    return BanditLog.from_rows(rows, n_skipped=len(skipped), skipped_errors=skipped[:20],
                               served=served if with_served else None)


# ---------------------------------------------------------------------------------------------
# Generic bandit log (CSV or JSONL)
# ---------------------------------------------------------------------------------------------

_GENERIC_FIELDS = ("id", "context", "actions", "action", "propensity", "reward", "probabilities", "rewards",
                   "latency_ms", "ts")


def _fmt(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix in (".csv", ".tsv"):
        return "csv"
    if suffix in (".jsonl", ".ndjson", ".json"):
        return "jsonl"
    raise ValueError(f"{path}: cannot tell the format from the suffix (use .csv or .jsonl)")


def _maybe_json(value: Any) -> Any:
    """CSV cells hold JSON for structured fields; JSONL already has them parsed."""
    if isinstance(value, str):
        s = value.strip()
        if s[:1] in "[{":
            return json.loads(s)
    return value


def _number(value: Any, name: str, path: str | Path, lineno: int) -> float:
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise LogFormatError(path, lineno, name, f"not a number: {value!r}") from None
    if not math.isfinite(x):
        raise LogFormatError(path, lineno, name, f"not finite: {value!r}")
    return x


def _context(raw: dict[str, Any], path: str | Path, lineno: int) -> Context:
    if raw.get("context") not in (None, ""):
        try:
            ctx = _maybe_json(raw["context"])
        except json.JSONDecodeError as e:
            raise LogFormatError(path, lineno, "context", f"invalid JSON: {e.msg}") from None
        if not isinstance(ctx, dict):
            raise LogFormatError(path, lineno, "context", "must be a JSON object")
        items = ctx.items()
        from_cells = False
    else:
        items = ((k[4:], v) for k, v in raw.items() if k.startswith("ctx_") and v not in (None, ""))
        from_cells = True
    out: Context = {}
    for k, v in items:
        if isinstance(v, bool | int | float):
            out[k] = _number(v, f"context.{k}", path, lineno)
        elif isinstance(v, str):
            # A `ctx_*` CSV cell is always text: numbers become floats, anything else stays a category.
            # Inside a JSON object the type is explicit, so a string stays a string.
            try:
                out[k] = float(v) if from_cells else v
            except ValueError:
                out[k] = v
        else:
            raise LogFormatError(path, lineno, f"context.{k}", f"must be a number or string, got {type(v).__name__}")
    return out


def _key(value: Any, actions: list[str] | None, path: str | Path, lineno: int) -> str:
    """An action given as a key string, or as an integer index into the row's action set."""
    if isinstance(value, bool) or value is None or value == "":
        raise LogFormatError(path, lineno, "action", "missing")
    if actions is not None:
        if isinstance(value, int) or (isinstance(value, str) and value.isdigit() and value not in actions):
            j = int(value)
            if not 0 <= j < len(actions):
                raise LogFormatError(path, lineno, "action", f"index {j} outside the action set of {len(actions)}")
            return actions[j]
        if str(value) not in actions:
            raise LogFormatError(path, lineno, "action", f"{value!r} is not in the row's action set")
    if isinstance(value, float):
        if not value.is_integer():
            raise LogFormatError(path, lineno, "action", f"index {value} is not an integer")
        value = int(value)
    return str(value)


def _per_action(raw: Any, name: str, actions: list[str] | None, path: str | Path, lineno: int) -> dict[str, float]:
    if raw in (None, ""):
        return {}
    try:
        val = _maybe_json(raw)
    except json.JSONDecodeError as e:
        raise LogFormatError(path, lineno, name, f"invalid JSON: {e.msg}") from None
    if isinstance(val, list):
        if actions is None or len(val) != len(actions):
            raise LogFormatError(path, lineno, name, "a list needs an `actions` column of the same length")
        val = dict(zip(actions, val, strict=True))
    if not isinstance(val, dict):
        raise LogFormatError(path, lineno, name, "must be a JSON object {action: value} or a list")
    out = {}
    for k, v in val.items():
        if v is None:
            continue
        if actions is not None and str(k) not in actions:
            raise LogFormatError(path, lineno, name, f"action {k!r} is not in the row's action set")
        out[str(k)] = _number(v, f"{name}.{k}", path, lineno)
    return out


def _generic_row(raw: dict[str, Any], path: str | Path, lineno: int) -> tuple[LogRow, bool]:
    """Parse one row; the flag says whether the row named its own action set."""
    actions: list[str] | None = None
    if raw.get("actions") not in (None, ""):
        try:
            val = _maybe_json(raw["actions"])
        except json.JSONDecodeError as e:
            raise LogFormatError(path, lineno, "actions", f"invalid JSON: {e.msg}") from None
        if not isinstance(val, list) or not val:
            raise LogFormatError(path, lineno, "actions", "must be a non-empty JSON list of action keys")
        actions = [str(a) for a in val]
        if len(set(actions)) != len(actions):
            raise LogFormatError(path, lineno, "actions", "duplicate actions")
    action = _key(raw.get("action"), actions, path, lineno)
    if "propensity" not in raw or raw["propensity"] in (None, ""):
        raise LogFormatError(path, lineno, "propensity", "missing")
    propensity = _number(raw["propensity"], "propensity", path, lineno)
    if not 0 < propensity <= 1:
        raise LogFormatError(path, lineno, "propensity", f"must be in (0, 1], got {propensity}")
    if "reward" not in raw or raw["reward"] in (None, ""):
        raise LogFormatError(path, lineno, "reward", "missing")
    reward = _number(raw["reward"], "reward", path, lineno)
    probabilities = None
    if raw.get("probabilities") not in (None, ""):
        if actions is None:
            raise LogFormatError(path, lineno, "probabilities", "needs an `actions` column to align with")
        try:
            val = _maybe_json(raw["probabilities"])
        except json.JSONDecodeError as e:
            raise LogFormatError(path, lineno, "probabilities", f"invalid JSON: {e.msg}") from None
        if not isinstance(val, list) or len(val) != len(actions):
            raise LogFormatError(path, lineno, "probabilities", "must be a list as long as `actions`")
        probabilities = [_number(p, "probabilities", path, lineno) for p in val]
        if min(probabilities) < 0 or abs(sum(probabilities) - 1) > 1e-4:
            raise LogFormatError(path, lineno, "probabilities", "must be non-negative and sum to 1")
        if abs(probabilities[actions.index(action)] - propensity) > 1e-4:
            raise LogFormatError(path, lineno, "propensity", "differs from probabilities[action]")
    ts = raw.get("ts")
    row_id = raw.get("id")
    return LogRow(
        id=str(lineno if row_id in (None, "") else row_id),
        context=_context(raw, path, lineno),
        actions=actions if actions is not None else [action],
        action=action,
        propensity=propensity,
        reward=reward,
        probabilities=probabilities,
        rewards=_per_action(raw.get("rewards"), "rewards", actions, path, lineno) or None,
        latency_ms=_per_action(raw.get("latency_ms"), "latency_ms", actions, path, lineno) or None,
        ts=None if ts in (None, "") else _number(ts, "ts", path, lineno),
    ), actions is not None


def _raw_rows(path: str | Path) -> Iterator[tuple[int, dict[str, Any] | LogFormatError]]:
    if _fmt(path) == "csv":
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f, delimiter="\t" if str(path).lower().endswith(".tsv") else ",")
            for raw in reader:
                if None in raw:  # more cells than header columns
                    yield reader.line_num, LogFormatError(path, reader.line_num, "<row>", "more cells than columns")
                    continue
                yield reader.line_num, raw
        return
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                yield lineno, LogFormatError(path, lineno, "<line>", f"invalid JSON: {e.msg}")
                continue
            if not isinstance(obj, dict):
                yield lineno, LogFormatError(path, lineno, "<line>", "must be a JSON object")
                continue
            yield lineno, obj


def read_generic_log(path: str | Path, *, skip_bad: bool = False) -> BanditLog:
    """Read a generic bandit log (.csv/.tsv or .jsonl). Without an `actions` column every row's
    action set is the set of all actions seen in the file."""
    rows: list[LogRow] = []
    without_set: list[LogRow] = []
    skipped: list[str] = []
    for lineno, raw in _raw_rows(path):
        try:
            if isinstance(raw, LogFormatError):
                raise raw
            row, has_set = _generic_row(raw, path, lineno)
        except LogFormatError as e:
            if not skip_bad:
                raise
            skipped.append(str(e))
            continue
        rows.append(row)
        if not has_set:
            without_set.append(row)
    if without_set:
        # Rows without an action set could take every action seen anywhere in the file, including
        # actions only named in per-action reward/latency maps.
        seen = list(dict.fromkeys(
            [k for r in rows for k in r.actions]
            + [k for r in rows for m in (r.rewards, r.latency_ms) if m for k in m]))
        for r in without_set:
            r.actions = seen
    return BanditLog.from_rows(rows, n_skipped=len(skipped), skipped_errors=skipped[:20])


def read_log(path: str | Path, *, skip_bad: bool = False) -> BanditLog:
    """Read either format: a JSONL file whose first record has `search_id` and `actions` objects is
    a decision log, anything else is a generic log."""
    if _fmt(path) == "jsonl":
        with open(path, encoding="utf-8") as f:
            first = next((line for line in f if line.strip()), "")
        try:
            obj = json.loads(first) if first else {}
        except json.JSONDecodeError:
            obj = {}
        if isinstance(obj, dict) and "search_id" in obj and "candidates" in obj:
            return read_decision_log(path, skip_bad=skip_bad)
    return read_generic_log(path, skip_bad=skip_bad)


def _row_dict(log: BanditLog, i: int, *, write_actions: bool) -> dict[str, Any]:
    idx = log.record_actions[i]
    keys = [log.action_keys[j] for j in idx]
    row: dict[str, Any] = {
        "id": log.ids[i] if log.ids else str(i),
        "context": log.contexts[i],
        "actions": keys if write_actions else None,
        "action": log.action_keys[log.action[i]],
        "propensity": float(log.pscore[i]),
        "reward": float(log.reward[i]),
        "probabilities": None,
        "rewards": None,
        "latency_ms": None,
        "ts": None,
    }
    if write_actions and not np.isnan(log.logging_probs[i]).any():
        row["probabilities"] = [float(log.logging_probs[i, j]) for j in idx]
    for name, arr in (("rewards", log.full_rewards), ("latency_ms", log.latency_ms)):
        if arr is not None:
            known = {log.action_keys[j]: float(arr[i, j]) for j in idx if not np.isnan(arr[i, j])}
            row[name] = known or None
    if log.ts is not None and not np.isnan(log.ts[i]):
        row["ts"] = float(log.ts[i])
    return row


def write_generic_log(log: BanditLog, path: str | Path) -> Path:
    """Write `log` in the generic format (.csv or .jsonl by suffix); `read_generic_log` gives the
    same arrays back. Floats are written with repr precision so they survive the trip exactly."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The `actions` column can be left out only when every record could take every action and
    # no full probability vector needs aligning, which is exactly the reader's default.
    write_actions = not (all(len(a) == log.n_actions for a in log.record_actions)
                         and np.isnan(log.logging_probs).all()
                         and all(np.array_equal(a, np.arange(log.n_actions)) for a in log.record_actions))
    rows = (_row_dict(log, i, write_actions=write_actions) for i in range(len(log)))
    if _fmt(path) == "jsonl":
        with open(path, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps({k: v for k, v in row.items() if v is not None}) + "\n")
        return path
    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, fieldnames=list(_GENERIC_FIELDS))
        w.writeheader()
        for row in rows:
            w.writerow({k: (json.dumps(v) if isinstance(v, dict | list) else ("" if v is None else repr(v)
                                                                              if isinstance(v, float) else v))
                        for k, v in row.items()})
    return path


def iter_contexts_numeric(contexts: Iterable[Context]) -> list[dict[str, float]]:
    """Contexts as the `dict[str, float]` policies expect: a string value `v` of field `k` becomes
    the one-hot feature `k=v` (1.0), the same convention the intent features use."""
    out = []
    for c in contexts:
        out.append({(k if isinstance(v, float) else f"{k}={v}"): (v if isinstance(v, float) else 1.0)
                    for k, v in c.items()})
    return out
