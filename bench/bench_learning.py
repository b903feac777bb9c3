"""Does the retrieval bandit learn? Learning curves over simulated traffic (issue 6 evidence).

    python -m bench.bench_learning [--quick] [--no-ranker]

1. Precompute, once per query sequence (cached in bench/.cache), every retriever's top-100
   candidates for each simulated query (services.offline.simulate: spearfishing with typos, topic and
   repeated popular queries) with `retrieve_batch`, and each retriever's latency per query: single
   `retrieve` calls, timed on every distinct query in --quick mode and on a 2,000-query sample
   otherwise (the other queries get their intent's median for that retriever).
2. Run every policy over the same sequence (20,000 queries, 2,000 in --quick). Per step:
   retrieval reward = spearfishing / popular: 1 if the wanted track is in the union of the chosen
   retrievers' candidates; topic: the capped recall |relevant & union| / min(|relevant|, 100)
   (services.offline.simulate.retrieval_reward); net reward = retrieval reward - latency_lambda x arms,
   the cost VW optimizes (bandit.policy.CostModel, "arms" mode).
   The Q2E memory learns as it does in service: after a step whose union holds the wanted track
   (topic: up to two relevant tracks) the user clicks it, and the memory puts it first for that
   query from then on, and its context features (q2e_hit, q2e_log_evidence) say so. Every policy
   run has its own memory.
   Policies: VW learned online with bandit feedback only (decide, then learn the chosen action's
   reward with its propensity), from a fresh model and from the cold-start model, with the
   service's exploration setting, and from a fresh model with the other one (epsilon-greedy vs
   SquareCB); its greedy
   action at each step (what it would serve with exploration off; not used for learning); each
   fixed subset; "all retrievers"; uniform random; the oracle = best subset per intent in
   hindsight; and the per-query oracle as an upper bound.
3. Targets over the second half of the run (after learning): learned >= best fixed subset of
   <= max_arms retrievers; >= 0.97 x oracle; <= 0.6 x the latency of "all"; >= 0.98 x its recall.
4. Ranker: LightGBM trained on the click logs of an in-process simulation (on a copy of the data
   dir) vs the cold-start ranker vs each single retriever's own order, nDCG@10 on held-out
   simulated queries (graded: wanted track 3, other relevant 1) and on the dev playlist queries.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import pickle
import random
import shutil
import tempfile
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import CACHE, RESULTS, load_playlists, ndcg_at_k, write_result

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SEED = 7
TIMING_SAMPLE = 2000
WINDOW = 0.5  # targets are judged on the last half of the run


@dataclass
class Precomputed:
    queries: list[Any]  # services.offline.simulate.SimQuery
    contexts: list[dict[str, float]]
    cands: dict[str, list[list[str]]]  # retriever -> per query top-100 ids (index into `texts`)
    latency: dict[str, np.ndarray]  # retriever -> (n,) ms
    text_index: list[int]  # query i -> its distinct text
    timed_share: float


def _fingerprint(s: Any) -> str:
    parts = []
    for sub in ("models/xr", "models/bandit", "indexes/lexical", "indexes/dense"):
        p = s.data_dir / sub
        parts.append(f"{sub}:{sorted(x.name for x in p.iterdir()) if p.exists() else None}")
    return hashlib.sha1("|".join(parts).encode()).hexdigest()[:10]


def precompute(rt: Any, n: int, seed: int, *, time_all: bool, progress: bool = True) -> Precomputed:
    from tqdm import tqdm

    from retrievers.text import normalize
    from services.offline.simulate import TrafficSimulator

    path = CACHE / f"learning-{n}-seed{seed}-{_fingerprint(rt.settings)}.pkl"
    if path.exists():
        with open(path, "rb") as fh:
            # A plain dict: a pickled class would be bound to __main__ when run with `python -m`.
            return Precomputed(**pickle.load(fh))
    sim = TrafficSimulator(rt.catalog, seed=seed)
    queries = sim.queries(n)
    texts: dict[str, int] = {}
    text_index = [texts.setdefault(q.text, len(texts)) for q in queries]
    distinct = list(texts)
    retrievers = rt.pipeline.parts.retrievers
    budget = max(a.budget for a in rt.pipeline.actions)
    # Time single calls first, before batching fills any query cache (dense keeps an LRU of vectors).
    rng = random.Random(seed)
    timed = list(range(len(distinct))) if time_all else sorted(rng.sample(range(len(distinct)),
                                                                           min(TIMING_SAMPLE, len(distinct))))
    measured: dict[str, dict[int, float]] = {a: {} for a in retrievers}
    for j in tqdm(timed, desc="timing retrievers", unit="q", disable=not progress):
        for arm, r in retrievers.items():
            t = time.perf_counter()
            r.retrieve(distinct[j], budget)
            measured[arm][j] = (time.perf_counter() - t) * 1000
    per_text: dict[str, list[list[str]]] = {}
    for arm, r in retrievers.items():
        out: list[list[str]] = []
        for start in tqdm(range(0, len(distinct), 256), desc=f"candidates {arm}", disable=not progress):
            chunk = distinct[start:start + 256]
            out.extend([c.track_id for c in cs] for cs in r.retrieve_batch(chunk, budget))
        per_text[arm] = out
    # Latency of untimed queries: their intent's median for that retriever.
    latency: dict[str, np.ndarray] = {}
    for arm in retrievers:
        by_intent: dict[str, list[float]] = defaultdict(list)
        for i, q in enumerate(queries):
            v = measured[arm].get(text_index[i])
            if v is not None:
                by_intent[q.intent].append(v)
        overall = float(np.median(list(measured[arm].values())))
        med = {k: float(np.median(v)) for k, v in by_intent.items()}
        latency[arm] = np.array([measured[arm].get(text_index[i], med.get(q.intent, overall))
                                 for i, q in enumerate(queries)])
    contexts = []
    ctx_cache: dict[int, dict[str, float]] = {}
    for i, q in enumerate(queries):
        j = text_index[i]
        if j not in ctx_cache:
            ctx_cache[j] = rt.pipeline.context(q.text, normalize(q.text))[1]
        contexts.append(ctx_cache[j])
    pre = Precomputed(queries, contexts, {a: per_text[a] for a in retrievers}, latency, text_index,
                      len(timed) / max(1, len(distinct)))
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        pickle.dump(vars(pre), fh)
    return pre


class Memory:
    """The Q2E memory's learning, per policy run: clicked tracks per query text go first."""

    def __init__(self) -> None:
        self.clicks: dict[str, Counter[str]] = defaultdict(Counter)

    def candidates(self, text: str, seeded: list[str], budget: int) -> list[str]:
        learned = [t for t, _ in self.clicks[text].most_common()] if text in self.clicks else []
        if not learned:
            return seeded[:budget]
        rest = [t for t in seeded if t not in self.clicks[text]]
        return (learned + rest)[:budget]

    def context(self, text: str, base: dict[str, float]) -> dict[str, float]:
        c = self.clicks.get(text)
        if not c:
            return base
        ctx = dict(base)
        evidence = math.expm1(base.get("q2e_log_evidence", 0.0)) + sum(c.values())
        ctx["q2e_hit"] = 1.0
        ctx["q2e_log_evidence"] = math.log1p(evidence)
        return ctx

    def learn(self, q: Any, union_order: list[str]) -> None:
        if q.targets:
            for t in q.targets:
                if t in union_order:
                    self.clicks[q.text][t] += 1
            return
        hits = [t for t in union_order if t in q.relevant][:2]
        for t in hits:
            self.clicks[q.text][t] += 1


@dataclass
class RunResult:
    name: str
    reward: np.ndarray  # retrieval reward per step
    net: np.ndarray  # minus the cost term
    latency: np.ndarray
    actions: list[str]


def simulate_policy(name: str, pre: Precomputed, actions: list[Any], lam: float, choose: Any,
                    learn: Any | None = None, greedy: Any | None = None) -> list[RunResult]:
    """One pass over the sequence. `choose(i, ctx) -> (action index, propensity)`; `learn(ctx, a,
    reward, p, latency)` updates the policy; `greedy(ctx) -> action index` is scored on the side."""
    from services.offline.simulate import retrieval_reward

    n = len(pre.queries)
    mem = Memory()
    out = {k: (np.zeros(n), np.zeros(n), np.zeros(n), []) for k in ([name, name + " (greedy)"] if greedy else [name])}
    for i, q in enumerate(pre.queries):
        j = pre.text_index[i]
        ctx = mem.context(q.text, pre.contexts[i])

        def union_of(a: Any, q: Any = q, j: int = j) -> list[str]:
            seen: dict[str, None] = {}
            for arm in a.arms:
                ids = pre.cands[arm][j]
                if arm == "q2e":
                    ids = mem.candidates(q.text, ids, a.budget)
                for t in ids[: a.budget]:
                    seen.setdefault(t)
            return list(seen)

        picks = [(name, *choose(i, ctx))]
        if greedy:
            picks.append((name + " (greedy)", greedy(ctx), 1.0))
        first_union: list[str] = []
        for k, (label, a_idx, p) in enumerate(picks):
            a = actions[a_idx]
            union = union_of(a)
            r = retrieval_reward(q, set(union), a.budget)
            lat = float(sum(pre.latency[arm][i] for arm in a.arms))
            rew, net, latency, acts = out[label]
            rew[i], net[i], latency[i] = r, r - lam * len(a.arms), lat
            acts.append(a.key)
            if k == 0:
                first_union = union
                if learn is not None:
                    learn(ctx, a_idx, r, p, lat)
        mem.learn(q, first_union)
    return [RunResult(k, *v) for k, v in out.items()]


def bandit_runs(rt: Any, pre: Precomputed, lam: float, progress: bool = True) -> list[RunResult]:
    from bandit.policy import FixedPolicy, UniformRandomPolicy

    actions = rt.pipeline.actions
    results: list[RunResult] = []
    for a in actions:
        fp = FixedPolicy(a.arms, a.budget)
        idx = fp.index(actions)
        label = "all" if len(a.arms) == len(rt.pipeline.parts.retrievers) else "fixed:" + "+".join(a.arms)
        results += simulate_policy(label, pre, actions, lam, lambda i, ctx, idx=idx: (idx, 1.0))
    uni = UniformRandomPolicy(seed=SEED)

    def uniform(i: int, ctx: dict[str, float]) -> tuple[int, float]:
        d = uni.decide(ctx, actions)
        return d.chosen, d.propensity

    results += simulate_policy("uniform", pre, actions, lam, uniform)
    from bandit.policy import VWPolicy
    from services.serving.runtime import vw_config

    # The service's configuration (from a fresh model and from the cold-start one), and SquareCB,
    # the other exploration the settings offer (LTRR_EXPLORATION=squarecb), for comparison.
    other = "squarecb" if rt.settings.exploration != "squarecb" else "epsilon"
    alternative = VWPolicy(vw_config(rt.settings.model_copy(update={"exploration": other})))
    for label, policy in (("learned (fresh)", rt.bandit_store.fresh()),
                          ("learned (cold start)", coldstart_policy(rt)),
                          (f"learned (fresh, {other})", alternative)):
        if policy is None:
            continue
        rng = random.Random(SEED)

        def choose(i: int, ctx: dict[str, float], policy: Any = policy, rng: random.Random = rng) -> tuple[int, float]:
            d = policy.decide(ctx, actions, rng)
            return d.chosen, d.propensity

        def learn(ctx: dict[str, float], a: int, r: float, p: float, lat: float, policy: Any = policy) -> None:
            policy.learn(ctx, actions, a, r, p, lat)

        def greedy(ctx: dict[str, float], policy: Any = policy) -> int:
            return int(np.argmax(policy.probabilities(ctx, actions)))

        t = time.perf_counter()
        results += simulate_policy(label, pre, actions, lam, choose, learn, greedy)
        if progress:
            print(f"  {label}: {time.perf_counter() - t:.1f}s")
    return results


def coldstart_policy(rt: Any) -> Any:
    """The cold-start bandit (the latest version trained from the catalog, not from traffic)."""
    store = rt.bandit_store
    for v in reversed(store.store.versions()):
        if "cold-start" in str(store.store.manifest(v)["meta"].get("source", "")):
            return store.load(v)
    return None


def oracles(pre: Precomputed, fixed: list[RunResult]) -> tuple[RunResult, RunResult, dict[str, str]]:
    """Best subset per intent in hindsight (by net reward) and the per-query best subset."""
    intents = np.array([q.intent for q in pre.queries])
    n = len(intents)
    per_intent = RunResult("oracle (best subset per intent)", np.zeros(n), np.zeros(n), np.zeros(n), [""] * n)
    best_of: dict[str, str] = {}
    for intent in sorted(set(intents)):
        m = intents == intent
        best = max(fixed, key=lambda r: r.net[m].mean())
        best_of[intent] = best.name
        for arr, src in ((per_intent.reward, best.reward), (per_intent.net, best.net),
                         (per_intent.latency, best.latency)):
            arr[m] = src[m]
        for i in np.flatnonzero(m):
            per_intent.actions[i] = best.actions[i]
    nets = np.vstack([r.net for r in fixed])
    pick = nets.argmax(axis=0)
    cols = np.arange(n)
    per_query = RunResult("oracle (best subset per query)", np.vstack([r.reward for r in fixed])[pick, cols],
                          nets[pick, cols], np.vstack([r.latency for r in fixed])[pick, cols],
                          [fixed[k].actions[i] for i, k in enumerate(pick)])
    return per_intent, per_query, best_of


def summarize(results: list[RunResult], pre: Precomputed, start: int) -> dict[str, dict[str, float]]:
    spear = np.array([bool(q.targets) for q in pre.queries])
    out = {}
    for r in results:
        w = slice(start, None)
        out[r.name] = {
            "mean_net_reward": float(r.net[w].mean()), "mean_reward": float(r.reward[w].mean()),
            "recall": float(r.reward[w].mean()),
            "target_found": float(r.reward[w][spear[w]].mean()) if spear[w].any() else float("nan"),
            "topic_capped_recall": float(r.reward[w][~spear[w]].mean()) if (~spear[w]).any() else float("nan"),
            "mean_latency_ms": float(r.latency[w].mean()),
            "mean_arms": float(np.mean([len(k.split("@")[0].split("+")) for k in r.actions[start:]])),
            "whole_run_net_reward": float(r.net.mean()),
        }
    return out


def plot(results: list[RunResult], oracle: RunResult, pre: Precomputed, learned: str, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    shown = [r for r in results if r.name.startswith(("learned", "all", "uniform"))]
    fixed = [r for r in results if r.name.startswith("fixed:")]
    if fixed:
        shown.append(max(fixed, key=lambda r: r.net.mean()))
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.5))
    n = len(oracle.net)
    win = max(50, n // 40)
    kernel = np.ones(win) / win
    for r in shown:
        axes[0].plot(np.cumsum(r.net), label=r.name)
        axes[1].plot(np.cumsum(oracle.net - r.net), label=r.name)
        axes[2].plot(np.arange(win - 1, n), np.convolve(r.net, kernel, mode="valid"), label=r.name)
    axes[0].plot(np.cumsum(oracle.net), "k--", label=oracle.name)
    axes[2].plot(np.arange(win - 1, n), np.convolve(oracle.net, kernel, mode="valid"), "k--", label="oracle")
    for ax, title in zip(axes, ("cumulative net reward", "cumulative regret vs per-intent oracle",
                                f"net reward, moving average of {win}"), strict=True):
        ax.set_title(title)
        ax.set_xlabel("simulated search")
        ax.grid(alpha=0.3)
    axes[2].legend(fontsize=7)
    fig.tight_layout()
    p = out / "learning_curve.png"
    fig.savefig(p, dpi=100)
    plt.close(fig)
    files.append(p.name)

    run = next(r for r in results if r.name == learned)
    start = int(n * (1 - WINDOW))
    intents = sorted({q.intent for q in pre.queries})
    keys = sorted(set(run.actions), key=lambda k: (len(k.split("+")), k))
    shares = np.zeros((len(intents), len(keys)))
    for i in range(start, n):
        shares[intents.index(pre.queries[i].intent), keys.index(run.actions[i])] += 1
    shares /= np.maximum(shares.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(10, 4.5))
    colors = plt.get_cmap("tab20")(np.linspace(0, 1, max(2, len(keys))))
    bottom = np.zeros(len(intents))
    for k, key in enumerate(keys):
        ax.bar(intents, shares[:, k], bottom=bottom, color=colors[k], label=key)
        bottom += shares[:, k]
    ax.set_ylabel("share of decisions")
    ax.set_title(f"{learned}: retriever subsets by query intent (second half of the run)")
    ax.legend(fontsize=7, bbox_to_anchor=(1.01, 1), loc="upper left")
    ax.tick_params(axis="x", rotation=20)
    fig.tight_layout()
    p = out / "learning_arm_shares.png"
    fig.savefig(p, dpi=100)
    plt.close(fig)
    files.append(p.name)
    return files


def bandit_part(n: int, quick: bool, progress: bool = True) -> dict[str, Any]:
    from bench.bench_search import bench_settings
    from services.serving.runtime import Runtime

    s = bench_settings()
    rt = Runtime(s, start_worker=False)
    try:
        t = time.perf_counter()
        pre = precompute(rt, n, SEED, time_all=quick, progress=progress)
        t_pre = time.perf_counter() - t
        lam = s.latency_lambda
        t = time.perf_counter()
        results = bandit_runs(rt, pre, lam, progress)
        t_runs = time.perf_counter() - t
        actions = rt.pipeline.actions
        max_arms = s.max_arms
    finally:
        rt.close()
    fixed = [r for r in results if r.name.startswith("fixed:") or r.name == "all"]
    per_intent, per_query, best_of = oracles(pre, fixed)
    start = int(n * (1 - WINDOW))
    table = summarize([*results, per_intent, per_query], pre, start)
    small = [r for r in fixed if r.name.startswith("fixed:") and len(r.name[6:].split("+")) <= max_arms]
    best_fixed = max(small, key=lambda r: table[r.name]["mean_net_reward"]).name
    allr = table["all"]
    oracle = table[per_intent.name]
    targets = {}
    for name in [r.name for r in results if r.name.startswith("learned")]:
        m = table[name]
        targets[name] = {
            "net_reward_vs_best_fixed": {"value": m["mean_net_reward"], "best_fixed": best_fixed,
                                         "best_fixed_value": table[best_fixed]["mean_net_reward"],
                                         "met": m["mean_net_reward"] >= table[best_fixed]["mean_net_reward"]},
            "within_3pct_of_oracle": {"ratio": m["mean_net_reward"] / oracle["mean_net_reward"],
                                      "met": m["mean_net_reward"] >= 0.97 * oracle["mean_net_reward"]},
            "latency_vs_all": {"ratio": m["mean_latency_ms"] / allr["mean_latency_ms"],
                               "met": m["mean_latency_ms"] <= 0.6 * allr["mean_latency_ms"]},
            "recall_vs_all": {"ratio": m["recall"] / allr["recall"], "met": m["recall"] >= 0.98 * allr["recall"]},
        }
    learned_main = max((r for r in results if r.name.startswith("learned") and "greedy" not in r.name),
                       key=lambda r: table[r.name]["mean_net_reward"]).name
    RESULTS.mkdir(parents=True, exist_ok=True)
    plots = plot(results, per_intent, pre, learned_main, RESULTS)
    intents = Counter(q.intent for q in pre.queries)
    return {
        "n_queries": n, "distinct_queries": len(set(pre.text_index)), "seed": SEED, "latency_lambda": lam,
        "actions": [a.key for a in actions], "intent_mix": dict(intents),
        "latency_timed_share_of_distinct_queries": pre.timed_share,
        "median_retriever_ms": {a: float(np.median(v)) for a, v in pre.latency.items()},
        "window": f"last {int(WINDOW * 100)}% of the run (steps {start}..{n - 1})",
        "policies": table, "oracle_subset_by_intent": best_of, "best_fixed_subset": best_fixed,
        "targets": targets, "plots": plots, "seconds": {"precompute": t_pre, "policy_runs": t_runs},
        "reward_definition": "spearfish/popular: wanted track in the union of the chosen retrievers' top-100; "
                             "topic: |relevant & union| / min(|relevant|, 100); net = reward - lambda x arms",
    }


# --- ranker ---------------------------------------------------------------------------------------
def _copy_data_dir(src: Path) -> Path:
    dst = Path(tempfile.mkdtemp(prefix="ltrr-learning-"))
    shutil.copytree(src, dst / "var", ignore=shutil.ignore_patterns("embeddings", "logs", "*.sock", "*.pid"))
    return dst / "var"


def ranker_part(n_train: int, n_eval: int, progress: bool = True) -> dict[str, Any]:
    """Ranker trained on simulated clicks vs the cold-start ranker vs single retrievers' orders."""
    from bench.bench_search import bench_settings
    from ranker import model as ranker_model
    from services.artifacts import ArtifactStore
    from services.offline.build import train_ranker_from_log
    from services.offline.simulate import TrafficSimulator
    from services.offline.simulate import run as simulate
    from services.serving.runtime import Runtime

    base = bench_settings()
    data = _copy_data_dir(base.data_dir)
    try:
        s = base.model_copy(update={"data_dir": data, "checkpoint_every": 500})
        rankers = ArtifactStore(s.models_dir / "ranker", "ranker")
        cold_path = rankers.path(rankers.latest())
        t = time.perf_counter()
        results, _, _ = simulate(s, n_train, seed=SEED + 1, progress=progress)
        t_sim = time.perf_counter() - t
        row = train_ranker_from_log(s, s.logs_dir)
        learned_path = rankers.path(rankers.latest())
        rt = Runtime(s, start_worker=False)
        try:
            registry = rt.pipeline.registry
            models = {"cold-start ranker": ranker_model.load(cold_path, registry),
                      "ranker trained on simulated clicks": ranker_model.load(learned_path, registry)}
            sim = TrafficSimulator(rt.catalog, seed=SEED + 2)
            held = [q for q in sim.queries(n_eval) if q.relevant]
            sim_eval = [(q.text, {t: (3 if t in q.targets else 1) for t in q.relevant}) for q in held]
            pq, qrels = load_playlists()
            dev = [(pq[k], qrels[k]) for k in sorted(qrels) if k in pq]
            out = {"train_searches": n_train, "simulation_seconds": t_sim, "trained_on_searches_with_clicks": row.items,
                   "click_rate": float(np.mean([any(e.type in ("click", "play") for e in r.events) for r in results])),
                   "simulated_held_out": _ndcg_table(rt, models, sim_eval, progress),
                   "dev_playlists": _ndcg_table(rt, models, dev, progress),
                   "note": "candidates: union of every retriever's top-100 (the 'all' action); labels: wanted "
                           "track 3, other relevant 1 (simulated), playlist qrels (dev)"}
        finally:
            rt.close()
        return out
    finally:
        shutil.rmtree(data.parent, ignore_errors=True)


def _ndcg_table(rt: Any, models: dict[str, Any], queries: list[tuple[str, dict[str, int]]],
                progress: bool) -> dict[str, float]:
    from tqdm import tqdm

    from retrievers.text import normalize

    pipe = rt.pipeline
    arms = tuple(pipe.parts.retrievers)
    budget = max(a.budget for a in pipe.actions)
    scores: dict[str, list[float]] = defaultdict(list)
    for text, rel in tqdm(queries, desc="ranker eval", unit="q", disable=not progress):
        results = {a: pipe.parts.retrievers[a].retrieve(text, budget) for a in arms}
        for a, cands in results.items():
            scores[f"{a} order"].append(ndcg_at_k([c.track_id for c in cands], rel))
        seen: dict[str, None] = {}
        for r in range(budget):
            for a in arms:
                if r < len(results[a]):
                    seen.setdefault(results[a][r].track_id)
        ids, x = pipe.featurize(normalize(text), text, list(seen), results, None, arms)
        for name, model in models.items():
            order = np.argsort(-model.predict(x), kind="stable") if len(ids) else []
            scores[name].append(ndcg_at_k([ids[k] for k in order], rel))
    return {k: float(np.mean(v)) for k, v in scores.items()} | {"n_queries": len(queries)}


def run(quick: bool = False, ranker: bool = True, progress: bool = True) -> dict[str, Any]:
    from bench.bench_search import ensure_built

    ensure_built()
    n = 2000 if quick else 20000
    t = time.perf_counter()
    payload: dict[str, Any] = {"quick": quick, "bandit": bandit_part(n, quick, progress)}
    if ranker:
        payload["ranker"] = ranker_part(800 if quick else 3000, 300 if quick else 1000, progress)
    payload["seconds"] = time.perf_counter() - t
    path = write_result("learning", payload)
    (RESULTS / "learning.md").write_text(pareto_markdown(payload))
    if progress:
        print(f"wrote {path}")
    return payload


def pareto_markdown(payload: dict[str, Any]) -> str:
    """Recall against cost for every policy, over the judged window: a policy is on the Pareto
    front when no other policy has higher recall at no more milliseconds. The oracles are upper
    bounds in hindsight, not policies, and are listed apart."""
    b = payload["bandit"]
    rows = b["policies"]
    real = {k: v for k, v in rows.items() if not k.startswith("oracle")}
    front = {k for k, v in real.items()
             if not any(o["recall"] > v["recall"] and o["mean_latency_ms"] <= v["mean_latency_ms"]
                        for n, o in real.items() if n != k)}
    lines = [f"SIMULATED traffic (pseudo-query templates, `services.offline.simulate`): {b['n_queries']:,} queries, "
             f"judged on the {b['window']}. Recall is the retrieval reward (spearfish: the wanted track in the "
             "union; topic: capped recall); ms is the sum of the chosen retrievers' measured single-call "
             "latencies (bench_learning step 1), not an end-to-end measurement. ★ = on the recall/ms Pareto front.",
             "", "| policy | recall | spearfish found | topic recall | retrieval ms | arms | net reward | front |",
             "|---|---|---|---|---|---|---|---|"]
    for name, m in sorted(rows.items(), key=lambda kv: (kv[0].startswith("oracle"), kv[1]["mean_latency_ms"])):
        mark = "★" if name in front else ("(bound)" if name.startswith("oracle") else "")
        lines.append(f"| {name} | {m['recall']:.3f} | {m['target_found']:.3f} | {m['topic_capped_recall']:.3f} | "
                     f"{m['mean_latency_ms']:.2f} | {m['mean_arms']:.2f} | {m['mean_net_reward']:.4f} | {mark} |")
    return "\n".join(lines) + "\n"


def _print(payload: dict[str, Any]) -> None:
    b = payload["bandit"]
    print(f"\n{b['n_queries']} simulated queries; judged on the {b['window']}; lambda {b['latency_lambda']}")
    print(f"{'policy':<36} {'net':>7} {'recall':>7} {'target':>7} {'topic':>7} {'ms':>7} {'arms':>5}")
    for name, m in sorted(b["policies"].items(), key=lambda kv: -kv[1]["mean_net_reward"]):
        print(f"{name:<36} {m['mean_net_reward']:>7.4f} {m['recall']:>7.4f} {m['target_found']:>7.4f} "
              f"{m['topic_capped_recall']:>7.4f} {m['mean_latency_ms']:>7.2f} {m['mean_arms']:>5.2f}")
    print("\ntargets:", json.dumps(b["targets"], indent=1, default=float))
    if "ranker" in payload:
        r = payload["ranker"]
        print("\nranker nDCG@10:", json.dumps({k: r[k] for k in ("simulated_held_out", "dev_playlists")}, indent=1))


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="2,000 queries instead of 20,000")
    ap.add_argument("--no-ranker", action="store_true", help="only the bandit learning curves")
    a = ap.parse_args()
    _print(run(quick=a.quick, ranker=not a.no_ranker))
