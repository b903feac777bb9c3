"""Cold-start training for the ranker and the bandit, before any user has clicked.

Self-supervision from the catalog: queries come from the pseudo-query generator (the same one
that seeds Q2E and XR-Linear), a third of them misspelled and some cut short, so the models see
the spearfishing and typo traffic they will serve, and about a third are topics built from a
track's tags, mood, decade or artist ("dance pop hits", "chill edm", "80s rock", "best of queen").
For each query every retriever runs once:

* ranker: candidates are featurized through the serving code (SearchPipeline.featurize) for a
  random action's arms, so the feature distribution matches serving (arms that did not run are
  NaN). Labels are graded. A spearfish query: 3 for the source track, 1-2 for other versions of
  its title, 1 for the artist's other tracks on an artist query. A topic query names no single
  track: 2 for tracks that fit all it names (tag and mood, tag and decade, the artist), 1 for
  the tag alone. Half the topic groups hide their query-understanding features, so the ranker
  also learns to rank topics it cannot parse from what the retrievers' top results share.
* bandit: every action's reward is known (full information), computed by the one reward function
  of the live system (logged.rewards.action_reward) as if the user had played one track: the
  source of a spearfish query, one fitting track from the retrievers' top 10 for a topic query.
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
from retrievers.pseudo_queries import MOOD_WORDS, PseudoQuery, generate_all
from retrievers.text import normalize, strip_version
from services.catalog import Catalog, Track
from services.offline.typos import add_typos, typed_prefix
from services.serving.pipeline import SearchPipeline

log = logging.getLogger("ltrr.coldstart")

# How often each template is drawn: spearfishing dominates real music search traffic, and about a
# third of queries are topics (a genre, a mood, an era, an artist's catalogue).
TEMPLATE_MIX = {"artist_title": 0.22, "title": 0.18, "title_artist": 0.06, "artist": 0.12, "album": 0.06,
                "artist_genre": 0.06, "genre": 0.1, "mood_genre": 0.08, "decade_genre": 0.06,
                "artist_topic": 0.06}
# Templates that ask for many tracks, not one: graded by what the query names, not by its source.
TOPIC_TEMPLATES = frozenset({"genre", "mood_genre", "decade_genre", "artist_topic"})
# Words playlist names wrap around a topic ("dance pop hits", "best of queen").
TOPIC_SUFFIXES = ("", "", "hits", "mix", "playlist", "songs", "classics", "radio", "essentials")
ARTIST_TOPIC = ("best of {}", "this is {}", "{} mix", "{} radio", "{} essentials", "{} greatest hits")
# Share of topic queries whose query-understanding features are hidden in training, so the ranker
# also learns to rank topics that query understanding cannot read (from the pseudo-relevance
# profile: what the retrievers' top results share).
INTENT_DROPOUT = 0.5
MEMORY_DROPOUT = 0.5  # share of groups whose click-memory feature is hidden (see collect)


@dataclass
class TrainingQuery:
    text: str
    source: str  # track id the query was generated from
    template: str
    variant: str  # clean | typo | partial
    tag: str | None = None  # the genre/subgenre a topic query names (normalized)
    mood: str | None = None  # the mood word of a mood_genre query
    years: tuple[int, int] | None = None  # the decade of a decade_genre query
    artist: str | None = None  # the artist of an artist_topic query (normalized)


def sample_queries(catalog: Catalog, n: int, seed: int = 0) -> list[TrainingQuery]:
    rng = random.Random(seed)
    by_template: dict[str, list[PseudoQuery]] = defaultdict(list)
    for pq in generate_all(catalog.documents()):
        by_template[pq.template].append(pq)
    # decade_genre and artist_topic are built from any generated query's source track.
    by_template["decade_genre"] = by_template["artist_topic"] = by_template["artist_title"]
    titles = {normalize(strip_version(t.title)) for t in catalog.tracks}
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
        q = _topic_query(template, pq, t, rng) if template in TOPIC_TEMPLATES else TrainingQuery(
            pq.query, pq.doc_id, template, "clean")
        if q is None:
            continue
        u = rng.random()
        if u < 0.3:
            q.text, q.variant = add_typos(q.text, rng), "typo"
        elif u < 0.45 and template in ("title", "artist_title", "artist", "album"):
            cut = typed_prefix(q.text, rng)
            if normalize(cut) in titles and normalize(cut) != normalize(q.text):
                continue  # the prefix is another song's whole title: that song is a right answer too
            q.text, q.variant = cut, "partial"
        out.append(q)
    return out


def _topic_query(template: str, pq: PseudoQuery, t: Track, rng: random.Random) -> TrainingQuery | None:
    tags = [normalize(g) for g in t.genres + t.subgenres if normalize(g)]
    suffix = rng.choice(TOPIC_SUFFIXES)
    if template == "artist_topic":
        artist = normalize(t.artist)
        return TrainingQuery(rng.choice(ARTIST_TOPIC).format(artist), t.track_id, template, "clean",
                             artist=artist) if artist else None
    if template == "decade_genre":
        if not tags or not t.year:
            return None
        decade = t.year // 10 * 10
        word = f"{decade % 100:02d}s" if rng.random() < 0.6 else f"{decade}s"
        return TrainingQuery(f"{word} {rng.choice(tags)} {suffix}".strip(), t.track_id, template, "clean",
                             tag=rng.choice(tags), years=(decade, decade + 9))
    words = pq.query.split()
    if template == "mood_genre" and words and words[0] in MOOD_WORDS:
        return TrainingQuery(f"{pq.query} {suffix}".strip(), t.track_id, template, "clean",
                             tag=" ".join(words[1:]), mood=words[0])
    if template == "genre":
        return TrainingQuery(f"{pq.query} {suffix}".strip(), t.track_id, template, "clean", tag=pq.query)
    return None


def grade(q: TrainingQuery, track: Track, source: Track) -> int:
    if q.template in TOPIC_TEMPLATES:
        return _topic_grade(q, track)
    if track.track_id == q.source:
        return 3
    if q.template in ("artist", "artist_genre") and normalize(track.artist) == normalize(source.artist):
        return 1
    if q.template in ("title", "title_artist", "artist_title") and \
            normalize(strip_version(track.title)) == normalize(strip_version(source.title)):
        return 1 if normalize(track.artist) != normalize(source.artist) else 2
    return 0


def _topic_grade(q: TrainingQuery, track: Track) -> int:
    """A topic query wants every track that fits what it names, not the one it was built from:
    2 when the track fits all of it (tag and mood, tag and decade), 1 for the tag alone."""
    if q.artist is not None:
        return 2 if normalize(track.artist) == q.artist else 0
    if q.tag is None or q.tag not in {normalize(g) for g in track.genres + track.subgenres}:
        return 0
    if q.mood is not None:
        feat, op, thr = MOOD_WORDS[q.mood]
        v = getattr(track, feat)
        return 2 if (v < thr if op == "<" else v > thr) else 1
    if q.years is not None:
        return 2 if track.year is not None and q.years[0] <= track.year <= q.years[1] else 1
    return 1


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
        for arm in arms_all:
            t = time.perf_counter()
            try:
                results[arm] = pipeline.parts.retrievers[arm].retrieve(q.text, budget)
            except Exception as exc:  # a broken retriever must not stop training; it is logged
                log.warning("retriever %s failed on %r: %r", arm, q.text, exc)
                results[arm] = []
            lat[arm].append((time.perf_counter() - t) * 1000)
        _, ctx = pipeline.context(q.text, qnorm)
        wanted = wanted_events([_wanted_track(q, results, catalog, rng)])
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
        if q.template in TOPIC_TEMPLATES and rng.random() < INTENT_DROPOUT:
            x[:, pipeline.registry.intent_columns] = np.nan
        # The memory's click-through rate is, before any click, the seeded prior of the very
        # pseudo-queries these training queries are drawn from, so it names the source track more
        # surely than clicks later will. Hidden in half the groups: the ranker learns that what
        # users played ranks high without learning to rank by it alone.
        if rng.random() < MEMORY_DROPOUT:
            x[:, pipeline.registry.index["q2e_ctr"]] = np.nan
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


def _wanted_track(q: TrainingQuery, results: dict[str, list[Candidate]], catalog: Catalog,
                  rng: random.Random) -> str:
    """The track the simulated searcher plays, whose finding earns an action its reward (the one
    reward of logged.rewards, as a real play would). A spearfish query wants its source track. A
    topic query wants any fitting track; the searcher plays one of those the retrievers put in
    their top 10 (weighted by grade), so an arm that ranks fitting tracks high is more likely to
    hold it; the source track when none did."""
    if q.template not in TOPIC_TEMPLATES:
        return q.source
    source = catalog.by_id[q.source]
    seen = dict.fromkeys(c.track_id for cands in results.values() for c in cands[:10])
    graded = [(tid, grade(q, catalog.by_id[tid], source)) for tid in seen if tid in catalog.by_id]
    fitting = [(tid, g) for tid, g in graded if g > 0]
    if not fitting:
        return q.source
    return rng.choices([tid for tid, _ in fitting], [g for _, g in fitting])[0]


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
