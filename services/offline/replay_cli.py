"""`ltrr replay`: off-policy evaluation of logged traffic from the command line.

    ltrr replay --log var/logs --policy fixed:lexical+dense --policy uniform --policy bandit:latest \
        [--estimators ips,snips,dm,dr,replay] [--clip 50] [--report reports/run1] [--ranker latest]

`--log` is a decision log (the worker's joined-*.jsonl), a generic bandit log (.csv/.tsv/.jsonl,
docs/logged-data-format.md) or a directory: every joined-*.jsonl in it, else every generic log.
Policies: `fixed:<arm>+<arm>[@budget]`, `all` (the action with every retriever of the log),
`uniform`, `logging` (the logged probabilities: an on-policy sanity check) and saved bandit models
`bandit:vNNNN` / `bandit:latest` / `bandit:<file.vw>` from <data-dir>/models/bandit/.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from bandit.actions import Action
from bandit.policy import VWPolicy
from logged.records import ActionRecord
from replay.estimators import (
    BaseOffPolicyEstimator,
    DirectMethod,
    DoublyRobust,
    FullFeedback,
    InverseProbabilityWeighting,
    ReplayMethod,
    SelfNormalizedIPS,
)
from replay.evaluate import (
    FixedSubsetPolicy,
    LoggingPolicy,
    PolicyLike,
    PolicyResult,
    UniformPolicy,
    compare_rankers,
    evaluate_policies,
    policy_action_dist,
    ranker_metrics,
)
from replay.logs import BanditLog, LogFormatError, action_from_key, read_log

ESTIMATORS = ("ips", "snips", "dm", "dr", "replay", "full")


class ReplayError(Exception):
    """A user error in the replay arguments or inputs (exit code 2 through the CLI)."""


class VWReplayPolicy:
    """A saved VW bandit behind the replay `PolicyLike` protocol. `greedy` evaluates the
    exploitation policy (all mass on the most likely action) instead of the exploring one."""

    def __init__(self, policy: VWPolicy, greedy: bool = False):
        self.policy = policy
        self.greedy = greedy

    def probabilities(self, context: dict[str, float], actions: list[ActionRecord]) -> list[float]:
        probs = self.policy.probabilities(context, [Action(tuple(a.arms), a.budget) for a in actions])
        if not self.greedy:
            return probs
        best = int(np.argmax(probs))
        return [1.0 if i == best else 0.0 for i in range(len(probs))]


def _log_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if path.is_dir():
        joined = sorted(path.glob("joined-*.jsonl"))
        if joined:
            return joined
        generic = sorted(p for p in path.iterdir() if p.suffix in (".csv", ".tsv", ".jsonl", ".ndjson")
                         and not p.name.startswith("sim-steps-") and not p.name.startswith("decisions-"))
        if generic:
            return generic
        raise ReplayError(f"--log: no joined-*.jsonl or generic log files in directory {path}")
    raise ReplayError(f"--log: no such file or directory: {path}")


def concat_logs(logs: Sequence[BanditLog]) -> BanditLog:
    """One BanditLog from several (e.g. one joined log per day and process): the action
    vocabulary is the union in first-appearance order, arrays are re-indexed onto it."""
    if len(logs) == 1:
        return logs[0]
    vocab: dict[str, int] = {}
    for lg in logs:
        for k in lg.action_keys:
            vocab.setdefault(k, len(vocab))
    m = len(vocab)

    def widen(lg: BanditLog, arr: np.ndarray | None, fill: float) -> np.ndarray:
        out = np.full((len(lg), m), fill)
        if arr is not None:
            cols = [vocab[k] for k in lg.action_keys]
            out[:, cols] = arr
        return out

    probs = []
    for lg in logs:
        p = widen(lg, lg.logging_probs, 0.0)
        p[np.isnan(lg.logging_probs).any(axis=1)] = np.nan  # unknown distributions stay unknown
        probs.append(p)
    any_full = any(lg.full_rewards is not None for lg in logs)
    any_lat = any(lg.latency_ms is not None for lg in logs)
    any_ts = any(lg.ts is not None for lg in logs)
    remap = [np.array([vocab[k] for k in lg.action_keys], dtype=np.int64) for lg in logs]
    served = [s for lg in logs for s in (lg.served or [])] if all(lg.served is not None for lg in logs) else None
    return BanditLog(
        action_keys=list(vocab),
        record_actions=[r[idx] for lg, r in zip(logs, remap, strict=True) for idx in lg.record_actions],
        action=np.concatenate([r[lg.action] for lg, r in zip(logs, remap, strict=True)]),
        pscore=np.concatenate([lg.pscore for lg in logs]),
        reward=np.concatenate([lg.reward for lg in logs]),
        contexts=[c for lg in logs for c in lg.contexts],
        logging_probs=np.vstack(probs),
        full_rewards=np.vstack([widen(lg, lg.full_rewards, np.nan) for lg in logs]) if any_full else None,
        latency_ms=np.vstack([widen(lg, lg.latency_ms, np.nan) for lg in logs]) if any_lat else None,
        ids=[i for lg in logs for i in (lg.ids or [str(j) for j in range(len(lg))])],
        ts=np.concatenate([lg.ts if lg.ts is not None else np.full(len(lg), np.nan) for lg in logs])
        if any_ts else None,
        served=served,
        n_skipped=sum(lg.n_skipped for lg in logs),
        skipped_errors=[e for lg in logs for e in lg.skipped_errors][:20],
    )


def load_logs(path: str | Path, *, skip_bad: bool = False) -> BanditLog:
    files = _log_files(Path(path))
    logs = []
    for f in files:
        try:
            lg = read_log(f, skip_bad=skip_bad)
        except LogFormatError as exc:
            raise ReplayError(f"bad log line: {exc}") from None
        except (OSError, UnicodeDecodeError) as exc:
            raise ReplayError(f"cannot read {f}: {exc}") from None
        if len(lg):
            logs.append(lg)
    if not logs:
        raise ReplayError(f"--log: no decisions in {', '.join(str(f) for f in files)}")
    return concat_logs(logs)


def _arms_of(log: BanditLog) -> list[str]:
    return list(dict.fromkeys(arm for k in log.action_keys for arm in action_from_key(k).arms))


def make_policy(spec: str, log: BanditLog, data_dir: Path | None, greedy: bool = False
                ) -> PolicyLike | LoggingPolicy:
    spec = spec.strip()
    if spec == "uniform":
        return UniformPolicy()
    if spec == "logging":
        return LoggingPolicy()
    if spec == "all":
        return FixedSubsetPolicy(_arms_of(log))
    if spec.startswith("fixed:"):
        body = spec[len("fixed:"):]
        arms, _, budget = body.partition("@")
        names = [a for a in arms.split("+") if a]
        if not names:
            raise ReplayError(f"policy {spec!r}: name the retrievers, e.g. fixed:lexical+dense")
        known = set(_arms_of(log))
        unknown = [a for a in names if a not in known]
        if unknown:
            raise ReplayError(f"policy {spec!r}: retriever(s) {unknown} never appear in the log's actions "
                              f"(known: {sorted(known)})")
        if budget and not budget.isdigit():
            raise ReplayError(f"policy {spec!r}: budget must be an integer")
        return FixedSubsetPolicy(names, int(budget) if budget else None)
    if spec.startswith("bandit:"):
        return VWReplayPolicy(load_bandit(spec[len("bandit:"):], data_dir), greedy=greedy)
    raise ReplayError(f"unknown policy {spec!r}: use fixed:<arm>+<arm>[@budget], all, uniform, logging, "
                      "bandit:vNNNN, bandit:latest or bandit:<file.vw>")


def load_bandit(which: str, data_dir: Path | None) -> VWPolicy:
    from services.config import Settings
    from services.keys import Keys
    from services.serving.runtime import BanditStore

    overrides = {"data_dir": data_dir} if data_dir is not None else {}
    settings = Settings.from_env(**overrides)
    if which.endswith(".vw") or "/" in which:
        from bandit.policy import VWPolicy
        from services.serving.runtime import vw_config

        path = Path(which)
        if not path.is_file():
            raise ReplayError(f"bandit model file not found: {path}")
        try:
            return VWPolicy.from_bytes(path.read_bytes(), vw_config(settings), version=path.stem)
        except ValueError as exc:
            raise ReplayError(f"{path}: {exc}") from None
    from services.artifacts import ArtifactError

    store = BanditStore(settings, None, Keys())
    versions = store.store.versions()
    version = store.store.latest() if which == "latest" else which
    if version is None or version not in versions:
        raise ReplayError(f"bandit model {which!r} not found in {store.dir} "
                          f"(available: {', '.join(versions) or 'none'}; pass --data-dir)")
    try:
        return store.load(version)  # verified against its manifest
    except (OSError, ArtifactError) as exc:
        raise ReplayError(f"bandit model {version}: {exc}") from None


def make_estimators(names: str, clip: float | None) -> list[BaseOffPolicyEstimator]:
    wanted = [n.strip().lower() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in ESTIMATORS]
    if unknown or not wanted:
        raise ReplayError(f"unknown estimator(s) {unknown or names!r}; choose from {','.join(ESTIMATORS)}")
    make = {"ips": lambda: InverseProbabilityWeighting(clip=clip), "snips": lambda: SelfNormalizedIPS(clip=clip),
            "dm": DirectMethod, "dr": lambda: DoublyRobust(clip=clip), "replay": ReplayMethod,
            "full": FullFeedback}
    return [make[n]() for n in dict.fromkeys(wanted)]


def ranker_scorers(specs: Sequence[str], data_dir: Path | None) -> dict[str, Any]:
    """Ranker versions to compare on the logged candidate lists (`latest`, `serving`, `vNNNN` or
    `ranker-vNNNN`), each verified against its manifest before LightGBM reads it."""
    from ranker import model as ranker_model
    from ranker.features import FeatureRegistry
    from services.artifacts import ArtifactError, ArtifactStore
    from services.config import Settings

    settings = Settings.from_env(**({"data_dir": data_dir} if data_dir is not None else {}))
    store = ArtifactStore(settings.models_dir / "ranker", "ranker")
    registry = FeatureRegistry(settings.retrievers)
    out = {}
    for spec in specs:
        version = store.latest() if spec == "latest" else store.serving() if spec == "serving" \
            else spec.removeprefix("ranker-")
        if version is None or version not in store.versions():
            raise ReplayError(f"ranker {spec!r} not found under {store.root} "
                              f"(available: {', '.join(store.versions()) or 'none'})")
        try:
            store.verify(version)
            model = ranker_model.load(store.path(version), registry, version=version)
        except (ArtifactError, ranker_model.ModelLoadError) as exc:
            raise ReplayError(str(exc)) from None

        def scorer(x: np.ndarray, names: list[str], model: Any = model) -> np.ndarray:
            if names != model.feature_names:
                return np.full(x.shape[0], np.nan)  # logged with another registry: keep the served order
            return model.predict(x.astype(np.float32))

        out[f"ranker-{version}"] = scorer
    return out


def intents_from_steps(log: BanditLog, where: Sequence[Path]) -> list[str | None] | None:
    """Query intents of simulated traffic (sim-steps-*.jsonl written by `ltrr simulate`, in the
    given files or directories), joined by search id; None when there is no such file."""
    by_id: dict[str, str] = {}
    files = [f for w in where for f in (sorted(w.glob("sim-steps-*.jsonl")) if w.is_dir() else [w]) if f.is_file()]
    for f in files:
        with open(f, encoding="utf-8") as fh:
            for line in fh:
                try:
                    row = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if row.get("search_id") and row.get("intent"):
                    by_id[row["search_id"]] = row["intent"]
    if not by_id:
        return None
    found = [by_id.get(i) for i in log.ids]
    return found if any(found) else None


def _fmt(x: float) -> str:
    return "nan" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def print_results(results: Sequence[PolicyResult]) -> None:
    header = ("policy", "estimator", "estimate", "95% CI", "ESS", "max weight")
    rows = [(r.policy, r.estimator, _fmt(r.estimate), f"[{_fmt(r.lower)}, {_fmt(r.upper)}]", f"{r.ess:.1f}",
             f"{r.max_weight:.2f}") for r in results]
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    print(fmt.format(*header))
    print(fmt.format(*("-" * w for w in widths)))
    for row in rows:
        print(fmt.format(*row))


def run(log_path: str | Path, policies: Sequence[str], *, estimators: str = "ips,snips,dm,dr,replay",
        clip: float | None = None, report: str | Path | None = None, data_dir: Path | None = None,
        greedy: bool = False, rankers: Sequence[str] = (), skip_bad: bool = False, n_bootstrap: int = 1000,
        seed: int = 0, steps: Sequence[str | Path] = ()) -> tuple[list[PolicyResult], Path | None]:
    if clip is not None and not clip > 0:
        raise ReplayError("--clip must be positive")
    ests = make_estimators(estimators, clip)
    log = load_logs(log_path, skip_bad=skip_bad)
    named = {spec: make_policy(spec, log, data_dir, greedy) for spec in dict.fromkeys(policies)}
    try:
        results = evaluate_policies(log, named, ests, clip, n_bootstrap=n_bootstrap, random_state=seed)
    except ValueError as exc:
        raise ReplayError(str(exc)) from None
    print_results(results)
    if log.n_skipped:
        print(f"\n{log.n_skipped} bad lines skipped; first: {log.skipped_errors[0]}")
    if report is None:
        return results, None
    ranker_rows = None
    if log.served:
        scorers = ranker_scorers(rankers, data_dir) if rankers else {}
        ranker_rows = compare_rankers(log.served, scorers) if scorers else [ranker_metrics(log.served)]
    dists = {name: policy_action_dist(log, pol) for name, pol in named.items() if not isinstance(pol, LoggingPolicy)}
    plot_log = log
    src = Path(log_path)
    intents = intents_from_steps(log, [src if src.is_dir() else src.parent, *(Path(x) for x in steps)])
    if intents is not None:
        # The intent goes into a copy used for the share plot only: policies never see it.
        plot_log = replace(log, contexts=[{**c, "intent": it or "unknown"} for c, it in
                                          zip(log.contexts, intents, strict=True)])
    order = np.argsort(log.ts, kind="stable") if log.ts is not None and not np.isnan(log.ts).any() \
        else np.arange(len(log))
    path = _write(report, results, plot_log, dists, {"logged policy": log.reward[order]}, ranker_rows,
                  [f"Log: {log_path}. Policies: {', '.join(named)}. Estimators: {estimators}"
                   + (f", weights clipped at {clip}" if clip else "")
                   + f". Written {time.strftime('%Y-%m-%d %H:%M')}."])
    print(f"\nreport: {path}")
    return results, path


def _write(report: str | Path, results: Sequence[PolicyResult], log: BanditLog, dists: dict[str, np.ndarray],
           online: dict[str, np.ndarray], ranker_rows: Any, notes: list[str]) -> Path:
    from replay.report import write_report

    return write_report(report, results, log=log, policy_dists=dists, online_rewards=online,
                        ranker_rows=ranker_rows, notes=notes)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log", required=True, help="joined log / generic bandit log file, or a directory of them")
    p.add_argument("--policy", action="append", required=True,
                   help="fixed:<arm>+<arm>[@budget] | all | uniform | logging | bandit:vNNNN | bandit:latest | "
                        "bandit:<file.vw> (repeatable)")
    p.add_argument("--estimators", default="ips,snips,dm,dr,replay", help=f"comma list of {','.join(ESTIMATORS)}")
    p.add_argument("--clip", type=float, help="cap importance weights at this value (IPS, SNIPS, DR)")
    p.add_argument("--report", help="directory for report.md, index.html and PNG plots")
    p.add_argument("--data-dir", help="where saved bandit/ranker models live (default: LTRR_DATA_DIR or ./var)")
    p.add_argument("--greedy", action="store_true", help="evaluate bandit models greedily (no exploration)")
    p.add_argument("--ranker", action="append", default=[],
                   help="ranker version (vNNNN, latest or serving) to compare on the logged lists (repeatable)")
    p.add_argument("--steps", action="append", default=[],
                   help="sim-steps-*.jsonl file or directory from `ltrr simulate` (query intents for the share plot; "
                        "default: looked for next to --log)")
    p.add_argument("--skip-bad", action="store_true", help="skip (and count) bad log lines instead of stopping")
    p.add_argument("--bootstrap", type=int, default=1000, help="bootstrap resamples for the intervals")
    p.add_argument("--seed", type=int, default=0)


def main(args: argparse.Namespace) -> None:
    from services.cli_errors import CliError

    if args.bootstrap < 10:
        raise CliError("--bootstrap must be at least 10")
    try:
        run(args.log, args.policy, estimators=args.estimators, clip=args.clip, report=args.report,
            data_dir=Path(args.data_dir) if args.data_dir else None, greedy=args.greedy, rankers=args.ranker,
            skip_bad=args.skip_bad, n_bootstrap=args.bootstrap, seed=args.seed, steps=args.steps)
    except ReplayError as exc:
        raise CliError(str(exc)) from None
