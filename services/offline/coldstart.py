"""Cold-start training for the ranker and the bandit, before any user has clicked.

Self-supervision from the catalog: queries come from the pseudo-query generator (the same one
that seeds Q2E and XR-Linear), a third of them misspelled and some cut short, so the models see
the spearfishing and typo traffic they will serve. For each query every retriever runs once:

* ranker: candidates are featurized through the serving code (SearchPipeline.featurize) for a
  random action's arms, so the feature distribution matches serving (arms that did not run are
  NaN). Labels are graded: 3 for the source track, 1 for tracks that match the query's template
  (same artist for an artist query, same genre for a genre query, same title for a title query).
* bandit: every action's reward is known (full information), computed by the one reward function
  of the live system (logged.rewards.action_reward) as if the user had played the source track:
  1 if the action's retrievers found it within their budget, else 0 — the same scale a real play
  earns. VW learns all of them, minus the cost term.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from tqdm import tqdm

from bandit.actions import Action
from logged.rewards import subset_rewards, wanted_events
from retrievers.base import Candidate
from retrievers.pseudo_queries import PseudoQuery, generate_all
from retrievers.text import normalize, strip_version
from services.catalog import Catalog, Track
from services.offline.typos import add_typos, partial
from services.serving.pipeline import SearchPipeline

log = logging.getLogger("ltrr.coldstart")

# How often each template is drawn: spearfishing dominates real music search traffic.
TEMPLATE_MIX = {"artist_title": 0.25, "title": 0.2, "title_artist": 0.08, "artist": 0.15, "album": 0.07,
                "artist_genre": 0.07, "genre": 0.1, "mood_genre": 0.08}


@dataclass
class TrainingQuery:
    text: str
    source: str  # track id the query was generated from
    template: str
    variant: str  # clean | typo | partial


def sample_queries(catalog: Catalog, n: int, seed: int = 0) -> list[TrainingQuery]:
    rng = random.Random(seed)
    by_template: dict[str, list[PseudoQuery]] = defaultdict(list)
    for pq in generate_all(catalog.documents()):
        by_template[pq.template].append(pq)
    templates = [t for t in TEMPLATE_MIX if by_template[t]]
    weights = [TEMPLATE_MIX[t] for t in templates]
    out = []
    for _ in range(n):
        template = rng.choices(templates, weights)[0]
        pool = by_template[template]
        # Popular tracks are searched more: accept by popularity so the sample looks like traffic.
        while True:
            pq = rng.choice(pool)
            t = catalog.by_id[pq.doc_id]
            if rng.random() < 0.2 + 0.8 * t.popularity / 100.0:
                break
        u = rng.random()
        if u < 0.3:
            text, variant = add_typos(pq.query, rng), "typo"
        elif u < 0.4 and template in ("title", "artist_title", "artist", "album"):
            text, variant = partial(pq.query, rng), "partial"
        else:
            text, variant = pq.query, "clean"
        out.append(TrainingQuery(text, pq.doc_id, template, variant))
    return out


def grade(q: TrainingQuery, track: Track, source: Track) -> int:
    if track.track_id == q.source:
        return 3
    if q.template in ("artist", "artist_genre") and normalize(track.artist) == normalize(source.artist):
        return 1
    if q.template in ("genre", "mood_genre") and set(track.genres + track.subgenres) & set(
            source.genres + source.subgenres) and q.text.split()[-1] in normalize(" ".join(track.genres +
                                                                                         track.subgenres)):
        return 1
    if q.template in ("title", "title_artist", "artist_title") and \
            normalize(strip_version(track.title)) == normalize(strip_version(source.title)):
        return 1 if normalize(track.artist) != normalize(source.artist) else 2
    return 0


@dataclass
class _Ran:
    """Every retriever's candidates for one training query (the reward's view of a search)."""

    candidates: dict[str, list[str]]
    failed: tuple[str, ...] = ()


@dataclass
class ColdStartData:
    x: np.ndarray
    y: np.ndarray
    group: np.ndarray
    contexts: list[dict[str, float]]
    rewards: list[list[float]]
    latencies: dict[str, float]
    recall_by_action: dict[str, float]


def collect(pipeline: SearchPipeline, queries: Sequence[TrainingQuery], *, seed: int = 0,
            progress: bool = True) -> ColdStartData:
    rng = random.Random(seed)
    catalog = pipeline.parts.catalog
    actions: list[Action] = pipeline.actions
    arms_all = tuple(pipeline.parts.retrievers)
    budget = max(a.budget for a in actions)
    xs, ys, groups, contexts, rewards = [], [], [], [], []
    reward_cfg = pipeline.settings.reward
    lat: dict[str, list[float]] = defaultdict(list)
    hits = np.zeros(len(actions))
    for q in tqdm(queries, desc="cold-start queries", unit="q", disable=not progress):
        qnorm = normalize(q.text)
        if not qnorm:
            continue
        results: dict[str, list[Candidate]] = {}
        wanted = wanted_events([q.source])
        for arm in arms_all:
            t = time.perf_counter()
            try:
                results[arm] = pipeline.parts.retrievers[arm].retrieve(q.text, budget)
            except Exception as exc:  # a broken retriever must not stop training; it is logged
                log.warning("retriever %s failed on %r: %r", arm, q.text, exc)
                results[arm] = []
            lat[arm].append((time.perf_counter() - t) * 1000)
        _, ctx = pipeline.context(q.text, qnorm)
        ran = _Ran({arm: [c.track_id for c in cands] for arm, cands in results.items()})
        row_rewards = subset_rewards(ran, actions, wanted, reward_cfg)
        hits += np.array(row_rewards) > 0
        contexts.append(ctx)
        rewards.append(row_rewards)
        # Ranker rows: the union of a random action's arms, as serving would have built it.
        a = actions[rng.randrange(len(actions))]
        union: dict[str, None] = {}
        for arm in a.arms:
            for c in results.get(arm, [])[: a.budget]:
                union.setdefault(c.track_id)
        ids, x = pipeline.featurize(qnorm, q.text, list(union), results, None, a.arms)
        if not ids:
            continue
        source = catalog.by_id[q.source]
        y = np.array([grade(q, catalog.by_id[tid], source) for tid in ids])
        if y.max() == 0:
            continue  # nothing relevant retrieved: no ranking signal in this group
        xs.append(x)
        ys.append(y)
        groups.append(len(ids))
    n = max(1, len(contexts))
    return ColdStartData(
        x=np.vstack(xs) if xs else np.zeros((0, pipeline.registry.dim), dtype=np.float32),
        y=np.concatenate(ys) if ys else np.zeros(0), group=np.array(groups, dtype=int), contexts=contexts,
        rewards=rewards, latencies={a: float(np.median(v)) for a, v in lat.items()},
        recall_by_action={a.key: float(h / n) for a, h in zip(actions, hits, strict=True)})


def arm_prices(pipeline: SearchPipeline, queries: Sequence[TrainingQuery], n: int = 300,
               quantile: float = 25.0) -> dict[str, float]:
    """What running each arm costs a search, in milliseconds: its retrieval time plus the
    ranking of the candidates it adds, i.e. the ranker's featurize + score time per candidate
    (over the union of every arm) times the arm's mean number of candidates, over `n` of the
    queries. The rank stage costs about as much as retrieval (BENCHMARKS.md), so retrieval time
    alone would make a slow arm look several times dearer than it is end to end. Times are the
    `quantile` (25th percentile), not the median: on a busy machine the median of the encoder-heavy
    dense arm was inflated 2.5x against the others, and the prices should describe the arms, not
    the load during the build."""
    arms = tuple(pipeline.parts.retrievers)
    budget = max(a.budget for a in pipeline.actions)
    per_candidate: list[float] = []
    retrieve_ms: dict[str, list[float]] = defaultdict(list)
    counts: dict[str, list[int]] = defaultdict(list)
    for q in queries[:n]:
        qnorm = normalize(q.text)
        if not qnorm:
            continue
        results = {}
        for a in arms:
            t = time.perf_counter()
            results[a] = pipeline.parts.retrievers[a].retrieve(q.text, budget)
            retrieve_ms[a].append((time.perf_counter() - t) * 1000)
            counts[a].append(len(results[a]))
        union = list(dict.fromkeys(c.track_id for a in arms for c in results[a]))
        t = time.perf_counter()
        ids, x = pipeline.featurize(qnorm, q.text, union, results, None, arms)
        pipeline.score(x, ids, results, arms)
        if ids:
            per_candidate.append((time.perf_counter() - t) * 1000 / len(ids))
    rank_ms = float(np.percentile(per_candidate, quantile)) if per_candidate else 0.0
    return {a: float(np.percentile(retrieve_ms[a], quantile)) + rank_ms * float(np.mean(counts[a]))
            for a in arms if retrieve_ms[a]}


def train_bandit(policy: object, data: ColdStartData, actions: Sequence[Action], *, epochs: int = 2,
                 seed: int = 0, progress: bool = True, arm_ms: Mapping[str, float] | None = None) -> None:
    """Full-information updates: VW sees every action's reward for each training query. In
    "arm_ms" cost mode the policy is first given a price table (bandit.policy.CostModel): `arm_ms`
    (arm_prices: retrieval + ranking its candidates) or else the arms' median retrieval times
    measured by collect. It
    keeps the table in every later checkpoint, so online learning prices actions alike."""
    order = list(range(len(data.contexts)))
    rng = random.Random(seed)
    config = getattr(policy, "config", None)
    if config is not None and config.cost.latency_mode == "arm_ms":
        prices = arm_ms if arm_ms is not None else data.latencies
        policy.config = dataclasses.replace(config, cost=config.cost.with_arm_ms(prices))  # type: ignore[attr-defined]
    lat = [sum(data.latencies.get(arm, 0.0) for arm in a.arms) for a in actions]
    for _ in range(epochs):
        rng.shuffle(order)
        for i in tqdm(order, desc="bandit cold start", unit="q", disable=not progress):
            policy.learn_full_information(data.contexts[i], list(actions), data.rewards[i], lat)  # type: ignore[attr-defined]
