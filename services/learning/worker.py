"""The feedback worker: Redis Streams consumer group -> idempotent effects -> bandit learning.

Delivery is at-least-once (XREADGROUP, XACK only after the effects are applied, XAUTOCLAIM to take
over a dead consumer's messages); every effect is idempotent by event id, so redelivery never
double counts:

* per event (Lua, SET NX on the event id): counts, the search's event list, the user's genre
  affinity; Q2E statistics (its own Lua, idempotent by event id as well);
* per search, once (services.decision_store: the search leaves `pending` in the same Lua step):
  when its reward wait ends (logged.rewards: the same wait for every search, acted on or not), the
  decision with every event of the wait and its reward is appended to the durable
  `bandit:updates` stream, and the decision is freed.

The bandit model is a deterministic consumer of `bandit:updates`: its checkpoint stores the last
update id it includes, and a restarted learner replays from there. Exactly one worker learns at a
time (a lease in Redis); the others only apply events.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections import defaultdict, deque
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

import redis

from bandit.actions import Action
from bandit.policy import VWPolicy
from logged.records import DecisionRecord, FeedbackEvent, JoinedRecord
from logged.rewards import action_reward, is_positive, subset_rewards
from retrievers.q2e import Q2EEvent, Q2EStore
from retrievers.text import normalize
from services import metrics
from services.catalog import Catalog
from services.config import Settings
from services.decision_store import DecisionStore
from services.jsonl_log import JsonlWriter
from services.keys import Keys
from services.learning.gate import BanditGate
from services.serving.feedback import decode_event

log = logging.getLogger("ltrr.worker")
# An applied event's idempotency marker outlives any client retry (a day): resends are deduped.
MARKER_TTL_S = 86_400

# KEYS: applied marker, counts hash, events list, user genres hash (or "")
# ARGV: marker ttl, event type, event json, events list ttl, genre weight, genre1, genre2, ...
_LUA_APPLY = """
if not redis.call('SET', KEYS[1], '1', 'NX', 'EX', tonumber(ARGV[1])) then return 0 end
redis.call('HINCRBY', KEYS[2], ARGV[2], 1)
redis.call('HINCRBY', KEYS[2], 'events', 1)
redis.call('RPUSH', KEYS[3], ARGV[3])
redis.call('EXPIRE', KEYS[3], tonumber(ARGV[4]))
if KEYS[4] ~= '' then
  for i = 6, #ARGV do redis.call('HINCRBYFLOAT', KEYS[4], ARGV[i], tonumber(ARGV[5])) end
end
return 1
"""


class BanditStoreLike(Protocol):
    """What the learner needs of the bandit's artifact store (services.serving.runtime.BanditStore)."""

    def load_for_learning(self) -> tuple[VWPolicy, str]: ...

    def publish(self, policy: VWPolicy, last_update_id: str = "0-0", *, promote: bool = False,
                report: Mapping[str, object] | None = None) -> str: ...

    def promote(self, version: str, report: Mapping[str, object]) -> None: ...

    def refuse(self, version: str, report: Mapping[str, object]) -> None: ...

    def prune(self) -> None: ...


class ActivityLike(Protocol):
    """Per-minute activity counters for the web page (services.activity.ActivityRecorder)."""

    def record_reward(self, client: redis.Redis, action_key: str, reward: float, lag_s: float | None,
                      ts: float) -> None: ...


class FeedbackWorker:
    def __init__(self, settings: Settings, client: redis.Redis, keys: Keys, *, q2e_store: Q2EStore | None,
                 catalog: Catalog, bandit_store: BanditStoreLike, consumer: str | None = None,
                 activity: ActivityLike | None = None):
        self.settings = settings
        self.redis = client
        self.keys = keys
        self.q2e = q2e_store
        self.catalog = catalog
        self.bandit_store = bandit_store
        self.activity = activity
        self.consumer = consumer or f"{socket.gethostname()}-{os.getpid()}"
        self._apply = client.register_script(_LUA_APPLY)
        self.decisions = DecisionStore.from_settings(client, keys, settings)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.training_log = JsonlWriter(settings.logs_dir, "joined")
        self.learner: BanditLearner | None = None
        self.last_claim = 0.0
        self.last_sweep = 0.0
        self.ensure_group(client, keys)

    @staticmethod
    def ensure_group(client: redis.Redis, keys: Keys) -> None:
        try:
            client.xgroup_create(keys.feedback_stream, keys.group, id="0", mkstream=True)
        except redis.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    # --- the loop ----------------------------------------------------------------------------
    def run_once(self, block_ms: int = 500, count: int = 500) -> int:
        now = time.time()
        messages: list[tuple[bytes, dict[bytes, bytes]]] = []
        # Our own pending entries first (we may have crashed before XACK), then others' stale ones.
        for _, entries in self.redis.xreadgroup(self.keys.group, self.consumer, {self.keys.feedback_stream: "0"},
                                            count=count) or []:
            messages.extend(e for e in entries if e[1])
        if not messages and now - self.last_claim > 5.0:
            self.last_claim = now
            res = self.redis.xautoclaim(self.keys.feedback_stream, self.keys.group, self.consumer,
                                    min_idle_time=30_000, start_id="0-0", count=count)
            messages.extend(e for e in res[1] if e[1])
        if not messages:
            for _, entries in self.redis.xreadgroup(self.keys.group, self.consumer, {self.keys.feedback_stream: ">"},
                                                count=count, block=block_ms) or []:
                messages.extend(entries)
        if messages:
            self.process(messages)
        if now - self.last_sweep > 1.0:
            self.last_sweep = now
            self.sweep(now)
        if self.learner is not None:
            self.learner.step()
        return len(messages)

    def process(self, messages: list[tuple[bytes, dict[bytes, bytes]]]) -> None:
        events: list[tuple[bytes, FeedbackEvent]] = []
        bad: list[bytes] = []
        for mid, fields in messages:
            try:
                events.append((mid, decode_event(fields)))
            except (KeyError, ValueError) as exc:
                # Only our own ingest writes here; an undecodable entry would loop forever.
                log.error("dropping undecodable stream entry %s: %r", mid, exc)
                bad.append(mid)
        served = self.decisions.served(e.search_id for _, e in events)
        by_search: dict[str, list[FeedbackEvent]] = defaultdict(list)
        q2e_events = []
        pipe = self.redis.pipeline(transaction=False)
        for _, ev in events:
            shown = served.get(ev.search_id)
            genres: list[str] = []
            weight = 0.0
            t = self.catalog.by_id.get(ev.track_id)
            if ev.user_id and t is not None:
                # Normalized, because the ranker's affinity feature matches normalized genre names.
                genres = [normalize(g) for g in t.genres]
                weight = 1.0 if is_positive(ev, self.settings.reward) else -0.5
            self._apply(keys=[self.keys.applied(ev.event_id), self.keys.counts, self.keys.search_events(ev.search_id),
                              self.keys.user_genres(ev.user_id) if ev.user_id and genres else ""],
                        args=[MARKER_TTL_S, ev.type, ev.model_dump_json(), self.decisions.decision_ttl_s, weight,
                              *genres],
                        client=pipe)
            if shown is not None and shown.query_norm:
                by_search[ev.search_id].append(ev)
                if self.q2e is not None and self.settings.learn_q2e:
                    q2e_events.append(Q2EEvent(ev.event_id, shown.query_norm, ev.track_id, ev.type, ev.timestamp))
            else:
                metrics.ERRORS.labels(kind="feedback_decision_expired").inc()
        pipe.execute()
        if self.q2e is not None and self.settings.learn_q2e:
            for sid in by_search:
                self.q2e.impressions(served[sid].query_norm, served[sid].shown, sid, ts=served[sid].ts)
            if q2e_events:
                self.q2e.apply_events(q2e_events)
        # No search is rewarded here: every search waits for the end of its reward wait (sweep),
        # so acted-on and silent searches reach the bandit after the same delay.
        for _, ev in events:
            metrics.WORKER_EVENTS.labels(type=ev.type).inc()
        self.redis.xack(self.keys.feedback_stream, self.keys.group, *[m for m, _ in events], *bad)

    def finalize(self, rec: DecisionRecord) -> bool:
        """Rewards one search, once. Reads every applied event of the search from Redis."""
        raw = self.redis.lrange(self.keys.search_events(rec.search_id), 0, -1)
        events = [FeedbackEvent.model_validate_json(x) for x in raw]
        reward = action_reward(rec, rec.actions[rec.chosen], events, self.settings.reward)
        joined = JoinedRecord(**rec.model_dump(), events=events, reward=reward)
        payload = {"record": json.loads(joined.model_dump_json())}
        if rec.shadow:
            payload["subset_rewards"] = subset_rewards(rec, rec.actions, events, self.settings.reward)
        if self.q2e is not None and self.settings.learn_q2e and not (self.learner is not None and self.learner.paused):
            # Shown and not played is weak negative evidence, but not during a feedback outage.
            self.q2e.impressions(rec.query_norm, rec.served, rec.search_id, ts=rec.ts)
        return self.decisions.reward(rec.search_id, json.dumps(payload), self.keys.bandit_updates, self.keys.counts)

    def sweep(self, now: float) -> int:
        """Ends reward waits: searches past their deadline are rewarded with what they got (0 when
        nobody acted)."""
        due = self.decisions.due(now)
        if not due:
            return 0
        decisions = self.decisions.decisions(due)
        n = 0
        for sid in due:
            rec = decisions.get(sid)
            if rec is None:
                # Its decision expired (no worker within reward wait + grace): nothing to learn from.
                metrics.ERRORS.labels(kind="decision_expired_unrewarded").inc()
                self.decisions.forget(sid)
                continue
            n += self.finalize(rec)
        return n

    # --- threads -------------------------------------------------------------------------------
    def start(self) -> FeedbackWorker:
        self.learner = BanditLearner(self.settings, self.redis, self.keys, self.bandit_store, self.training_log,
                                     self.activity)
        self._thread = threading.Thread(target=self._run, name="feedback-worker", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        backoff = 0.5
        while not self._stop.is_set():
            try:
                self.run_once(block_ms=500)
                backoff = 0.5
            except (redis.RedisError, OSError) as exc:
                metrics.ERRORS.labels(kind="worker_redis").inc()
                log.warning("worker: redis unavailable (%s); retrying in %.1fs", exc, backoff)
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
            except Exception:
                log.exception("worker loop error")
                self._stop.wait(1.0)

    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.learner is not None:
            try:
                self.learner.checkpoint(force=True)
            except (redis.RedisError, OSError) as exc:
                log.warning("final bandit checkpoint failed: %s", exc)
            self.learner.release()
        self.training_log.close()


class BanditLearner:
    """Applies `bandit:updates` to the policy in order, checkpoints, publishes new versions.
    Holds a lease so only one process learns at a time."""

    LEASE_S = 15

    def __init__(self, settings: Settings, client: redis.Redis, keys: Keys, store: BanditStoreLike,
                 training_log: JsonlWriter, activity: ActivityLike | None = None):
        self.settings = settings
        self.redis = client
        self.keys = keys
        self.store = store  # services.serving.runtime.BanditStore
        self.training_log = training_log
        self.owner = f"{socket.gethostname()}-{os.getpid()}-{id(self)}"
        self.lease_key = f"{keys.prefix}:bandit:lease"
        self.policy: VWPolicy | None = None
        self.last_id = "0-0"
        self.since_checkpoint = 0
        self.applied = 0  # updates applied by this process (benchmarks watch it for the lag)
        self.last_checkpoint = time.monotonic()
        self.leader = False
        self.gate = BanditGate(settings.gate_tolerance)
        self.activity = activity
        self.recent_acted: deque[bool] = deque(maxlen=max(1, settings.bandit_silence_window))
        self.paused = False
        # The update ids of the last checkpoints. Updates before the oldest of them are learned
        # into every version a restart could resume from, so the stream is trimmed to it: Redis
        # holds a few checkpoints' worth of joined records, not the history.
        self.checkpointed: deque[str] = deque(maxlen=3)

    def _acquire(self) -> bool:
        ok = self.redis.set(self.lease_key, self.owner, nx=True, ex=self.LEASE_S)
        if not ok and self.redis.get(self.lease_key) == self.owner.encode():
            self.redis.expire(self.lease_key, self.LEASE_S)
            ok = True
        if ok and not self.leader:
            self.policy, self.last_id = self.store.load_for_learning()
            log.info("bandit learner: leader, resuming after update %s (model %s)", self.last_id,
                     getattr(self.policy, "version", None))
        self.leader = bool(ok)
        return self.leader

    def release(self) -> None:
        if self.leader and self.redis.get(self.lease_key) == self.owner.encode():
            self.redis.delete(self.lease_key)
        self.leader = False

    def step(self, count: int = 1000) -> int:
        if not self._acquire():
            return 0
        entries = self.redis.xrange(self.keys.bandit_updates, min=f"({self.last_id}", count=count) \
            if self.last_id != "0-0" else self.redis.xrange(self.keys.bandit_updates, count=count)
        for eid, fields in entries:
            self.apply(json.loads(fields[b"u"]), eid.decode())
        if entries:
            self.checkpoint()
        return len(entries)

    def apply(self, payload: dict[str, Any], entry_id: str) -> None:
        rec = JoinedRecord.model_validate(payload["record"])
        actions = [Action(tuple(a.arms), a.budget) for a in rec.actions]
        latency = sum(rec.retriever_ms.values()) if rec.retriever_ms else None
        self.recent_acted.append(bool(rec.events))
        window = self.settings.bandit_silence_window
        silent = window > 0 and len(self.recent_acted) >= window and not any(self.recent_acted)
        if silent:
            metrics.ERRORS.labels(kind="bandit_paused_feedback_silent").inc()
            if not self.paused:
                log.warning("bandit learner: none of the last %d searches got any feedback; pausing "
                            "bandit learning until feedback arrives again", window)
        self.paused = silent
        if self.settings.learn_bandit and not silent:
            # Progressive validation: the learning policy is scored on this search before it
            # learns from it (services.learning.gate.BanditGate).
            p_new = self.policy.decide(rec.context, actions).probabilities[rec.chosen]
            net = -self.policy.config.cost.cost(rec.reward, actions[rec.chosen], latency)
            self.gate.observe(p_new, rec.propensity, net)
            if rec.shadow and "subset_rewards" in payload:
                self.policy.learn_full_information(rec.context, actions, payload["subset_rewards"])
            else:
                self.policy.learn(rec.context, actions, rec.chosen, rec.reward, rec.propensity, latency)
        key = actions[rec.chosen].key
        metrics.REWARDED.labels(action=key).inc()
        metrics.REWARDS.labels(action=key).inc(rec.reward)
        first_event_ms = min((e.timestamp for e in rec.events), default=None)
        lag = max(0.0, time.time() - first_event_ms) if first_event_ms is not None else None
        if lag is not None:
            metrics.FEEDBACK_LAG.observe(lag)
        if self.activity is not None:
            self.activity.record_reward(self.redis, key, rec.reward, lag, time.time())
        self.training_log.write(rec.model_dump_json())
        self.last_id = entry_id
        self.since_checkpoint += 1
        self.applied += 1

    def checkpoint(self, force: bool = False) -> str | None:
        """Saves the learning state (a new version, resumable after a crash) and promotes it to
        serving only if the gate says it is no worse than the serving policy."""
        due = self.since_checkpoint >= self.settings.checkpoint_every or \
            time.monotonic() - self.last_checkpoint >= self.settings.checkpoint_seconds
        if not self.leader or self.since_checkpoint == 0 or not (due or force) or not self.settings.learn_bandit:
            return None
        result = self.gate.evaluate()
        version = self.store.publish(self.policy, self.last_id, promote=False)
        if result.promote:
            self.store.promote(version, result.report)
            decision = "promoted"
        elif result.report.get("clearly_worse"):
            # Refused on evidence (not for lack of it): logged, and the evidence window restarts.
            self.store.refuse(version, result.report)
            decision = "refused"
        else:
            decision = "held"  # kept for resuming; promoted once enough searches have been scored
        if decision != "held":
            self.gate.reset()
        self.store.prune()
        self.checkpointed.append(self.last_id)
        if len(self.checkpointed) == self.checkpointed.maxlen:
            self.redis.xtrim(self.keys.bandit_updates, minid=self.checkpointed[0], approximate=False)
        metrics.GATE_DECISIONS.labels(kind="bandit", decision=decision).inc()
        self.since_checkpoint = 0
        self.last_checkpoint = time.monotonic()
        return version


def training_log_files(settings: Settings) -> list[Path]:
    return sorted(Path(settings.logs_dir).glob("joined-*.jsonl"))
