"""Seeded traffic simulator: users with genre tastes issue queries with a known ground truth and
react to what they are served through a click model, so the whole loop (search -> feedback ->
worker -> bandit/Q2E learning -> joined log) can be exercised and measured.

Query intents (`SimQuery.intent`):

* spearfishing, one wanted track (`targets`): `title`, `artist` (relevant: every track of the
  artist), `artist_title`, `partial_title` (a prefix of the title); each misspelled with
  probability `typo_rate` by services.offline.typos (deletions, transpositions, phonetic swaps "tayler");
* topic, a relevant *set*: `genre`, `subgenre`, `mood` ("chill edm": tracks of the genre whose
  audio features fit the mood word, the same word -> feature map the Q2E pseudo-queries use:
  chill = low energy, sad = low valence, party = high danceability, ...);
* `popular`: Zipf draws from a fixed pool of (query -> track) pairs over popular tracks, phrased
  the way people repeat them (partial titles, misspellings, title only), so the memory retrievers
  (Q2E, XR-Linear trained on clicks) have something to remember.

The query stream is a pure function of (catalog, config, seed); a step's user reaction uses its
own rng seeded by (seed, step), so it does not depend on what other steps did.

Click model: position-based (examine position p with probability 1/p^eta) or cascade (scan top
down, stop after a satisfying click or with probability `abandon` after each item). An examined
result is clicked with its attractiveness (1 for the wanted track, less for other relevant ones,
`noise_click` for the rest); a click becomes a play (long dwell) or a skip depending on relevance
and the user's taste for the track's genres.

Drivers: in-process (SearchPipeline.search, FeedbackIngest.ingest, FeedbackWorker.run_once +
sweep + BanditLearner.step on the service's real Redis: the fast path, still the whole loop) and
HTTP (`--url`: GET /search, POST /feedback with X-API-Key from LTRR_API_KEYS).

Why one module of this size: the query generator, the click model and the two drivers share
one seeded state so that a run is a pure function of (catalog, config, seed); splitting them
would spread that contract over several files. (Not yet split; a candidate when it grows.)
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import time
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from logged.records import EventType, FeedbackEvent
from logged.rewards import RewardConfig, action_reward, aggregate, is_positive
from retrievers.pseudo_queries import MOOD_WORDS
from retrievers.text import normalize, strip_version
from services.catalog import Catalog, Track
from services.config import Settings
from services.offline.typos import add_typos, partial

log = logging.getLogger("ltrr.simulate")

SPEARFISH_INTENTS = ("title", "artist", "artist_title", "partial_title")
TOPIC_INTENTS = ("genre", "subgenre", "mood")
INTENTS = (*SPEARFISH_INTENTS, *TOPIC_INTENTS, "popular")
DEFAULT_MIX: dict[str, float] = {"title": 0.14, "artist": 0.08, "artist_title": 0.16, "partial_title": 0.07,
                                 "genre": 0.06, "subgenre": 0.08, "mood": 0.11, "popular": 0.30}
# Topic queries need enough relevant tracks to be a topic, not a disguised entity search.
MIN_TOPIC_TRACKS = 30


def family_of(intent: str) -> str:
    return "spearfish" if intent in SPEARFISH_INTENTS else "topic" if intent in TOPIC_INTENTS else "popular"


@dataclass(frozen=True)
class SimConfig:
    n_users: int = 500
    taste_alpha: float = 0.3  # Dirichlet concentration over genres: small = users with one or two genres
    mix: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_MIX))
    typo_rate: float = 0.25  # share of spearfishing / popular queries that get misspelled
    typo_word_rate: float = 0.5  # per-word misspelling probability inside a misspelled query
    popular_pool: int = 300
    zipf_s: float = 1.1
    click_model: Literal["pbm", "cascade"] = "pbm"
    eta: float = 1.0  # PBM examination 1/pos^eta
    abandon: float = 0.15  # cascade: probability to stop after examining an unsatisfying result
    noise_click: float = 0.02  # click probability on an examined, irrelevant result
    limit: int = 10  # results requested per search


@dataclass(frozen=True)
class SimQuery:
    step: int
    text: str
    intent: str
    user_id: str
    targets: tuple[str, ...] = ()  # the wanted track(s): spearfishing and popular
    relevant: frozenset[str] = frozenset()  # every acceptable track (targets included)
    typo: bool = False
    clean: str = ""  # the query before misspelling / truncation
    genre: str | None = None
    mood: str | None = None

    @property
    def family(self) -> str:
        return family_of(self.intent)

    def describe(self) -> dict[str, Any]:
        return {"step": self.step, "query": self.text, "clean": self.clean, "intent": self.intent,
                "family": self.family, "user_id": self.user_id, "typo": self.typo, "targets": list(self.targets),
                "n_relevant": len(self.relevant), "genre": self.genre, "mood": self.mood}


@dataclass
class SimEvent:
    track_id: str
    type: EventType
    position: int
    offset_s: float  # seconds after the search
    dwell_ms: int | None = None


def mood_predicate(mood: str, track: Track) -> bool:
    feature, op, threshold = MOOD_WORDS[mood]
    v = float(getattr(track, feature))
    return v < threshold if op == "<" else v > threshold


class TrafficSimulator:
    """Generates the query stream and user reactions for one catalog, config and seed."""

    def __init__(self, catalog: Catalog, config: SimConfig | None = None, seed: int = 0):
        self.catalog = catalog
        self.cfg = config or SimConfig()
        self.seed = seed
        unknown = set(self.cfg.mix) - set(INTENTS)
        if unknown:
            raise ValueError(f"unknown intents in mix: {sorted(unknown)}; known: {list(INTENTS)}")
        rng = random.Random(f"ltrr-sim-setup-{seed}")
        tracks = catalog.tracks
        self.genres = sorted({g for t in tracks for g in t.genres})
        by_genre: dict[str, list[Track]] = defaultdict(list)
        by_sub: dict[str, list[Track]] = defaultdict(list)
        self.by_artist: dict[str, set[str]] = defaultdict(set)
        self.by_title: dict[str, set[str]] = defaultdict(set)
        for t in tracks:
            for g in t.genres:
                by_genre[g].append(t)
            for s in t.subgenres:
                by_sub[s].append(t)
            self.by_artist[normalize(t.artist)].add(t.track_id)
            self.by_title[normalize(strip_version(t.title))].add(t.track_id)
        self.by_genre = dict(by_genre)
        # A subgenre belongs to the genre most of its tracks carry: users reach it through their taste.
        self.sub_parent = {s: Counter(g for t in ts for g in t.genres).most_common(1)[0][0]
                           for s, ts in by_sub.items()}
        self.sub_relevant = {s: frozenset(t.track_id for t in ts) for s, ts in by_sub.items()}
        self.genre_relevant = {g: frozenset(t.track_id for t in ts) for g, ts in by_genre.items()}
        self.mood_relevant: dict[tuple[str, str], frozenset[str]] = {}
        for g, ts in by_genre.items():
            for mood in MOOD_WORDS:
                rel = frozenset(t.track_id for t in ts if mood_predicate(mood, t))
                if len(rel) >= MIN_TOPIC_TRACKS:
                    self.mood_relevant[(mood, g)] = rel
        # Popularity-weighted sampling within a genre: popular tracks are searched more.
        self._genre_weights = {g: np.array([0.2 + t.popularity / 100.0 for t in ts]) for g, ts in by_genre.items()}
        for w in self._genre_weights.values():
            w /= w.sum()
        nrng = np.random.default_rng(rng.randrange(2**32))
        self.tastes = nrng.dirichlet([self.cfg.taste_alpha] * len(self.genres), size=self.cfg.n_users)
        self.popular = self._popular_pool(rng)
        zipf = 1.0 / np.arange(1, len(self.popular) + 1) ** self.cfg.zipf_s
        self._zipf = zipf / zipf.sum()

    # --- query stream --------------------------------------------------------------------------
    def _popular_pool(self, rng: random.Random) -> list[tuple[str, str, str]]:
        """(query, clean query, track id) pairs over the most popular tracks, phrased the way
        people repeat them; fixed for the simulator's lifetime so Zipf draws repeat them."""
        top = sorted(self.catalog.tracks, key=lambda t: (-t.popularity, t.track_id))[: self.cfg.popular_pool * 3]
        rng.shuffle(top)
        pool = []
        seen: set[str] = set()
        for t in top:
            title = normalize(strip_version(t.title))
            artist = normalize(t.artist)
            if not title:
                continue
            kind = rng.random()
            if kind < 0.35:
                clean = title
                text = partial(title, rng) if len(title.split()) > 1 else title
            elif kind < 0.7:
                clean = f"{artist} {title}"
                text = add_typos(clean, rng, self.cfg.typo_word_rate)
            else:
                clean = f"{title} {artist}".strip()
                text = add_typos(title, rng, self.cfg.typo_word_rate)
            if text in seen or not normalize(text):
                continue
            seen.add(text)
            pool.append((text, clean, t.track_id))
            if len(pool) >= self.cfg.popular_pool:
                break
        return pool

    def _pick_track(self, genre: str, rng: random.Random) -> Track:
        ts = self.by_genre[genre]
        u = rng.random()
        idx = int(np.searchsorted(np.cumsum(self._genre_weights[genre]), u, side="right"))
        return ts[min(idx, len(ts) - 1)]

    def _user_genre(self, user: int, rng: random.Random) -> str:
        taste = self.tastes[user]
        u = rng.random()
        return self.genres[min(int(np.searchsorted(np.cumsum(taste), u, side="right")), len(self.genres) - 1)]

    def query(self, step: int, rng: random.Random) -> SimQuery:
        intents = [i for i, w in self.cfg.mix.items() if w > 0]
        intent = rng.choices(intents, [self.cfg.mix[i] for i in intents])[0]
        user = rng.randrange(self.cfg.n_users)
        uid = f"sim-u{user:05d}"
        genre = self._user_genre(user, rng)
        if intent == "popular":
            i = int(np.searchsorted(np.cumsum(self._zipf), rng.random(), side="right"))
            text, clean, tid = self.popular[min(i, len(self.popular) - 1)]
            return SimQuery(step, text, intent, uid, (tid,), frozenset({tid}), text != clean, clean)
        if intent in SPEARFISH_INTENTS:
            t = self._pick_track(genre, rng)
            for _ in range(20):  # titles of only punctuation cannot be typed: ask for another track
                if normalize(strip_version(t.title)):
                    break
                t = self._pick_track(genre, rng)
            title = strip_version(t.title).lower()
            artist = t.artist.lower()
            ntitle = normalize(title)
            relevant = set(self.by_title.get(ntitle, ())) | {t.track_id}
            if intent == "title":
                clean = title
            elif intent == "artist":
                clean = artist
                relevant = set(self.by_artist.get(normalize(t.artist), ())) | {t.track_id}
            elif intent == "artist_title":
                clean = f"{artist} {title}" if rng.random() < 0.75 else f"{title} {artist}"
            else:
                clean = partial(title, rng) if len(title.split()) > 1 else title[: max(3, (2 * len(title)) // 3)]
            text = clean
            typo = rng.random() < self.cfg.typo_rate
            if typo:
                text = add_typos(clean, rng, self.cfg.typo_word_rate)
                typo = text != clean
            if not normalize(text):  # a misspelling cannot empty a query, but a partial of odd text can
                text = clean = title
            return SimQuery(step, text, intent, uid, (t.track_id,), frozenset(relevant), typo, clean, genre)
        if intent == "genre":
            text = rng.choice([genre, f"{genre} music", f"best {genre} songs", f"{genre} hits"])
            return SimQuery(step, text, intent, uid, (), self.genre_relevant[genre], False, text, genre)
        if intent == "subgenre":
            subs = [s for s, p in self.sub_parent.items() if p == genre] or list(self.sub_parent)
            sub = rng.choice(sorted(subs))
            return SimQuery(step, sub, intent, uid, (), self.sub_relevant[sub], False, sub, sub)
        moods = sorted(m for m, g in self.mood_relevant if g == genre)
        if not moods:  # a genre with no mood of enough tracks: ask for the genre itself
            return SimQuery(step, genre, "genre", uid, (), self.genre_relevant[genre], False, genre, genre)
        mood = rng.choice(moods)
        text = rng.choice([f"{mood} {genre}", f"{genre} {mood}", f"{mood} {genre} songs"])
        return SimQuery(step, text, intent, uid, (), self.mood_relevant[(mood, genre)], False, text, genre, mood)

    def queries(self, n: int, start: int = 0) -> list[SimQuery]:
        rng = random.Random(f"ltrr-sim-queries-{self.seed}-{start}")
        return [self.query(start + i, rng) for i in range(n)]

    # --- user reaction -------------------------------------------------------------------------
    def user_index(self, user_id: str) -> int:
        return int(user_id.rsplit("u", 1)[1])

    def taste_for(self, user_id: str, track: Track) -> float:
        """The user's taste share for the track's genres, scaled so an average genre is 1."""
        taste = self.tastes[self.user_index(user_id)]
        shares = [taste[self.genres.index(g)] for g in track.genres if g in self.genres]
        return (max(shares) if shares else 0.0) * len(self.genres)

    def attractiveness(self, q: SimQuery, track_id: str) -> float:
        if track_id in q.targets:
            return 0.95
        if track_id in q.relevant:
            t = self.catalog.by_id.get(track_id)
            taste = self.taste_for(q.user_id, t) if t is not None else 1.0
            base = 0.25 if q.family != "topic" else 0.35
            return min(0.9, base * (0.5 + 0.5 * min(taste, 3.0)))
        return self.cfg.noise_click

    def react(self, q: SimQuery, served: Sequence[str]) -> list[SimEvent]:
        """What the user does with the served list: clicks, then a play (long dwell) or a skip."""
        rng = random.Random(f"ltrr-sim-react-{self.seed}-{q.step}")
        events: list[SimEvent] = []
        t = 2.0
        for pos, tid in enumerate(served, start=1):
            if self.cfg.click_model == "pbm":
                if rng.random() >= 1.0 / pos ** self.cfg.eta:
                    continue
            elif events and events[-1].type == "play":
                break  # cascade: a satisfying result ends the scan
            if rng.random() < self.attractiveness(q, tid):
                events.append(SimEvent(tid, "click", pos, t))
                t += 1.0 + rng.random()
                track = self.catalog.by_id.get(tid)
                rel = 1.0 if tid in q.targets else 0.7 if tid in q.relevant else 0.05
                taste = self.taste_for(q.user_id, track) if track is not None else 1.0
                p_play = min(0.97, rel * (0.6 + 0.15 * min(taste, 2.5)))
                if rng.random() < p_play:
                    dwell = int(30_000 + rng.random() * 180_000)
                    events.append(SimEvent(tid, "play", pos, t, dwell))
                    if rng.random() < 0.1 * rel:
                        events.append(SimEvent(tid, "like", pos, t + 0.5))
                    # The play is reported when it starts (its dwell travels in dwell_ms) and the
                    # user goes back to the list: offsets stay within the API's clock-skew window.
                    t += 1.0 + 2.0 * rng.random()
                    if q.targets and tid in q.targets:
                        break  # found what they came for
                else:
                    events.append(SimEvent(tid, "skip", pos, t, int(1_000 + rng.random() * 9_000)))
                    t += 1.0
            elif self.cfg.click_model == "cascade" and rng.random() < self.cfg.abandon:
                break
        return events


# --- per-step outcome ---------------------------------------------------------------------------
@dataclass
class StepResult:
    query: SimQuery
    search_id: str | None
    action: str | None
    propensity: float | None
    served: list[str]
    events: list[SimEvent]
    reward: float  # the worker's reward for these events (logged.rewards.aggregate)
    ms: float
    target_in_union: bool | None = None  # spearfish/popular: the wanted track was retrieved (in-process only)
    relevant_in_union: int | None = None
    target_rank: int | None = None  # 1-based served position of the wanted track
    oracle: dict[str, float] | None = None  # per action key: retrieval hit had it been chosen
    error: str | None = None

    def as_json(self) -> dict[str, Any]:
        d = self.query.describe()
        d.update({"search_id": self.search_id, "action": self.action, "propensity": self.propensity,
                  "reward": self.reward, "ms": round(self.ms, 3), "target_in_union": self.target_in_union,
                  "relevant_in_union": self.relevant_in_union, "target_rank": self.target_rank,
                  "events": [asdict(e) for e in self.events], "served": self.served[:10]})
        if self.oracle is not None:
            d["oracle"] = self.oracle
        if self.error:
            d["error"] = self.error
        return d


def _feedback_events(events: Sequence[SimEvent], search_id: str, ts: float) -> list[FeedbackEvent]:
    return [FeedbackEvent(event_id=f"r{i}", search_id=search_id, track_id=e.track_id, type=e.type,
                          position=e.position, timestamp=ts + e.offset_s) for i, e in enumerate(events)]


def sim_reward(events: Sequence[SimEvent], search_id: str, ts: float, cfg: RewardConfig) -> float:
    """The reward of these events as the worker aggregates them, for drivers that cannot see which
    retriever found what (HTTP): equal to the worker's unless a fallback retriever served."""
    return aggregate(_feedback_events(events, search_id, ts), cfg)


def _target_rank(q: SimQuery, served: Sequence[str]) -> int | None:
    return next((i for i, t in enumerate(served, start=1) if t in q.targets), None)


# --- drivers ------------------------------------------------------------------------------------
class InProcessDriver:
    """The whole loop inside this process on the service's Redis: pipeline -> ingest -> worker
    (events, join-window sweep) -> learner (bandit updates, joined log, checkpoints) -> the
    pipeline reloads each published bandit version, as the API's reloader would."""

    def __init__(self, settings: Settings, *, oracle: bool = False):
        from services.learning.worker import BanditLearner, FeedbackWorker
        from services.serving.runtime import Runtime

        self.settings = settings
        self.rt = Runtime(settings, start_worker=False)
        self.oracle = oracle
        self.worker = FeedbackWorker(settings, self.rt.redis, self.rt.keys, q2e_store=self.rt.q2e_store,
                                     catalog=self.rt.catalog, bandit_store=self.rt.bandit_store,
                                     consumer="simulator")
        self.worker.learner = BanditLearner(settings, self.rt.redis, self.rt.keys, self.rt.bandit_store,
                                            self.worker.training_log)
        self.catalog = self.rt.catalog

    def step(self, sim: TrafficSimulator, q: SimQuery) -> StepResult:
        from services.serving.feedback import FeedbackEventIn

        t0 = time.perf_counter()
        # Tracks only, as ApiDriver asks: the simulated users react to a list of tracks.
        out = self.rt.pipeline.search(q.text, sim.cfg.limit, user_id=q.user_id, session_id=f"{q.user_id}-s",
                                      types=("track",))
        ms = (time.perf_counter() - t0) * 1000
        rec = out.record
        events = sim.react(q, rec.served)
        if events:
            res = self.rt.ingest.ingest([FeedbackEventIn(
                event_id=f"{rec.search_id}-{i}", search_id=rec.search_id, track_id=e.track_id, type=e.type,
                position=e.position, timestamp=rec.ts + e.offset_s, user_id=q.user_id, dwell_ms=e.dwell_ms)
                for i, e in enumerate(events)], now=rec.ts + max(e.offset_s for e in events))
            if res.errors:
                raise RuntimeError(f"feedback refused: {[e.as_dict() for e in res.errors]}")
        # Every event of this search is in the stream: apply it, then close the join window now
        # (simulated time) so searches nobody acted on are rewarded 0 without waiting 30 minutes.
        while self.worker.run_once(block_ms=1):
            pass
        self.rt.pipeline.flush()  # the decision (and its reward deadline) is written after the response
        self.worker.sweep(time.time() + self.settings.reward.wait_s + 1.0)
        if self.worker.learner is not None and self.worker.learner.step():
            self.rt.policy.refresh()
        action = rec.actions[rec.chosen]
        union: set[str] = set()
        for arm in action.arms:
            union.update(rec.candidates.get(arm, [])[: action.budget])
        # The worker's reward: events on items the chosen retrievers found (not a fallback's).
        reward = action_reward(rec, rec.actions[rec.chosen], _feedback_events(events, rec.search_id, rec.ts),
                               self.settings.reward)
        result = StepResult(q, rec.search_id, action.key, rec.propensity, list(rec.served), events, reward, ms,
                            target_in_union=bool(union & set(q.targets)) if q.targets else None,
                            relevant_in_union=len(union & q.relevant), target_rank=_target_rank(q, rec.served))
        if self.oracle:
            result.oracle = self._oracle(q)
        return result

    def _oracle(self, q: SimQuery) -> dict[str, float]:
        """Per action: the retrieval hit it would have had (every retriever runs once more)."""
        pipe = self.rt.pipeline
        budget = max(a.budget for a in pipe.actions)
        found = {name: [c.track_id for c in r.retrieve(q.text, budget)] for name, r in pipe.parts.retrievers.items()}
        out = {}
        for a in pipe.actions:
            union = {t for arm in a.arms for t in found.get(arm, [])[: a.budget]}
            out[a.key] = retrieval_reward(q, union)
        return out

    def finish(self) -> None:
        self.rt.pipeline.flush()
        self.worker.sweep(time.time() + self.settings.reward.wait_s + 1.0)
        if self.worker.learner is not None:
            while self.worker.learner.step():
                pass
            self.worker.learner.checkpoint(force=True)
            self.worker.learner.release()
        self.worker.training_log.close()
        self.rt.close()

    def joined_logs(self) -> list[Path]:
        return sorted(Path(self.settings.logs_dir).glob("joined-*.jsonl"))


class HttpDriver:
    """Against a running API: GET /search (debug=true for the action), POST /feedback. The
    service's own worker joins and learns; the reward here is computed from the same events."""

    def __init__(self, url: str, settings: Settings, catalog: Catalog, timeout: float = 10.0):
        import httpx

        headers = {"X-API-Key": settings.api_keys[0]} if settings.api_keys else {}
        self.http = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)
        self.settings = settings
        self.catalog = catalog
        try:
            self.http.get("/health").raise_for_status()
        except httpx.HTTPError as exc:
            raise ConnectionError(f"no ltrr API at {url}: {exc}") from None

    def step(self, sim: TrafficSimulator, q: SimQuery) -> StepResult:
        t0 = time.perf_counter()
        ts = time.time()
        # types=track: the simulated users react to a list of tracks (their relevance is tracks).
        r = self.http.get("/search", params={"q": q.text, "limit": sim.cfg.limit, "user_id": q.user_id,
                                             "session_id": f"{q.user_id}-s", "debug": "true", "types": "track"})
        ms = (time.perf_counter() - t0) * 1000
        if r.status_code != 200:
            return StepResult(q, None, None, None, [], [], 0.0, ms, error=f"/search {r.status_code}: {r.text[:200]}")
        body = r.json()
        served = [h["track_id"] for h in body["results"]]
        dbg = body.get("debug") or {}
        action = "+".join(dbg.get("action", [])) + f"@{dbg['budget']}" if dbg.get("action") else None
        events = sim.react(q, served)
        err = None
        if events:
            payload = {"events": [{"event_id": f"{body['search_id']}-{i}", "search_id": body["search_id"],
                                   "track_id": e.track_id, "type": e.type, "position": e.position,
                                   "timestamp": ts + e.offset_s, "user_id": q.user_id,
                                   **({"dwell_ms": e.dwell_ms} if e.dwell_ms is not None else {})}
                                  for i, e in enumerate(events)]}
            fr = self.http.post("/feedback", json=payload)
            if fr.status_code != 202:
                err = f"/feedback {fr.status_code}: {fr.text[:200]}"
        return StepResult(q, body["search_id"], action, dbg.get("propensity"), served, events,
                          sim_reward(events, body["search_id"], ts, self.settings.reward), ms,
                          target_rank=_target_rank(q, served), error=err)

    def finish(self) -> None:
        self.http.close()

    def joined_logs(self) -> list[Path]:
        return sorted(Path(self.settings.logs_dir).glob("joined-*.jsonl"))


def retrieval_reward(q: SimQuery, found: set[str] | frozenset[str], budget: int = 100) -> float:
    """The retrieval reward the learning benchmark uses (without the cost term): spearfish and
    popular queries, 1 if the wanted track was retrieved; topic queries, the capped recall
    |relevant & found| / min(|relevant|, budget), i.e. the share of the relevant set one
    budget-sized list could at best hold."""
    if q.targets:
        return 1.0 if found.intersection(q.targets) else 0.0
    if not q.relevant:
        return 0.0
    return min(1.0, len(q.relevant.intersection(found)) / min(len(q.relevant), budget))


# --- summary ------------------------------------------------------------------------------------
def summarize(results: Sequence[StepResult], cfg: RewardConfig | None = None) -> tuple[list[tuple], list[tuple]]:
    """(rows by intent, rows of action shares by family)."""
    cfg = cfg or RewardConfig()
    by_intent: dict[str, list[StepResult]] = defaultdict(list)
    for r in results:
        by_intent[r.query.intent].append(r)
    rows = []
    for intent in [*INTENTS, "all"]:
        rs = list(results) if intent == "all" else by_intent.get(intent, [])
        if not rs:
            continue
        positive = [any(is_positive(e, cfg) for e in r.events) for r in rs]
        tr = [r.target_rank for r in rs if r.query.targets]
        tu = [r.target_in_union for r in rs if r.target_in_union is not None]
        rows.append((intent, len(rs), f"{np.mean([r.reward for r in rs]):.3f}", f"{np.mean(positive):.3f}",
                     f"{np.mean([x is not None for x in tr]):.3f}" if tr else "-",
                     f"{np.mean(tu):.3f}" if tu else "-", f"{np.median([r.ms for r in rs]):.1f}"))
    shares: dict[str, Counter[str]] = defaultdict(Counter)
    for r in results:
        if r.action:
            shares[r.query.family][r.action] += 1
            shares["all"][r.action] += 1
    actions = sorted({a for c in shares.values() for a in c}, key=lambda a: -shares["all"][a])
    share_rows = []
    for fam in ("spearfish", "topic", "popular", "all"):
        c = shares.get(fam)
        if c:
            total = sum(c.values())
            share_rows.append((fam, *(f"{c[a] / total:.2f}" for a in actions)))
    return rows, [("family", *actions), *share_rows]


def _print_rows(rows: Iterable[tuple], header: tuple) -> None:
    rows = list(rows)
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h))
              for i, h in enumerate(header)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    print(fmt.format(*header))
    print(fmt.format(*("-" * w for w in widths)))
    for r in rows:
        print(fmt.format(*r))


def run(settings: Settings, n: int, *, seed: int = 0, url: str | None = None, out_dir: Path | None = None,
        config: SimConfig | None = None, oracle: bool = False, progress: bool = True,
        catalog: Catalog | None = None) -> tuple[list[StepResult], Path, list[Path]]:
    """Simulates `n` searches; returns the step results, the per-step JSONL and the joined logs."""
    from tqdm import tqdm

    if url is None:
        driver: InProcessDriver | HttpDriver = InProcessDriver(settings, oracle=oracle)
        catalog = driver.catalog
    else:
        catalog = catalog or Catalog.load(settings.catalog)
        driver = HttpDriver(url, settings, catalog)
    sim = TrafficSimulator(catalog, config, seed)
    out_dir = Path(out_dir) if out_dir is not None else Path(settings.logs_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    steps_path = out_dir / f"sim-steps-{time.strftime('%Y%m%d-%H%M%S')}-seed{seed}.jsonl"
    results: list[StepResult] = []
    errors = 0
    try:
        with open(steps_path, "w", encoding="utf-8") as fh:
            for q in tqdm(sim.queries(n), desc="simulated searches", unit="q", disable=not progress):
                r = driver.step(sim, q)
                errors += r.error is not None
                if errors > max(10, n // 10):
                    raise RuntimeError(f"too many failed steps ({errors}); last: {r.error}")
                results.append(r)
                fh.write(json.dumps(r.as_json()) + "\n")
    finally:
        driver.finish()
    return results, steps_path, driver.joined_logs()


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--searches", type=int, default=1000, help="number of simulated searches")
    p.add_argument("--url", help="drive a running API (e.g. http://127.0.0.1:8000) instead of the in-process pipeline")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="directory for the per-step JSONL (default: the data dir's logs/)")
    p.add_argument("--click-model", choices=["pbm", "cascade"], default="pbm")
    p.add_argument("--typo-rate", type=float, default=SimConfig.typo_rate)
    p.add_argument("--users", type=int, default=SimConfig.n_users)
    p.add_argument("--oracle", action="store_true",
                   help="in-process: also run every retriever to record each action's retrieval hit (slower)")


def main(args: argparse.Namespace, settings: Settings) -> None:
    from services.cli_errors import CliError

    if args.searches < 1:
        raise CliError("--searches must be at least 1")
    if not 0.0 <= args.typo_rate <= 1.0:
        raise CliError("--typo-rate must be in [0, 1]")
    if args.oracle and args.url:
        raise CliError("--oracle needs the in-process driver (no --url)")
    cfg = SimConfig(click_model=args.click_model, typo_rate=args.typo_rate, n_users=max(1, args.users))
    t = time.perf_counter()
    try:
        results, steps, joined = run(settings, args.searches, seed=args.seed, url=args.url,
                                     out_dir=Path(args.out) if args.out else None, config=cfg, oracle=args.oracle,
                                     progress=not args.quiet)
    except ConnectionError as exc:
        raise CliError(str(exc)) from None
    rows, shares = summarize(results, settings.reward)
    print(f"\n{len(results)} simulated searches in {time.perf_counter() - t:.1f}s "
          f"({'HTTP ' + args.url if args.url else 'in-process'}, seed {args.seed}, {cfg.click_model})\n")
    _print_rows(rows, ("intent", "n", "reward", "click rate", "target@10", "target retrieved", "p50 ms"))
    print("\naction shares by query family")
    _print_rows(shares[1:], shares[0])
    failed = sum(r.error is not None for r in results)
    if failed:
        print(f"\n{failed} steps failed; first: {next(r.error for r in results if r.error)}")
    print(f"\nper-step log: {steps}")
    if joined:
        print("joined log(s): " + ", ".join(str(p) for p in joined))
