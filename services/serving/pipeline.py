"""One search, end to end: context -> bandit action -> chosen retrievers in parallel -> union ->
LightGBM ranking -> decision record. The only module that knows all the parts.

Why one module of this size: a search's stages share its state (context, action, union,
features, pins, the record) and are read in order; the pieces with their own policy live apart
(retriever deadlines in arm_budgets, Redis state in decision_store, version collapsing in
recordings, features in ranker.features).
"""

from __future__ import annotations

import logging
import random
import time
import uuid
from collections.abc import Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import redis

from bandit.actions import Action, enumerate_actions
from bandit.context import build_context
from bandit.policy import Decision, FixedPolicy
from logged.records import ActionRecord, DecisionRecord
from ranker.features import INTENT_WIDTH, Candidates, FeatureRegistry, QueryInput
from ranker.profile import DEPTH as PROFILE_DEPTH
from ranker.profile import build_profile
from ranker.tracks import TrackRecord, TrackTable
from retrievers.base import Candidate, Retriever
from retrievers.q2e import Q2EStats, Q2EStore
from retrievers.text import normalize
from services import metrics
from services.catalog import AUDIO_FEATURES, Catalog, Track, vocabulary
from services.config import Settings
from services.decision_store import DecisionStore, Ranked
from services.jsonl_log import JsonlWriter
from services.keys import Keys
from services.models import ModelHolder
from services.serving.arm_budgets import ArmBudgets
from services.serving.decision_writer import DecisionWriter, SearchActivity
from services.serving.entities import HIT_TYPES, EntityIndex, EntityPlan, EntityPlanner, PlacedEntity
from services.serving.filters import CatalogColumns, Facet, SearchFilters
from services.serving.recordings import base_title, collapse_ranked, primary_artist, recording_key
from services.serving.retrieval_cache import Key, RetrievalCache

log = logging.getLogger(__name__)
MEMORY_CANDIDATES = 50  # remembered tracks added to the ranked union, at most
# A filtered search asks each retriever for this many times its budget (at most FILTER_FETCH_MAX)
# and keeps the allowed tracks; an exact scan of the allowed tracks fills a page that is still short.
FILTER_OVERFETCH = 5
FILTER_FETCH_MAX = 500
FILTER_SCAN = "filter"  # the scan's name in the record's candidates and in a hit's `retrievers`


class QueryCosines(Protocol):
    """What ranking needs of the dense arm (retrievers.dense.DenseRetriever): a query's vector and
    its cosine with given tracks, NaN where unknown."""

    def encode_query(self, query: str) -> np.ndarray | None: ...

    def similarity(self, query_vec: np.ndarray | None, track_ids: Sequence[str]) -> np.ndarray: ...


class QueryIntent(Protocol):
    """What ranking needs of query understanding (retrievers.structured.StructuredRetriever):
    per catalog track, agreement with the genres, years and mood the query names."""

    track_ids: list[str]

    def intent(self, query: str, rows: np.ndarray) -> np.ndarray | None: ...


@dataclass
class SearchOutcome:
    record: DecisionRecord
    scores: list[float]
    found_by: dict[str, list[str]]  # track id -> retriever names
    timings_ms: dict[str, float]
    decision: Decision
    features: np.ndarray | None = None
    context: dict[str, float] = field(default_factory=dict)
    versions: dict[str, list[str]] = field(default_factory=dict)  # served id -> other versions of its recording
    deadlines_ms: dict[str, float] = field(default_factory=dict)  # how long each run retriever was given
    facets: dict[str, dict[str, int]] | None = None  # value counts over the ranked candidates
    total: int = 0  # results later pages can reach (0: nothing kept, the search logged nothing)
    entities: list[PlacedEntity] = field(default_factory=list)  # artist / album hits of the page
    positions: list[int] = field(default_factory=list)  # absolute position of each served track


@dataclass
class Components:
    """What a pipeline is assembled from (built by services.serving.runtime from artifacts on disk)."""

    catalog: Catalog
    retrievers: dict[str, Retriever]
    policy: ModelHolder  # current bandit policy (hot-reloadable)
    ranker: ModelHolder  # current LightGBM model, or None -> reciprocal-rank fusion fallback
    q2e_store: Q2EStore | None = None  # stats() for context, learned() for the memory, scores() for features
    dense: QueryCosines | None = None  # retrievers.dense.DenseRetriever: query vector + cosine for candidates
    intent: QueryIntent | None = None  # retrievers.structured.StructuredRetriever: what the query names
    entities: EntityIndex | None = None  # artists and albums as results (services.serving.entities)


class SearchPipeline:
    def __init__(self, settings: Settings, parts: Components, client: redis.Redis | None, keys: Keys,
                 decision_log: JsonlWriter | None, activity: SearchActivity | None = None):
        self.settings = settings
        self.parts = parts
        self.redis = client
        self.keys = keys
        self.decision_log = decision_log
        self.decisions = DecisionStore.from_settings(client, keys, settings) if client is not None else None
        names = [n for n in settings.retrievers if n in parts.retrievers]
        self.actions: list[Action] = enumerate_actions(names, settings.max_arms, settings.budgets,
                                                       include_all=settings.include_all_action)
        self.action_records = [ActionRecord(arms=a.arms, budget=a.budget) for a in self.actions]
        self.registry = FeatureRegistry(tuple(settings.retrievers))
        # Normalize and tokenize every track once at start-up, not per search: with 300 candidates
        # per query, per-candidate text work would dominate the ranking stage.
        self.table = TrackTable.build(_track_record(t) for t in parts.catalog.tracks)
        self.vocab = vocabulary(parts.catalog)
        self.pool = ThreadPoolExecutor(max_workers=16, thread_name_prefix="retriever")
        self.default_policy = FixedPolicy([a for a in settings.default_arms if a in names] or names[:1])
        self.fallback_arm = "lexical" if "lexical" in names else names[0]
        self.budgets = ArmBudgets(settings.retriever_timeout_ms, factor=settings.retriever_deadline_factor,
                                  floor_ms=settings.retriever_deadline_floor_ms)
        self._last_timeout_log: dict[str, float] = {}
        self.activity = activity
        self._rng = random.Random(0)
        self.recording_of = {t.track_id: recording_key(t.title, t.artist) for t in parts.catalog.tracks}
        self.popularity_of = {t.track_id: t.popularity / 100.0 for t in parts.catalog.tracks}
        self.columns = CatalogColumns(parts.catalog.tracks)
        self.retrieval_cache = RetrievalCache(settings.retrieval_cache_entries)
        self.writer = DecisionWriter(client, self.decisions, decision_log, activity)
        self.entities = EntityPlanner(parts.entities) if parts.entities is not None else None

    # ---------------------------------------------------------------------------------------
    def search(self, query: str, limit: int = 10, *, user_id: str | None = None, session_id: str | None = None,
               locale: str | None = None, device: str | None = None, ts: float | None = None,
               analytics: bool = True, collapse_versions: bool = True, shed: bool = False,
               filters: SearchFilters | None = None, facets: Sequence[Facet] = (),
               types: Collection[str] = HIT_TYPES) -> SearchOutcome:
        """One search. `analytics=False` (monitoring probes, evaluations) serves the same results
        but logs nothing: the search cannot receive feedback and teaches no model.
        `collapse_versions` serves one hit per recording (the best-ranked version; the others are
        listed in `SearchOutcome.versions`). `shed` (services.serving.admission: the queue is
        long) runs only the cheapest good retriever instead of the bandit's choice. `filters`
        narrow every candidate list to the tracks they allow (services.serving.filters); `facets`
        are counted over the ranked candidates. `types` are the kinds of hit served (track, artist,
        album): artists and albums join the tracks as services.serving.entities plans."""
        t0 = time.perf_counter()
        mask = self.columns.mask(filters) if filters is not None and not filters.empty else None
        timings: dict[str, float] = {}
        now = time.time()
        ts = ts if ts is not None else now
        qnorm = normalize(query)
        search_id = uuid.uuid4().hex

        affinity, context, q2e_known = self._context(query, qnorm, user_id=user_id, ts=ts, locale=locale,
                                                     device=device)
        remembered, memory = self._memory(qnorm, now)
        if mask is not None:
            remembered, memory = self._allowed(remembered, mask), self._allowed(memory, mask)
            # The bandit sees a filter: a narrow one may favour arms that search deep (or the
            # scan), which it can learn only if the context says so. Unfiltered searches carry
            # neither key, so their contexts (and the cold-start models) are unchanged.
            context = {**context, "filtered": 1.0, "filter_share": round(float(mask.mean()), 4)}
        timings["context"] = _ms(t0)

        t = time.perf_counter()
        policy = self.parts.policy.current()
        shed_policy = self._shed_policy() if shed else None
        if shed_policy is not None:
            # Logged as what ran, with propensity 1: a fixed-policy search the bandit and the
            # replay estimators read like any other, not the bandit's choice left unrun.
            decision = shed_policy.decide(context, self.actions)
            run_arms, budget = decision.action.arms, decision.action.budget
        elif self.settings.shadow:
            # Users see the default policy's result; every retriever runs so the bandit can learn
            # the reward of every subset (full information) without changing what is served.
            decision = self.default_policy.decide(context, self.actions)
            run_arms = tuple(self.parts.retrievers)
            budget = max(a.budget for a in self.actions)
        else:
            decision = policy.decide(context, self.actions)
            run_arms, budget = decision.action.arms, decision.action.budget
        timings["bandit"] = _ms(t)
        metrics.ARM_CHOICES.labels(action=decision.action.key).inc()

        t = time.perf_counter()
        fetch = budget if mask is None else min(budget * FILTER_OVERFETCH, max(FILTER_FETCH_MAX, budget))
        results, failed, per_ms, deadlines = self._retrieve(query, run_arms, fetch)
        if mask is not None:
            results = {a: self._filtered(cands, mask, budget) for a, cands in results.items()}
        served_arms = decision.action.arms
        if mask is None and not self._enough(results, served_arms, limit, collapse_versions):
            # The chosen retrievers failed, timed out or found too little for the page (Q2E has no
            # memory of a new query, XR knows none of its n-grams, "workout" is in four titles): the
            # other arms fill it, cheapest good one first (services.serving.arm_budgets), rather than
            # a short or empty page (a filtered search is filled by the exact scan below instead).
            # They run here, past any deadline: they are the last resort, and on a saturated machine
            # (every arm queued past its deadline) a late answer beats an empty page. Their
            # candidates are logged under their own names; a chosen arm that failed stays in
            # `failed`, and the bandit is rewarded only for items its chosen arms found, so what a
            # filler found earns the choice nothing.
            for filler in self.budgets.by_cost(self.parts.retrievers, self.fallback_arm):
                if filler in served_arms and filler not in failed:
                    continue
                if filler not in results or filler in failed:
                    more = self._retrieve_now(query, filler, fetch)
                    if more is None:
                        continue
                    cands, per_ms[filler] = more
                    results[filler] = self._filtered(cands, mask, budget) if mask is not None else cands
                served_arms = tuple(dict.fromkeys((*served_arms, filler)))
                if self._enough(results, served_arms, limit, collapse_versions):
                    break
        found = {c.track_id for a in served_arms for c in results.get(a, ())}
        if mask is not None and len({self.recording_of[t] for t in found} if collapse_versions else found) < limit:
            # Too few allowed tracks among what the retrievers found: add the best allowed ones by
            # an exact scan, so a filter that matches tracks never yields a short or empty page.
            results[FILTER_SCAN] = self._filter_scan(query, mask, budget)
            served_arms = (*served_arms, FILTER_SCAN)
        if failed:
            metrics.SEARCHES_DEGRADED.inc()
        timings["retrieve"] = _ms(t)

        t = time.perf_counter()
        union = _union({a: results[a] for a in served_arms if a in results})
        arms_of = dict(union)
        for tid in remembered:
            arms_of.setdefault(tid, set()).add("memory")
        union_ids = [tid for tid, _ in union]
        # Remembered tracks are ranked even when the chosen retrievers missed them.
        head = set(union_ids[: self.settings.rerank_depth])
        union_ids += [tid for tid in remembered if tid not in head]
        # When the memory's own list ran unfiltered and came back shorter than asked, it holds every
        # track the memory scores for this query: the features read it instead of asking again.
        memory_list = results.get("q2e") if mask is None and "q2e" not in failed else None
        complete = memory_list is not None and len(memory_list) < fetch
        ids, feats = self.featurize(qnorm, query, union_ids, results, affinity, served_arms,
                                    keep=set(remembered), q2e_known=q2e_known,
                                    q2e_all={c.track_id: c.score for c in memory_list} if complete else None)
        scores, order = self.score(feats, ids, results, served_arms)
        order = _pin(order, ids, memory)
        versions: dict[str, list[str]] = {}
        keep = max(limit, self.settings.page_depth)  # ranked results kept for later pages
        if collapse_versions:
            # The catalog has one row per release: a page shows each recording once, at the rank of
            # its best-ranked version (the order given, pins included).
            groups = collapse_ranked([ids[i] for i in order], self.recording_of.__getitem__)
            pos = {tid: i for i, tid in enumerate(ids)}
            versions = {rep: others for rep, others in groups[:keep] if others}
            order = [pos[rep] for rep, _ in groups]  # other versions are never served beside their best
        facet_counts = self.columns.facets(ids, facets) if facets else None
        timings["rank"] = _ms(t)
        t = time.perf_counter()
        plan = self._entity_plan(qnorm, types, ids, scores, order[:keep], keep, mask)
        n_tracks = plan.tracks_within(limit)  # the page's track slots, beside its entity hits
        if self.settings.memory_trial_slots and remembered:
            order, trials = _trial(order, ids, remembered, set(memory), n_tracks, self.settings.memory_trial_slots)
            if trials:
                metrics.MEMORY_TRIALS.inc(trials)
        top = order[:n_tracks]
        served = [ids[i] for i in top]
        pinned = [tid for tid in served[: len(memory)] if tid in memory]
        if pinned:
            metrics.MEMORY_PINS.inc(len(pinned))
        found_by = {tid: sorted(arms_of[tid]) for tid in served}
        # Features of a uniform sample of the unserved candidates too: the ranker's retraining
        # needs negatives that serving ranked low, not only the ten it showed.
        rest = order[len(top):]
        sampled = sorted(self._rng.sample(rest, min(self.settings.log_unserved, len(rest)))) if analytics else []

        feature_rows = feats[top] if feats is not None else None
        record = DecisionRecord(
            search_id=search_id, ts=ts, query=query, query_norm=qnorm, user_id=user_id, session_id=session_id,
            locale=locale, device=device, context=context,
            policy=(shed_policy.name if shed_policy is not None
                    else f"shadow({policy_name(policy)})" if self.settings.shadow else policy_name(policy)),
            bandit_version=None if shed_policy is not None else getattr(policy, "version", None),
            ranker_version=self.parts.ranker.version,
            actions=self.action_records, probabilities=[float(p) for p in decision.probabilities],
            chosen=decision.chosen, propensity=float(decision.propensity), shadow=self.settings.shadow,
            candidates={a: [c.track_id for c in results[a]] for a in results}, failed=failed,
            retriever_ms=per_ms, served=served, feature_names=self.registry.names,
            features=_rows(feature_rows) if feature_rows is not None else [], memory=pinned,
            sampled=[ids[i] for i in sampled], sampled_features=_rows(feats[sampled]) if sampled else [],
            filters=filters.model_dump(exclude_none=True) if mask is not None and filters is not None else None,
            entities=[p.served() for p in plan.within(limit)], types=[k for k in HIT_TYPES if k in types],
        )
        timings["record"] = _ms(t)
        t = time.perf_counter()
        if analytics:
            # Later pages are cut from this ranking (services.serving.routes_pages), not from a new search.
            depth = order[:keep]
            ranked = Ranked(query=query, ids=[ids[i] for i in depth], scores=[float(scores[i]) for i in depth],
                            found_by=[sorted(arms_of[ids[i]]) for i in depth],
                            versions={ids[i]: versions[ids[i]] for i in depth if ids[i] in versions})
            ranked = plan.ranked(ranked, keep)
            self._log_decision(record, now, ranked)
            total = len(ranked.ids) if self.decisions is not None else 0
        else:
            total = 0
        timings["log"] = _ms(t)
        timings["total"] = _ms(t0)
        if analytics:
            # Queued after the timings are complete, so the activity counters see log and total too.
            self.writer.submit(record, dict(timings), now)
        for stage, ms in timings.items():
            metrics.STAGE_SECONDS.labels(stage=stage).observe(ms / 1000.0)
        return SearchOutcome(record=record, scores=[float(scores[i]) for i in top], found_by=found_by,
                             timings_ms=timings, decision=decision, features=feature_rows, context=context,
                             versions=versions, deadlines_ms=deadlines, facets=facet_counts, total=total,
                             entities=plan.within(limit), positions=plan.track_positions(len(top)))

    def _entity_plan(self, qnorm: str, types: Collection[str], ids: list[str], scores: np.ndarray,
                     depth: list[int], keep: int, mask: np.ndarray | None) -> EntityPlan:
        """The artist and album hits of the search, placed among its ranked tracks."""
        if self.entities is None:
            return EntityPlan([], "track" in types)
        allowed = None if mask is None else (lambda tids: self.columns.allowed(mask, tids))
        return self.entities.plan(qnorm, types, [ids[i] for i in depth], [float(scores[i]) for i in depth],
                                  depth=keep, allowed=allowed)

    def _allowed(self, track_ids: list[str], mask: np.ndarray) -> list[str]:
        return [t for t, ok in zip(track_ids, self.columns.allowed(mask, track_ids), strict=True) if ok]

    def _filtered(self, cands: list[Candidate], mask: np.ndarray, k: int) -> list[Candidate]:
        """The allowed candidates, best `k`, ranked 1.. again (rank features then read as usual)."""
        kept = [c for c, ok in zip(cands, self.columns.allowed(mask, [c.track_id for c in cands]), strict=True)
                if ok][:k]
        return [Candidate(track_id=c.track_id, score=c.score, rank=r) for r, c in enumerate(kept, start=1)]

    def _filter_scan(self, query: str, mask: np.ndarray, k: int) -> list[Candidate]:
        """The `k` best allowed tracks: by cosine to the query over every allowed track when a dense
        arm exists (an exact filtered vector search), by popularity otherwise."""
        rows = np.flatnonzero(mask)
        if rows.size == 0:
            return []
        ids = [self.columns.ids[r] for r in rows.tolist()]
        score = self.columns.popularity[rows].astype(np.float32) / 100.0
        dense = self.parts.dense
        if dense is not None:
            try:
                sims = np.asarray(dense.similarity(dense.encode_query(query), ids), dtype=np.float32)
                # Popularity only breaks ties and ranks tracks without a vector (cosine NaN).
                score = np.where(np.isnan(sims), score - 2.0, sims + 1e-3 * score)
            except Exception as exc:  # the scan still answers, by popularity
                log.warning("dense scan of a filter failed: %r", exc)
        top = np.argsort(-score, kind="stable")[:k]
        return [Candidate(track_id=ids[i], score=float(score[i]), rank=r) for r, i in enumerate(top.tolist(), start=1)]

    def _shed_policy(self) -> FixedPolicy | None:
        """The cheapest good arm alone, at the smallest budget; None if no action runs it alone."""
        arm = self.budgets.cheapest_good(self.parts.retrievers, self.fallback_arm)
        budget = min((a.budget for a in self.actions if a.arms == (arm,)), default=None)
        if budget is None:
            return None
        fixed = FixedPolicy((arm,), budget)
        fixed.name = f"shed:{arm}"
        return fixed

    def warm_up(self) -> None:
        """First calls pay for lazy loading (ONNX session, tantivy searcher, Lua scripts): make
        them here so the first user search does not time out its retrievers."""
        for name, r in self.parts.retrievers.items():
            try:
                r.retrieve("warm up query", 10)
            except Exception as exc:
                log.warning("warm-up of %s failed: %r", name, exc)

    # ---------------------------------------------------------------------------------------
    def context(self, query: str, qnorm: str, *, user_id: str | None = None, ts: float | None = None,
                locale: str | None = None, device: str | None = None) -> tuple[dict[str, float] | None, dict]:
        """(user genre affinity, bandit context features): the same code for serving and training."""
        affinity, ctx, _ = self._context(query, qnorm, user_id=user_id, ts=ts, locale=locale, device=device)
        return affinity, ctx

    def _context(self, query: str, qnorm: str, *, user_id: str | None, ts: float | None, locale: str | None,
                 device: str | None) -> tuple[dict[str, float] | None, dict, bool]:
        """context() and whether the click memory knows the query at all."""
        affinity, q2e_evidence, known = self._lookup_state(qnorm, user_id)
        ctx = build_context(
            query, tokens=qnorm.split(), vocabulary=self.vocab["all"], artist_words=self.vocab["artist"],
            title_words=self.vocab["title"], genre_words=self.vocab["genre"], q2e_hit=q2e_evidence is not None,
            q2e_evidence=q2e_evidence or 0.0, ts=ts, affinity=affinity, locale=locale, device=device)
        return affinity, ctx, known

    def _lookup_state(self, qnorm: str, user_id: str | None) -> tuple[dict[str, float] | None, float | None, bool]:
        """User genre affinity, Q2E evidence for the bandit's context, and whether the memory
        resolves the query at all. Redis being down costs these features, never the search."""
        affinity = None
        evidence = None
        known = True  # unknown: let featurize ask
        try:
            if user_id and self.redis is not None:
                raw = self.redis.hgetall(self.keys.user_genres(user_id))
                affinity = {k.decode(): float(v) for k, v in raw.items()} or None
            if self.parts.q2e_store is not None:
                stats = self.parts.q2e_store.stats(qnorm)
                evidence = _evidence(stats)
                known = stats.query is not None
        except (redis.RedisError, OSError) as exc:
            metrics.ERRORS.labels(kind="redis_context").inc()
            log.warning("context lookup failed (%s); searching without user/Q2E context", exc)
        return affinity, evidence, known

    def _memory(self, qnorm: str, now: float) -> tuple[list[str], list[str]]:
        """What the click memory knows of this exact query: (every track with more positive events
        than skips — always ranked, even when the chosen retrievers missed it; the ones it is sure
        of (Settings.memory_*), best first — served in the top slots). The bandit decides what to
        retrieve, not whether what users keep playing is shown."""
        store = self.parts.q2e_store
        if store is None or self.settings.memory_slots == 0:
            return [], []
        try:
            learned = store.learned(qnorm, now=now)
        except (redis.RedisError, OSError) as exc:
            log.warning("click memory lookup failed: %r", exc)
            return [], []
        s = self.settings
        by_id = self.parts.catalog.by_id
        known = [m for m in learned if m.positives > m.skips and m.track_id in by_id][:MEMORY_CANDIDATES]
        pins = [m.track_id for m in known
                if m.positives >= s.memory_min_positive and m.posterior >= s.memory_min_posterior][: s.memory_slots]
        return [m.track_id for m in known], pins

    def _retrieve(self, query: str, arms: tuple[str, ...], budget: int
                  ) -> tuple[dict[str, list[Candidate]], list[str], dict[str, float], dict[str, float]]:
        """Runs `arms` in parallel, each with its own deadline (services.serving.arm_budgets): (candidates
        of the arms that answered in time, arms dropped, ms per arm, deadline ms per arm)."""
        started = time.perf_counter()
        results: dict[str, list[Candidate]] = {}
        failed: list[str] = []
        per_ms: dict[str, float] = {}
        cache = self.retrieval_cache
        to_run: dict[str, tuple[Retriever, Key | None]] = {}
        for a in arms:
            retriever = self.parts.retrievers.get(a)
            if retriever is None:
                continue
            # The key names the retriever object that runs (and its version), read once: a hot
            # reload mid-search must not file the old model's answer under the new one.
            key = cache.key(a, retriever, query, budget) if cache.enabled(a) else None
            if key is not None:
                t = time.perf_counter()
                got = cache.get(key)
                if got is not None:
                    # Not observed by the deadlines (they measure the arm's own runtime) and
                    # logged with what it cost this search: almost nothing.
                    results[a] = got
                    per_ms[a] = (time.perf_counter() - t) * 1000
                    metrics.RETRIEVAL_CACHE.labels(retriever=a, outcome="hit").inc()
                    continue
                metrics.RETRIEVAL_CACHE.labels(retriever=a, outcome="miss").inc()
            to_run[a] = (retriever, key)
        futures = {a: self.pool.submit(self._timed, r, query, budget) for a, (r, _) in to_run.items()}
        deadlines = {a: self.budgets.deadline_ms(a) for a in futures}
        # Earliest deadline first: a failing arm drops only itself, a hanging one costs only its
        # own deadline, and an arm done before its turn is taken as it is.
        for arm in sorted(futures, key=deadlines.__getitem__):
            remaining = deadlines[arm] / 1000.0 - (time.perf_counter() - started)
            try:
                cands, ms = futures[arm].result(timeout=max(0.0, remaining))
            except FutureTimeout:
                failed.append(arm)
                per_ms[arm] = (time.perf_counter() - started) * 1000
                self.budgets.observe(arm, per_ms[arm], found=False)
                metrics.RETRIEVER_FAILURES.labels(retriever=arm, reason="timeout").inc()
                self._log_timeout(arm, deadlines[arm])
                continue
            except Exception as exc:
                failed.append(arm)
                metrics.RETRIEVER_FAILURES.labels(retriever=arm, reason="error").inc()
                log.error("retriever %s failed: %r; dropped from the union", arm, exc)
                continue
            results[arm] = cands
            per_ms[arm] = ms
            key = to_run[arm][1]
            if key is not None:
                cache.put(key, cands)
            self.budgets.observe(arm, ms, found=bool(cands))
            metrics.RETRIEVER_SECONDS.labels(retriever=arm).observe(ms / 1000.0)
        for arm, ms in deadlines.items():
            metrics.RETRIEVER_DEADLINE.labels(retriever=arm).set(ms / 1000.0)
        return results, failed, per_ms, deadlines

    def _enough(self, results: Mapping[str, list[Candidate]], arms: Sequence[str], limit: int,
                by_recording: bool) -> bool:
        """Whether `arms` found a page's worth: `limit` tracks, or recordings when versions collapse."""
        seen: set[str] = set()
        of = self.recording_of.get if by_recording else None
        for a in arms:
            for c in results.get(a, ()):
                seen.add(of(c.track_id, c.track_id) if of else c.track_id)
                if len(seen) >= limit:  # usually within the first list's first page: stop there
                    return True
        return False

    def _retrieve_now(self, query: str, arm: str, budget: int) -> tuple[list[Candidate], float] | None:
        """One arm in this thread, without a deadline (through the retrieval cache, as the chosen
        arms: a query the chosen arms cannot fill keeps needing its filler); None if it fails."""
        retriever = self.parts.retrievers[arm]
        cache = self.retrieval_cache
        key = cache.key(arm, retriever, query, budget) if cache.enabled(arm) else None
        if key is not None and (got := cache.get(key)) is not None:
            metrics.RETRIEVAL_CACHE.labels(retriever=arm, outcome="hit").inc()
            return got, 0.0
        try:
            cands, ms = self._timed(retriever, query, budget)
        except Exception as exc:
            metrics.RETRIEVER_FAILURES.labels(retriever=arm, reason="error").inc()
            log.error("fallback retriever %s failed: %r", arm, exc)
            return None
        if key is not None:
            metrics.RETRIEVAL_CACHE.labels(retriever=arm, outcome="miss").inc()
            cache.put(key, cands)
        return cands, ms

    def _log_timeout(self, arm: str, deadline_ms: float) -> None:
        """One line per arm per 10 s: under overload every search could time out, and the
        counters (not the log) carry the rate."""
        now = time.monotonic()
        if now - self._last_timeout_log.get(arm, -1e9) >= 10.0:
            self._last_timeout_log[arm] = now
            log.warning("retriever %s missed its %.0f ms deadline; dropped from the union "
                        "(ltrr_retriever_failures_total counts every one)", arm, deadline_ms)

    @staticmethod
    def _timed(retriever: Retriever, query: str, k: int) -> tuple[list[Candidate], float]:
        t = time.perf_counter()
        out = retriever.retrieve(query, k)
        return out, (time.perf_counter() - t) * 1000

    def featurize(self, qnorm: str, query: str, union_ids: list[str], results: dict[str, list[Candidate]],
                  affinity: dict[str, float] | None, served_arms: tuple[str, ...],
                  keep: set[str] | None = None, q2e_known: bool = True,
                  q2e_all: Mapping[str, float] | None = None) -> tuple[list[str], np.ndarray]:
        """Ranker feature rows for the union (its first rerank_depth, plus the ids in `keep`), in
        registry order; only served arms' scores count, so training (which calls this too) sees
        what serving sees. Ids unknown to the catalog are dropped (e.g. a model trained on an
        older catalog). `q2e_known=False` (the memory does not resolve the query, as for most
        queries of a new deployment) skips the memory's score lookup, whose answer would be empty:
        a 200-id script call cost ~3 ms of a 25 ms search."""
        depth = self.settings.rerank_depth
        row_of = self.table.row_of
        ids = [tid for i, tid in enumerate(union_ids) if (i < depth or (keep and tid in keep)) and tid in row_of]
        if not ids:
            return [], np.zeros((0, self.registry.dim), dtype=np.float32)
        n = len(ids)
        pos = {tid: i for i, tid in enumerate(ids)}
        scores: dict[str, np.ndarray] = {}
        ranks: dict[str, np.ndarray] = {}
        voters: dict[str, list[int]] = {}
        for arm, cands in results.items():
            if arm not in served_arms:
                continue
            sc = np.full(n, np.nan, dtype=np.float32)
            rk = np.full(n, np.nan, dtype=np.float32)
            at = np.fromiter((pos.get(c.track_id, -1) for c in cands), dtype=np.int64, count=len(cands))
            hit = at >= 0
            if hit.any():
                # Scatters into the union's order (a track listed twice keeps its last entry, as a loop would).
                sc[at[hit]] = np.fromiter((c.score for c in cands), dtype=np.float32, count=len(cands))[hit]
                rk[at[hit]] = np.fromiter((c.rank for c in cands), dtype=np.float32, count=len(cands))[hit]
            scores[arm], ranks[arm] = sc, rk
            # The pseudo-relevance profile (ranker.profile) is voted by every served list's top results.
            voters[arm] = [row_of[c.track_id] for c in cands[:PROFILE_DEPTH] if c.track_id in row_of]
        dense_cos = self._dense_cosines(query, ids) if "dense" in scores else None
        q2e_ctr = None
        if q2e_all is not None:
            q2e = {t: q2e_all[t] for t in ids if t in q2e_all}
        else:
            q2e = self._q2e_scores(qnorm, ids) if q2e_known else None
        if q2e:
            q2e_ctr = np.array([q2e.get(t, np.nan) for t in ids], dtype=np.float32)
        rows = self.table.rows(ids)
        profile = build_profile(self.table, voters) if voters else None
        cands_in = Candidates(rows=rows, retriever_scores=scores, retriever_ranks=ranks,
                              dense_cos=None if dense_cos is None else dense_cos.astype(np.float32),
                              q2e_ctr=q2e_ctr, intent=self._intent(query, rows))
        return ids, self.registry.featurize(QueryInput(qnorm, affinity or {}, profile), cands_in, self.table)

    def _intent(self, query: str, rows: np.ndarray) -> np.ndarray | None:
        """Agreement with the genres, years and mood the query names (NaN columns where it names
        none); None without query understanding."""
        qu = self.parts.intent
        if qu is None:
            return None
        try:
            got = qu.intent(query, rows)
        except Exception as exc:  # a feature, not the search: degrade to NaN
            log.warning("query-intent features failed: %r", exc)
            return None
        return None if got is None or got.shape != (len(rows), INTENT_WIDTH) else got

    def score(self, x: np.ndarray, ids: list[str], results: dict[str, list[Candidate]],
              served_arms: tuple[str, ...]) -> tuple[np.ndarray, list[int]]:
        if not ids:
            return np.zeros(0), []
        model = self.parts.ranker.current()
        if model is not None:
            scores = np.asarray(model.predict(x), dtype=float)
        else:
            scores = _rrf(ids, results, served_arms, self.parts.catalog)
        order = sorted(range(len(ids)), key=lambda i: -scores[i])
        return scores, order

    def _dense_cosines(self, query: str, ids: list[str]) -> np.ndarray | None:
        dense = self.parts.dense
        if dense is None:
            return None
        try:
            return np.asarray(dense.similarity(dense.encode_query(query), ids), dtype=float)
        except Exception as exc:  # a feature, not the search: degrade to NaN
            log.warning("dense cosine features failed: %r", exc)
            return None

    def _q2e_scores(self, qnorm: str, ids: list[str]) -> dict[str, float] | None:
        store = self.parts.q2e_store
        if store is None:
            return None
        try:
            return store.scores(qnorm, ids)
        except (redis.RedisError, OSError) as exc:
            log.warning("q2e feature lookup failed: %r", exc)
            return None

    def _log_decision(self, record: DecisionRecord, now: float, ranked: Ranked | None = None) -> None:
        """The part of a search's logging that must precede its response, in one round trip:
        the served key and the ranked head (DecisionStore.stage_served), and the session's recent
        queries (/suggest completes the next query from them). The full record with its reward
        deadline, its JSONL line and the activity counters follow on the writer's thread
        (services.serving.decision_writer)."""
        if self.redis is None or self.decisions is None:
            return
        try:
            pipe = self.redis.pipeline(transaction=False)
            self.decisions.stage_served(pipe, record, ranked)
            if record.session_id:
                sq = self.keys.session_queries(record.session_id)
                pipe.lpush(sq, record.query_norm)
                pipe.ltrim(sq, 0, 9)
                pipe.expire(sq, 1800)
            pipe.execute()
        except (redis.RedisError, OSError) as exc:
            # The search still answers; its feedback will be refused as unknown, which is honest.
            metrics.ERRORS.labels(kind="redis_decision").inc()
            log.warning("could not store decision %s in redis: %s", record.search_id, exc)

    def flush(self, timeout: float = 10.0) -> bool:
        """Waits until every search so far is fully logged (full decision in Redis, JSONL line
        queued, activity counted); False on timeout. For tests and tools that read them at once."""
        return self.writer.flush(timeout)

    def close(self) -> None:
        """Stops the retriever threads and writes every queued decision record (before the
        runtime closes the decision log and Redis)."""
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.writer.close()


def _track_record(t: Track) -> TrackRecord:
    """What the ranker's track table holds of a catalog track (normalized as at indexing time)."""
    return TrackRecord(t.track_id, normalize(t.title), normalize(t.artist), normalize(t.album),
                       tuple(normalize(g) for g in t.genres + t.subgenres), t.popularity / 100.0, t.year,
                       primary_artist(t.artist), tuple(float(getattr(t, f)) for f in AUDIO_FEATURES),
                       base_title(t.title))


def policy_name(policy: object) -> str:
    return str(getattr(policy, "name", type(policy).__name__))


def _evidence(stats: Q2EStats | None) -> float | None:
    """None when the memory has never seen the query, else its (decayed) feedback evidence."""
    if stats is None or not stats.hit:
        return None
    return float(stats.evidence)


def _pin(order: list[int], ids: list[str], memory: list[str]) -> list[int]:
    """The ranking with the remembered tracks moved to the top, in the memory's order."""
    if not memory:
        return order
    where = {tid: i for i, tid in enumerate(ids)}
    head = [where[t] for t in memory if t in where]
    taken = set(head)
    return head + [i for i in order if i not in taken]


def _trial(order: list[int], ids: list[str], remembered: list[str], pins: set[str], limit: int,
           slots: int) -> tuple[list[int], int]:
    """The ranking with up to `slots` remembered (played, not skipped away) but unpinned tracks
    that fell below the page moved into its last slots, best remembered first: (order, moved).
    Only tracks the ranking holds move (a collapsed-away version stays with its recording)."""
    on_page = set(order[:limit])
    where = {tid: i for i, tid in enumerate(ids)}
    ranked = set(order)
    moving = [where[t] for t in remembered
              if t not in pins and t in where and where[t] in ranked and where[t] not in on_page][:slots]
    if not moving or limit <= len(moving):
        return order, 0
    taken = set(moving)
    rest = [i for i in order if i not in taken]
    at = limit - len(moving)
    return rest[:at] + moving + rest[at:], len(moving)


def _rows(x: np.ndarray) -> list[list[float | None]]:
    """Feature rows for the log: 6 decimals, NaN as null. Rounded by numpy in one call (a
    per-value round() was 1.5 ms per search); values can differ from round() in the last bit."""
    r = np.round(x.astype(np.float64), 6).tolist()
    if not np.isnan(x).any():
        return r
    return [[None if v != v else v for v in row] for row in r]


def _union(results: Mapping[str, list[Candidate]]) -> list[tuple[str, set[str]]]:
    """Candidates of every served arm, interleaved by rank so truncation keeps each arm's best."""
    seen: dict[str, set[str]] = {}
    lists = list(results.items())
    depth = max((len(c) for _, c in lists), default=0)
    for r in range(depth):
        for arm, cands in lists:
            if r < len(cands):
                seen.setdefault(cands[r].track_id, set()).add(arm)
    return list(seen.items())


def _rrf(ids: list[str], results: Mapping[str, list[Candidate]], arms: tuple[str, ...], catalog: Catalog,
         k: float = 60.0) -> np.ndarray:
    """Reciprocal-rank fusion: the ranking used only while no LightGBM model exists yet."""
    ranks = {a: {c.track_id: c.rank for c in results[a]} for a in arms if a in results}
    return np.array([sum(1.0 / (k + r[tid]) for r in ranks.values() if tid in r)
                     + 1e-4 * catalog.by_id[tid].popularity / 100.0 for tid in ids])


def _ms(t: float) -> float:
    return (time.perf_counter() - t) * 1000.0
