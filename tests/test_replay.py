"""Offline replay evaluation against synthetic logs whose true policy values are known exactly."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from logged.records import ActionRecord, FeedbackEvent, JoinedRecord
from replay.estimators import (
    DirectMethod,
    DoublyRobust,
    FullFeedback,
    InverseProbabilityWeighting,
    ReplayMethod,
    SelfNormalizedIPS,
    weight_diagnostics,
)
from replay.evaluate import (
    FixedSubsetPolicy,
    LoggingPolicy,
    UniformPolicy,
    compare_rankers,
    evaluate_policies,
    list_metrics,
    policy_action_dist,
    ranker_metrics,
)
from replay.logs import (
    BanditLog,
    LogFormatError,
    LogRow,
    read_decision_log,
    read_generic_log,
    read_log,
    write_generic_log,
)
from replay.report import write_report
from replay.reward_models import BucketMeanRewardModel, RegressionRewardModel, cross_fit_predict

INTENTS = ["entity", "topic", "repeat"]
KEYS = ["lexical@50", "dense@50", "lexical+dense@50", "q2e@50", "lexical+dense+xr@50"]
# True Bernoulli means mu[intent, action].
MU = np.array([[0.55, 0.15, 0.60, 0.30, 0.62],
               [0.10, 0.50, 0.45, 0.20, 0.48],
               [0.30, 0.20, 0.35, 0.80, 0.40]])
N = 20_000


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


class TablePolicy:
    """A policy given by a per-intent probability table (rows: intents, columns: KEYS)."""

    def __init__(self, table: np.ndarray) -> None:
        self.table = table

    def probabilities(self, context: dict[str, float], actions: list[ActionRecord]) -> list[float]:
        t = next(i for i, name in enumerate(INTENTS) if context.get(f"intent={name}") == 1.0)
        row = {k: p for k, p in zip(KEYS, self.table[t], strict=True)}
        return [row[a.key] for a in actions]


BEST = TablePolicy(np.eye(len(KEYS))[MU.argmax(axis=1)])
UNIFORM_TABLE = TablePolicy(np.full(MU.shape, 1 / len(KEYS)))
OTHER_SOFTMAX = TablePolicy(softmax(-3.0 * MU))  # prefers the worse actions: far from the logger


def true_value(policy: TablePolicy) -> float:
    # Intents are drawn uniformly, so the value is the plain mean over intents.
    return float((policy.table * MU).sum(axis=1).mean())


def synthetic_log(n: int = N, logging: str = "softmax", seed: int = 0) -> BanditLog:
    """Contexts uniform over 3 intents; the logger is a softmax of per-round noisy means (temperature
    0.2) or uniform. Every row carries all per-action rewards too, as a shadow record would."""
    rng = np.random.default_rng(seed)
    t = rng.integers(0, len(INTENTS), n)
    if logging == "softmax":
        probs = softmax((MU[t] + rng.normal(0, 0.1, (n, len(KEYS)))) / 0.2)
    else:
        probs = np.full((n, len(KEYS)), 1 / len(KEYS))
    a = (rng.random(n)[:, None] > probs.cumsum(axis=1)).sum(axis=1).clip(max=len(KEYS) - 1)
    all_rewards = (rng.random((n, len(KEYS))) < MU[t]).astype(float)
    rows = [LogRow(id=str(i), context={"intent": INTENTS[t[i]], "len": float(i % 7)}, actions=KEYS,
                   action=KEYS[a[i]], propensity=float(probs[i, a[i]]), reward=float(all_rewards[i, a[i]]),
                   probabilities=probs[i].tolist(), rewards=dict(zip(KEYS, all_rewards[i].tolist(), strict=True)),
                   latency_ms={k: float(3 * (j + 1)) for j, k in enumerate(KEYS)}, ts=1.7e9 + i)
            for i in range(n)]
    return BanditLog.from_rows(rows)


@pytest.fixture(scope="module")
def soft_log() -> BanditLog:
    return synthetic_log(logging="softmax", seed=1)


@pytest.fixture(scope="module")
def uniform_log() -> BanditLog:
    return synthetic_log(logging="uniform", seed=2)


_DISTS: dict[tuple[int, int], np.ndarray] = {}


def _args(log: BanditLog, policy: TablePolicy | LoggingPolicy) -> dict[str, np.ndarray]:
    # The module-scoped logs are reused by many tests: compute each target distribution once.
    key = (id(log), id(policy))
    if key not in _DISTS:
        _DISTS[key] = policy_action_dist(log, policy)
    return {"reward": log.reward, "pscore": log.pscore, "action_dist": _DISTS[key], "action": log.action}


@pytest.fixture(scope="module")
def soft_q(soft_log: BanditLog) -> np.ndarray:
    """Cross-fitted logistic reward model (intent one-hots and a noise feature, per action)."""
    return cross_fit_predict(RegressionRewardModel, soft_log, n_folds=2, random_state=0)


@pytest.mark.parametrize("policy", [BEST, UNIFORM_TABLE, OTHER_SOFTMAX], ids=["best", "uniform", "other_softmax"])
def test_ips_snips_dr_intervals_cover_truth(soft_log: BanditLog, soft_q: np.ndarray, policy: TablePolicy) -> None:
    truth = true_value(policy)
    for est in (InverseProbabilityWeighting(), SelfNormalizedIPS(), DoublyRobust()):
        ci = est.estimate_interval(**_args(soft_log, policy), estimated_rewards=soft_q, n_bootstrap=1000,
                                   random_state=0)
        assert ci["lower"] <= truth <= ci["upper"], (est.estimator_name, truth, ci)
        assert ci["lower"] < ci["mean"] < ci["upper"]
        assert ci["upper"] - ci["lower"] < 0.1  # informative, not just wide


def test_ips_interval_coverage_rate_is_near_nominal() -> None:
    """One seeded log could cover by luck; across 40 independent logs the 95% interval should cover
    the truth about 95% of the time (binomial: >= 33/40 fails a calibrated interval < 1% of runs)."""
    truth = true_value(BEST)
    hits = 0
    for seed in range(40):
        log = synthetic_log(n=1500, logging="softmax", seed=100 + seed)
        ci = InverseProbabilityWeighting().estimate_interval(**_args(log, BEST), n_bootstrap=300, random_state=seed)
        hits += ci["lower"] <= truth <= ci["upper"]
    assert hits >= 33, hits


def test_snips_equals_ips_when_weights_sum_to_n(uniform_log: BanditLog, soft_log: BanditLog) -> None:
    # Uniform logger and uniform target: every weight is exactly 1, so sum w = n and SNIPS == IPS.
    args = _args(uniform_log, UNIFORM_TABLE)
    assert np.allclose(args["action_dist"][np.arange(len(uniform_log)), uniform_log.action], uniform_log.pscore)
    ips = InverseProbabilityWeighting().estimate_policy_value(**args)
    assert SelfNormalizedIPS().estimate_policy_value(**args) == pytest.approx(ips, abs=1e-12)
    # Target = logger on any log: w = 1 again, both equal the on-policy mean reward.
    args = _args(soft_log, LoggingPolicy())
    assert InverseProbabilityWeighting().estimate_policy_value(**args) == pytest.approx(soft_log.reward.mean())
    assert SelfNormalizedIPS().estimate_policy_value(**args) == pytest.approx(soft_log.reward.mean())


def test_snips_close_to_ips_on_uniform_logs_for_other_targets(uniform_log: BanditLog) -> None:
    # For a different target, sum w is n only in expectation: check E[w] = 1 within 4 standard
    # errors and that the two estimates agree to within their sampling noise.
    args = _args(uniform_log, BEST)
    w = args["action_dist"][np.arange(len(uniform_log)), uniform_log.action] / uniform_log.pscore
    assert abs(w.mean() - 1.0) < 4 * w.std() / np.sqrt(w.size)
    ips = InverseProbabilityWeighting().estimate_interval(**args, n_bootstrap=500, random_state=0)
    snips = SelfNormalizedIPS().estimate_policy_value(**args)
    assert ips["lower"] <= snips <= ips["upper"]


def test_replay_matches_on_policy_value_of_logging_policy(uniform_log: BanditLog) -> None:
    # Li et al.'s setting: uniformly random logging. Replaying the logger accepts every round with
    # the same probability, so the estimate is exactly the observed mean reward.
    args = _args(uniform_log, LoggingPolicy())
    assert ReplayMethod().estimate_policy_value(**args) == pytest.approx(uniform_log.reward.mean(), abs=1e-12)
    # A deterministic target keeps ~1/5 of the rounds and still covers the truth.
    args = _args(uniform_log, BEST)
    ci = ReplayMethod().estimate_interval(**args, n_bootstrap=1000, random_state=0)
    assert ci["lower"] <= true_value(BEST) <= ci["upper"]
    diag = weight_diagnostics(uniform_log.pscore, args["action_dist"], uniform_log.action)
    assert diag["matched_share"] == pytest.approx(0.2, abs=0.01)
    assert diag["ess_share"] == pytest.approx(0.2, abs=0.01)  # 0/5 weights: ESS = number of matches


@pytest.mark.parametrize("policy", [BEST, UNIFORM_TABLE, OTHER_SOFTMAX], ids=["best", "uniform", "other_softmax"])
def test_direct_method_with_correct_reward_model_is_near_truth(soft_log: BanditLog, soft_q: np.ndarray,
                                                               policy: TablePolicy) -> None:
    truth = true_value(policy)
    # Per-(intent, action) means are the correct model class for this problem.
    bucket = cross_fit_predict(lambda: BucketMeanRewardModel(bucket=lambda c: c["intent"]), soft_log, n_folds=1)
    assert DirectMethod().estimate_policy_value(**_args(soft_log, policy), estimated_rewards=bucket) == \
        pytest.approx(truth, abs=0.02)
    # So is a logistic regression on intent one-hots x action (the "len" feature is pure noise).
    assert DirectMethod().estimate_policy_value(**_args(soft_log, policy), estimated_rewards=soft_q) == \
        pytest.approx(truth, abs=0.03)


def test_oracle_reward_model_makes_dm_exact_and_dr_unbiased(soft_log: BanditLog) -> None:
    oracle = MU[[INTENTS.index(c["intent"]) for c in soft_log.contexts]]
    args = _args(soft_log, OTHER_SOFTMAX)
    # With the true q, DM is exactly the value under the sample's own intent frequencies.
    sample_value = float((args["action_dist"] * oracle).sum(axis=1).mean())
    assert DirectMethod().estimate_policy_value(**args, estimated_rewards=oracle) == pytest.approx(sample_value)
    assert sample_value == pytest.approx(true_value(OTHER_SOFTMAX), abs=0.01)
    ci = DoublyRobust().estimate_interval(**args, estimated_rewards=oracle, n_bootstrap=500, random_state=0)
    assert ci["lower"] <= true_value(OTHER_SOFTMAX) <= ci["upper"]


def test_full_feedback_uses_every_actions_reward(soft_log: BanditLog) -> None:
    args = _args(soft_log, OTHER_SOFTMAX)
    ci = FullFeedback().estimate_interval(**args, estimated_rewards=soft_log.full_rewards, n_bootstrap=500,
                                          random_state=0)
    assert ci["lower"] <= true_value(OTHER_SOFTMAX) <= ci["upper"]
    assert ci["upper"] - ci["lower"] < 0.02  # no importance weights: much tighter than IPS


def test_clipping_caps_weights_and_is_reported(soft_log: BanditLog) -> None:
    args = _args(soft_log, OTHER_SOFTMAX)
    raw = weight_diagnostics(soft_log.pscore, args["action_dist"], soft_log.action)
    clipped = weight_diagnostics(soft_log.pscore, args["action_dist"], soft_log.action, clip=5.0)
    assert raw["max_weight"] > 5.0 >= clipped["max_weight"]
    assert clipped["clipped_share"] > 0 and clipped["ess"] > raw["ess"]
    assert InverseProbabilityWeighting(clip=5.0).estimate_policy_value(**args) < \
        InverseProbabilityWeighting().estimate_policy_value(**args)


def test_evaluate_policies_rows(soft_log: BanditLog) -> None:
    small = synthetic_log(n=3000, seed=7)
    rows = evaluate_policies(small, {"best": BEST, "logging": LoggingPolicy(), "lexical+dense": FixedSubsetPolicy(
        "lexical+dense"), "uniform": UniformPolicy()}, n_bootstrap=200)
    got = {(r.policy, r.estimator) for r in rows}
    assert got == {(p, e) for p in ("best", "logging", "lexical+dense", "uniform")
                   for e in ("replay", "ips", "snips", "dm", "dr", "full")}
    fixed_full = next(r for r in rows if r.policy == "lexical+dense" and r.estimator == "full")
    assert fixed_full.estimate == pytest.approx(small.full_rewards[:, KEYS.index("lexical+dense@50")].mean())
    logging_ips = next(r for r in rows if r.policy == "logging" and r.estimator == "ips")
    assert logging_ips.estimate == pytest.approx(small.reward.mean()) and logging_ips.ess == pytest.approx(3000)


def test_policy_returning_a_bad_distribution_is_rejected() -> None:
    class Broken:
        def probabilities(self, context: dict[str, float], actions: list[ActionRecord]) -> list[float]:
            return [0.5] * len(actions)

    with pytest.raises(ValueError, match="summing to 1"):
        policy_action_dist(synthetic_log(n=10), Broken())


def test_fixed_subset_falls_back_to_nearest_subset() -> None:
    actions = [ActionRecord(arms=("lexical",), budget=50), ActionRecord(arms=("lexical", "dense"), budget=100),
               ActionRecord(arms=("lexical", "dense"), budget=50)]
    assert FixedSubsetPolicy("dense+lexical", budget=50).probabilities({}, actions) == [0.0, 0.0, 1.0]
    assert FixedSubsetPolicy("lexical+dense").probabilities({}, actions) == [0.0, 0.5, 0.5]
    assert FixedSubsetPolicy("lexical+dense+xr").probabilities({}, actions[:1] + actions[2:]) == [0.0, 1.0]


# ---------------------------------------------------------------------------------------------
# Log formats
# ---------------------------------------------------------------------------------------------

def _assert_same(a: BanditLog, b: BanditLog) -> None:
    assert a.action_keys == b.action_keys
    assert [x.tolist() for x in a.record_actions] == [x.tolist() for x in b.record_actions]
    for name in ("action", "pscore", "reward", "logging_probs", "full_rewards", "latency_ms", "ts"):
        x, y = getattr(a, name), getattr(b, name)
        assert (x is None) == (y is None), name
        if x is not None:
            np.testing.assert_array_equal(x, y, err_msg=name)
    assert a.contexts == b.contexts
    assert a.ids == b.ids


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_generic_format_round_trips(tmp_path: Path, suffix: str) -> None:
    log = synthetic_log(n=500, seed=3)
    path = write_generic_log(log, tmp_path / f"log{suffix}")
    back = read_generic_log(path)
    _assert_same(log, back)
    again = read_generic_log(write_generic_log(back, tmp_path / f"again{suffix}"))
    _assert_same(log, again)


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_generic_format_default_action_set_round_trips(tmp_path: Path, suffix: str) -> None:
    rng = np.random.default_rng(5)
    rows = [LogRow(id=f"r{i}", context={"x": float(rng.normal()), "intent": INTENTS[i % 3]}, actions=["0"],
                   action=str(int(rng.integers(0, 12))), propensity=1 / 12, reward=float(rng.random()))
            for i in range(300)]
    path = tmp_path / f"plain{suffix}"
    path.write_text("")
    # Build the file by hand without an `actions` column, the way foreign logs arrive.
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps({"id": r.id, "context": r.context, "action": int(r.action),
                                            "propensity": r.propensity, "reward": r.reward}) + "\n" for r in rows))
    else:
        path.write_text("id,ctx_x,ctx_intent,action,propensity,reward\n" + "".join(
            f"{r.id},{r.context['x']!r},{r.context['intent']},{r.action},{r.propensity!r},{r.reward!r}\n"
            for r in rows))
    log = read_generic_log(path)
    assert log.action_keys == [str(k) for k in range(12)]  # integer keys in numeric order
    assert log.available.all()
    assert log.contexts[0] == rows[0].context
    np.testing.assert_array_equal(log.action, [int(r.action) for r in rows])
    _assert_same(log, read_generic_log(write_generic_log(log, tmp_path / f"out{suffix}")))


def test_generic_action_index_into_row_action_set(tmp_path: Path) -> None:
    path = tmp_path / "idx.jsonl"
    path.write_text(json.dumps({"context": {"a": 1}, "actions": ["x@1", "y@1"], "action": 1, "propensity": 0.5,
                                "reward": 1, "probabilities": [0.5, 0.5]}) + "\n")
    log = read_generic_log(path)
    assert log.action_keys[log.action[0]] == "y@1"
    assert log.actions_of(0) == [ActionRecord(arms=("x",), budget=1), ActionRecord(arms=("y",), budget=1)]


@pytest.mark.parametrize(("suffix", "lines", "line", "field"), [
    (".csv", ["context,action,propensity,reward", '"{""a"": 1}",x,0.5,1', '"{""a"": 1}",y,abc,0'], 3, "propensity"),
    (".csv", ["context,action,propensity,reward", '"{""a"": 1}",x,0.5,1', '"{""a"": 1}",y,0,0'], 3, "propensity"),
    (".csv", ["context,action,propensity,reward", '"{""a"": 1}",x,0.5,', '"{""a"": 1}",y,0.5,0'], 2, "reward"),
    (".jsonl", ['{"context": {}, "action": "x", "propensity": 0.5, "reward": 1}', "{not json"], 2, "<line>"),
    (".jsonl", ['{"context": {}, "action": "x", "propensity": 0.5, "reward": 1}', "",
                '{"context": [1], "action": "x", "propensity": 0.5, "reward": 1}'], 3, "context"),
    (".jsonl", ['{"context": {}, "actions": ["x"], "action": "z", "propensity": 0.5, "reward": 1}'], 1, "action"),
])
def test_bad_lines_name_line_and_field(tmp_path: Path, suffix: str, lines: list[str], line: int, field: str) -> None:
    path = tmp_path / f"bad{suffix}"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(LogFormatError) as info:
        read_generic_log(path)
    assert info.value.line == line and info.value.field == field
    assert f":{line}: field '{field}'" in str(info.value)
    log = read_generic_log(path, skip_bad=True)
    assert log.n_skipped == 1 and len(log.skipped_errors) == 1


def _joined(i: int, *, shadow: bool, events: list[tuple[str, str]], chosen: int = 2) -> JoinedRecord:
    actions = [ActionRecord(arms=("lexical",), budget=2), ActionRecord(arms=("dense",), budget=2),
               ActionRecord(arms=("lexical", "dense"), budget=2)]
    candidates = {"lexical": ["t1", "t2", "t3"], "dense": ["t4", "t1", "t5"]}
    if shadow:
        candidates["q2e"] = ["t9"]
    served = ["t1", "t4", "t2"]
    return JoinedRecord(
        search_id=f"s{i}", ts=1.7e9 + i, query="q", query_norm="q", context={"intent=entity": 1.0, "len": 2.0},
        policy="vw", actions=actions, probabilities=[0.25, 0.25, 0.5], chosen=chosen,
        propensity=[0.25, 0.25, 0.5][chosen], shadow=shadow, candidates=candidates,
        retriever_ms={"lexical": 1.5, "dense": 4.0}, served=served, feature_names=["bm25", "dense_score"],
        features=[[3.0, 0.1], [None, 0.9], [1.0, None]],
        events=[FeedbackEvent(event_id=f"e{i}{j}", search_id=f"s{i}", track_id=t, type=kind,
                              position=served.index(t) + 1 if t in served else 1, timestamp=1.7e9 + i)
                for j, (t, kind) in enumerate(events)],
        reward=1.0 if any(k != "skip" for _, k in events) else 0.0)


def test_decision_log_reader(tmp_path: Path) -> None:
    recs = [_joined(0, shadow=True, events=[("t4", "click")]),
            _joined(1, shadow=False, events=[("t2", "play"), ("t1", "skip")]),
            _joined(2, shadow=False, events=[], chosen=0)]
    path = tmp_path / "decisions.jsonl"
    path.write_text("".join(r.model_dump_json() + "\n" for r in recs))
    log = read_log(path)
    assert log.action_keys == ["lexical@2", "dense@2", "lexical+dense@2"]
    assert log.action.tolist() == [2, 2, 0] and log.pscore.tolist() == [0.5, 0.5, 0.25]
    np.testing.assert_array_equal(log.logging_probs[0], [0.25, 0.25, 0.5])
    # Shadow: t4 is the first dense candidate, not among lexical's first two.
    np.testing.assert_array_equal(log.full_rewards[0], [0.0, 1.0, 1.0])
    # Not shadow, but both retrievers ran: t2 is lexical's second candidate.
    np.testing.assert_array_equal(log.full_rewards[1], [1.0, 0.0, 1.0])
    # Not shadow and lexical was chosen, but dense also left candidates, so every subset is known.
    assert not np.isnan(log.full_rewards[2]).any() and log.full_rewards[2].sum() == 0
    np.testing.assert_array_equal(log.latency_ms[0], [1.5, 4.0, 5.5])
    assert log.served is not None
    np.testing.assert_array_equal(log.served[1].labels, [0.0, 0.0, 1.0])  # the skip on t1 is not relevant
    assert np.isnan(log.served[0].features[1, 0])


def test_decision_log_bad_line(tmp_path: Path) -> None:
    good = _joined(0, shadow=False, events=[]).model_dump_json()
    bad = json.loads(good)
    bad["propensity"] = 0.9  # does not match probabilities[chosen]
    missing = json.loads(good)
    del missing["served"]
    path = tmp_path / "d.jsonl"
    path.write_text("\n".join([good, json.dumps(bad), json.dumps(missing)]) + "\n")
    with pytest.raises(LogFormatError, match=r":2: field 'propensity'"):
        read_decision_log(path)
    log = read_decision_log(path, skip_bad=True)
    assert len(log) == 1 and log.n_skipped == 2
    assert "field 'served'" in log.skipped_errors[1]


# ---------------------------------------------------------------------------------------------
# Ranker metrics and report
# ---------------------------------------------------------------------------------------------

def test_list_metrics_known_values() -> None:
    m = list_metrics(np.array([0.0, 1.0, 0.0]), k=10)
    assert m["mrr"] == 0.5 and m["ndcg@10"] == pytest.approx(1 / np.log2(3)) and m["recall@10"] == 1.0
    assert list_metrics(np.array([0.0, 0.0, 1.0]), k=2)["recall@2"] == 0.0


def test_compare_rankers_reorders_logged_lists(tmp_path: Path) -> None:
    recs = [_joined(i, shadow=False, events=[("t4", "click")] if i % 2 else []) for i in range(6)]
    path = tmp_path / "d.jsonl"
    path.write_text("".join(r.model_dump_json() + "\n" for r in recs))
    served = read_decision_log(path).served
    rows = compare_rankers(served, {
        "dense_first": lambda x, names: x[:, names.index("dense_score")],
        "bm25_first": lambda x, names: x[:, names.index("bm25")],
    }, k=3)
    by = {r["ranker"]: r for r in rows}
    assert by["logged"]["n_queries"] == 6 and by["logged"]["n_with_click"] == 3
    assert by["logged"]["mrr"] == 0.5  # t4 served at position 2
    assert by["dense_first"]["mrr"] == 1.0 and by["dense_first"]["ndcg@3"] == 1.0
    assert by["bm25_first"]["mrr"] == pytest.approx(1 / 3)  # NaN bm25 sinks t4 to the bottom
    assert ranker_metrics(served, k=3)["mrr"] == 0.5


def test_report_writes_markdown_html_and_pngs(tmp_path: Path) -> None:
    log = synthetic_log(n=2000, seed=11)
    policies = {"best": BEST, "uniform": UniformPolicy(), "logging": LoggingPolicy()}
    rows = evaluate_policies(log, policies, n_bootstrap=100)
    rng = np.random.default_rng(0)
    oracle = (rng.random(500) < 0.6).astype(float)
    online = {"vw": (rng.random(500) < 0.5).astype(float), "uniform": (rng.random(500) < 0.3).astype(float)}
    ranker_rows = [{"ranker": "logged", "n_queries": 10, "n_with_click": 4, "ndcg@10": 0.5, "mrr": 0.4}]
    path = write_report(tmp_path / "out", rows, log=log, policy_dists={"best": policy_action_dist(log, BEST)},
                        online_rewards=online, oracle_rewards=oracle, ranker_rows=ranker_rows)
    out = path.parent
    md = path.read_text()
    html = (out / "index.html").read_text()
    pngs = ["estimates.png", "online.png", "action_shares.png"]
    for name in pngs:
        f = out / name
        assert f.stat().st_size > 1000
        with Image.open(f) as img:
            img.verify()
            assert img.format == "PNG"
        assert f"]({name})" in md and f"src='{name}'" in html
    assert "| best | ips |" in md and "<table>" in html and "Ranker metrics" in md
