"""The Redis state of one served search, from `/search` to its reward: the single owner of the
decision, served and pending keys (services.keys names them) for the pipeline, the feedback
ingest and the worker.

  decision:<id>  the full DecisionRecord JSON, features included (~10-30 kB): what the reward and
                 the ranker's training need. Deleted when the search is rewarded, and expires at
                 the end of its reward wait + `grace_s` if no worker rewarded it by then, so Redis
                 holds (search rate x reward wait) of them, not (search rate x feedback window).
  served:<id>    {"ts", "q", "ids", "e"} (~0.3-0.6 kB) for the whole feedback window: validates
                 `/feedback` and tells the click memory which query showed which tracks, also for
                 events that arrive after the reward. `ids` is by absolute position: a later page
                 writes its tracks at theirs ("" where a position was never shown); an artist or
                 album hit's position holds its entity id, and `e` maps each shown entity to the
                 top tracks it carried (what feedback on it may name).
  ranked:<id>    {"q", "ids", "s", "arms", "by", "v", "e"} (~2.4 kB): the first `page_depth`
                 results of the search's ranking, entity hits included (`e`: id -> [match, top
                 tracks]), kept `page_ttl_s` so later pages are cut from the same candidate union
                 instead of a new search.
  pending        zset id -> reward deadline. Leaving it (ZREM returning 1) is the once-only mark
                 of a reward, in the same Lua step as the reward's XADD.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field

import redis

from logged.records import DecisionRecord, is_entity_id
from services.config import Settings
from services.keys import Keys

# KEYS: pending zset, decision, events list, updates stream, counts hash; ARGV: search id, payload, maxlen
_LUA_REWARD = """
if redis.call('ZREM', KEYS[1], ARGV[1]) == 0 then return 0 end
redis.call('DEL', KEYS[2], KEYS[3])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', tonumber(ARGV[3]), '*', 'u', ARGV[2])
redis.call('HINCRBY', KEYS[5], 'rewarded_searches', 1)
return 1
"""

# KEYS: served; ARGV: 0-based offset, JSON of the page's entities' top tracks, ids... Writes a
# later page's ids at their absolute positions, in one step so two pages fetched at once cannot
# overwrite each other.
_LUA_SHOW = """
local raw = redis.call('GET', KEYS[1])
if not raw then return 0 end
local d = cjson.decode(raw)
local ids = d['ids']
if type(ids) ~= 'table' then ids = {} end
local off = tonumber(ARGV[1])
for i = #ids + 1, off do ids[i] = '' end
for j = 3, #ARGV do ids[off + j - 2] = ARGV[j] end
d['ids'] = ids
local shown = cjson.decode(ARGV[2])
if next(shown) ~= nil then
  local e = d['e']
  if type(e) ~= 'table' then e = {} end
  for k, v in pairs(shown) do e[k] = v end
  d['e'] = e
end
redis.call('SET', KEYS[1], cjson.encode(d), 'KEEPTTL')
return 1
"""


@dataclass(frozen=True)
class Served:
    """What a search showed: enough to validate its feedback and to teach the click memory.
    `ids` is by position ("" for a position of a later page that was never fetched)."""

    ts: float
    query_norm: str
    ids: list[str]
    entity_tracks: dict[str, list[str]] = field(default_factory=dict)  # entity id -> its top tracks as shown

    @property
    def shown(self) -> list[str]:
        """The tracks shown as results (not the artist and album hits)."""
        return [t for t in self.ids if t and not is_entity_id(t)]


@dataclass(frozen=True)
class Ranked:
    """The head of a search's ranking (its first page included), which later pages are cut from."""

    query: str
    ids: list[str]
    scores: list[float]
    found_by: list[list[str]]  # per id: the retrievers that found it
    versions: dict[str, list[str]]  # id -> other versions of its recording
    # entity id -> (why it is a hit: name / typo / tracks, its top tracks as served)
    entities: dict[str, tuple[str, list[str]]] = field(default_factory=dict)


def ranked_value(r: Ranked) -> str:
    # Retriever sets as bit masks over a short name list, not a list of names per id.
    arms = sorted({a for by in r.found_by for a in by})
    bit = {a: 1 << i for i, a in enumerate(arms)}
    body = {"q": r.query, "ids": r.ids, "s": [round(x, 4) for x in r.scores], "arms": arms,
            "by": [sum(bit[a] for a in by) for by in r.found_by], "v": r.versions}
    if r.entities:
        body["e"] = {k: [m, t] for k, (m, t) in r.entities.items()}
    return json.dumps(body, separators=(",", ":"))


def parse_ranked(raw: bytes | str) -> Ranked:
    d = json.loads(raw)
    arms = d["arms"]
    return Ranked(query=d["q"], ids=d["ids"], scores=d["s"],
                  found_by=[[a for i, a in enumerate(arms) if m >> i & 1] for m in d["by"]], versions=d["v"],
                  entities={k: (str(m), [str(t) for t in ts]) for k, (m, ts) in d.get("e", {}).items()})


def served_value(ts: float, query_norm: str, ids: list[str], entity_tracks: dict[str, list[str]] | None = None) -> str:
    body: dict[str, object] = {"ts": round(ts, 3), "q": query_norm, "ids": ids}
    if entity_tracks:
        body["e"] = entity_tracks
    return json.dumps(body, separators=(",", ":"))


def parse_served(raw: bytes | str) -> Served:
    text = raw.decode() if isinstance(raw, bytes) else raw
    if not text.startswith("{"):  # written before the query was kept here: "ts id id ..."
        ts, _, ids = text.partition(" ")
        return Served(float(ts), "", ids.split())
    d = json.loads(text)
    # cjson writes an empty Lua table as {}: a served list nothing was recorded in.
    ids = d["ids"] if isinstance(d["ids"], list) else []
    return Served(float(d["ts"]), str(d["q"]), [str(i) for i in ids],
                  {str(k): [str(t) for t in v] for k, v in (d.get("e") or {}).items()})


class DecisionStore:
    def __init__(self, client: redis.Redis, keys: Keys, *, feedback_window_s: float, reward_wait_s: float,
                 grace_s: float, updates_maxlen: int, page_ttl_s: int = 600):
        self.redis = client
        self.keys = keys
        self.feedback_window_s = int(feedback_window_s)
        self.reward_wait_s = reward_wait_s
        # The decision outlives its reward wait by the grace, so a worker that was down briefly
        # still rewards it; after that it is gone and the search teaches nothing (counted).
        self.decision_ttl_s = int(reward_wait_s + grace_s)
        self.updates_maxlen = updates_maxlen
        self.page_ttl_s = min(int(page_ttl_s), self.feedback_window_s)
        self._reward = client.register_script(_LUA_REWARD)
        self._show = client.register_script(_LUA_SHOW)

    @classmethod
    def from_settings(cls, client: redis.Redis, keys: Keys, settings: Settings) -> DecisionStore:
        return cls(client, keys, feedback_window_s=settings.decision_ttl_s, reward_wait_s=settings.reward.wait_s,
                   grace_s=settings.decision_grace_s, updates_maxlen=settings.bandit_updates_maxlen,
                   page_ttl_s=settings.page_ttl_s)

    # --- written by the pipeline ------------------------------------------------------------
    def stage(self, pipe: redis.client.Pipeline, record: DecisionRecord, body: str, now: float,
              ranked: Ranked | None = None) -> None:
        """Adds all of one search's keys to `pipe`."""
        self.stage_served(pipe, record, ranked)
        self.stage_decision(pipe, record.search_id, body, now)

    def stage_served(self, pipe: redis.client.Pipeline, record: DecisionRecord, ranked: Ranked | None = None) -> None:
        """What must be in Redis before the search's response is sent: the served key that
        /feedback validates against (feedback may arrive at once) and the ranked head that later
        pages read. The pipeline executes this before answering."""
        sid = record.search_id
        pipe.set(self.keys.served(sid), served_value(record.ts, record.query_norm, record.page(),
                                                     {e.entity_id: e.tracks for e in record.entities}),
                 ex=self.feedback_window_s)
        if ranked is not None and self.page_ttl_s > 0:
            pipe.set(self.keys.ranked(sid), ranked_value(ranked), ex=self.page_ttl_s)

    def stage_decision(self, pipe: redis.client.Pipeline, search_id: str, body: str, now: float) -> None:
        """The full record (`body`, its JSON) and, in the same round trip after it, the reward
        deadline (`now` + reward wait): a search is pending only once its decision is stored, so
        a sweep never finds a due search whose record is still on its way. Written after the
        response by services.serving.decision_writer; a record lost in a crash leaves neither,
        and the search simply earns no reward."""
        pipe.set(self.keys.decision(search_id), body, ex=self.decision_ttl_s)
        pipe.zadd(self.keys.pending, {search_id: now + self.reward_wait_s})

    # --- read and extended by the pages route -------------------------------------------------
    def ranked(self, search_id: str) -> Ranked | None:
        raw = self.redis.get(self.keys.ranked(search_id))
        return parse_ranked(raw) if raw is not None else None

    def show(self, search_id: str, offset: int, ids: list[str],
             entity_tracks: dict[str, list[str]] | None = None) -> bool:
        """Records that a later page showed `ids` from position `offset` (0-based), and the top
        tracks of the entity hits among them: feedback on them is then accepted at their
        absolute positions. False when the search has expired."""
        if not ids:
            return True
        shown = json.dumps(entity_tracks or {}, separators=(",", ":"))
        return bool(self._show(keys=[self.keys.served(search_id)], args=[offset, shown, *ids]))

    # --- read by ingest and worker ----------------------------------------------------------
    def served(self, search_ids: Iterable[str]) -> dict[str, Served]:
        ids = sorted(set(search_ids))
        pipe = self.redis.pipeline(transaction=False)
        for sid in ids:
            pipe.get(self.keys.served(sid))
        return {sid: parse_served(raw) for sid, raw in zip(ids, pipe.execute(), strict=True) if raw is not None}

    def decisions(self, search_ids: Iterable[str]) -> dict[str, DecisionRecord]:
        ids = sorted(set(search_ids))
        pipe = self.redis.pipeline(transaction=False)
        for sid in ids:
            pipe.get(self.keys.decision(sid))
        return {sid: DecisionRecord.model_validate_json(raw)
                for sid, raw in zip(ids, pipe.execute(), strict=True) if raw is not None}

    def due(self, now: float, limit: int = 500) -> list[str]:
        """Searches whose reward wait has ended, oldest first."""
        return [d.decode() for d in self.redis.zrangebyscore(self.keys.pending, "-inf", now, start=0, num=limit)]

    def forget(self, search_id: str) -> None:
        """A due search whose decision expired: nothing is left to learn from it."""
        self.redis.zrem(self.keys.pending, search_id)

    def reward(self, search_id: str, payload: str, updates_stream: str, counts: str) -> bool:
        """Atomically: takes the search out of `pending` (False if another worker already did),
        frees its decision and events, and appends `payload` to the bandit's updates stream."""
        return bool(self._reward(keys=[self.keys.pending, self.keys.decision(search_id),
                                       self.keys.search_events(search_id), updates_stream, counts],
                                 args=[search_id, payload, self.updates_maxlen]))
