"""The promotion gate's decisions on known ground truth (services.learning.gate), with real LightGBM models."""

from __future__ import annotations

import numpy as np

from ranker import model as ranker_model
from ranker.features import DEFAULT_REGISTRY
from ranker.model import RankData
from services.learning.gate import BanditGate, RankerGate, XRGate, mean_ndcg, ndcg_at


def _groups(n: int, seed: int) -> RankData:
    """Groups of 20 rows whose label is driven by feature 0 (plus noise)."""
    rng = np.random.default_rng(seed)
    d = DEFAULT_REGISTRY.dim
    x = rng.normal(size=(n * 20, d)).astype(np.float32)
    y = np.clip(np.round(x[:, 0] * 1.2 + rng.normal(scale=0.3, size=n * 20)), 0, 3).astype(int)
    return RankData(x, y, np.full(n, 20))


def test_ndcg_at_matches_a_hand_computed_case() -> None:
    assert ndcg_at(np.array([3.0, 2.0, 1.0]), np.array([0.0, 0.0, 1.0]), 10) == 0.5
    assert ndcg_at(np.array([1.0, 0.0]), np.array([0.0, 0.0])) == 0.0


def test_ranker_gate_refuses_shuffled_labels_and_promotes_real_ones() -> None:
    train, recent, general = _groups(300, 0), _groups(60, 1), _groups(60, 2)
    good = ranker_model.train(train.X, train.y, train.group, num_boost_round=40)
    shuffled = ranker_model.train(train.X, np.random.default_rng(3).permutation(train.y), train.group,
                                  num_boost_round=40)
    gate = RankerGate(tolerance=0.005)
    assert not gate.evaluate(shuffled, good, recent, general).promote
    r = gate.evaluate(good, shuffled, recent, general)
    assert r.promote and r.report["ndcg10_recent_new"] > r.report["ndcg10_recent_old"]
    # A floor from the cold start: a model that loses on the general set beyond it is refused even
    # when the serving one is already below the floor.
    baseline = mean_ndcg(good.predict, general)
    assert not gate.evaluate(shuffled, shuffled, recent, general, general_baseline=baseline).promote
    assert not gate.evaluate(good, None, _groups(5, 4), general).promote  # too little held-out evidence


def test_xr_gate_compares_mrr_on_held_out_pairs() -> None:
    holdout = [(f"q{i}", f"t{i}") for i in range(30)]
    hit = lambda qs: [[f"t{q[1:]}", "x"] for q in qs]  # noqa: E731
    miss = lambda qs: [["x", f"t{q[1:]}"] for q in qs]  # noqa: E731
    assert XRGate(0.005).evaluate(hit, miss, holdout).promote
    assert not XRGate(0.005).evaluate(miss, hit, holdout).promote
    assert not XRGate(0.005).evaluate(hit, miss, holdout[:5]).promote


def test_bandit_gate_promotes_the_same_policy_and_refuses_a_clearly_worse_one() -> None:
    rng = np.random.default_rng(0)
    same, worse = BanditGate(0.005, min_searches=50), BanditGate(0.005, min_searches=50)
    for _ in range(400):
        p = 0.5
        reward = float(rng.random() < 0.6)
        same.observe(p, p, reward)  # the candidate is the logging policy: V_new = V_old
        # The candidate puts its mass on the logged action exactly when it earned nothing.
        worse.observe(0.9 if reward == 0 else 0.05, p, reward)
    assert same.evaluate().promote
    r = worse.evaluate()
    assert not r.promote and r.report["clearly_worse"]
    assert not BanditGate(0.005, min_searches=50).evaluate().promote  # no evidence yet


def test_the_bandit_pauses_when_no_search_gets_any_feedback(tmp_path, redis_client) -> None:
    """A feedback outage must not teach the bandit that every action earns 0 (which would leave only
    the latency cost and walk it to the cheapest arm); one event resumes learning."""
    from logged.records import ActionRecord, FeedbackEvent, JoinedRecord
    from services.config import Settings
    from services.jsonl_log import JsonlWriter
    from services.keys import Keys
    from services.learning.worker import BanditLearner
    from services.serving.runtime import BanditStore

    settings = Settings(data_dir=tmp_path, bandit_silence_window=20)
    store = BanditStore(settings, redis_client, Keys())
    log = JsonlWriter(tmp_path / "logs", "joined")
    learner = BanditLearner(settings, redis_client, Keys(), store, log)
    learner.policy = store.fresh()
    actions = [ActionRecord(arms=("lexical",), budget=100), ActionRecord(arms=("dense",), budget=100)]

    def record(i: int, events: list[FeedbackEvent]) -> dict:
        rec = JoinedRecord(search_id=f"s{i}", ts=1.0, query="q", query_norm="q", context={"n_tokens": 1.0},
                           policy="vw", actions=actions, probabilities=[0.5, 0.5], chosen=i % 2, propensity=0.5,
                           candidates={"lexical": ["t"]}, served=["t"], events=events,
                           reward=1.0 if events else 0.0)
        return {"record": rec.model_dump()}

    for i in range(25):
        learner.apply(record(i, []), f"{i}-0")
    assert learner.paused and learner.policy.n_learned < 25
    learned = learner.policy.n_learned
    play = FeedbackEvent(event_id="e", search_id="s99", track_id="t", type="play", position=1, timestamp=2.0)
    learner.apply(record(99, [play]), "99-0")
    assert not learner.paused and learner.policy.n_learned == learned + 1
    log.close()
