"""What a search logs but nobody reads at once, written off the request path.

Before a /search response is sent, the pipeline writes (one Redis round trip) what a client can
use right after it: the served key that /feedback validates against and the ranked head that
later pages are cut from (services.decision_store). The rest is only read later: the full
DecisionRecord (~10 kB of JSON, read by the worker when the reward wait ends, 30 s by default)
with the reward deadline in `pending` (written after it, so a search is never due before its
record is stored), its line in the decisions JSONL log, and the web page's activity counters.
This writer does those on one thread, up to 64 searches per Redis round trip.

What it promises:
* bounded: at most `max_pending` records wait; a search that finds the queue full waits for room
  (back-pressure, visible as its `log` stage) rather than dropping a record;
* nothing accepted is lost on a clean stop: `close()` (Runtime.close, on SIGTERM through the
  server's lifespan) writes everything queued before Redis and the log are closed; `flush()`
  waits for it;
* on a crash (SIGKILL, OOM) the records still queued, at most `max_pending` and normally the last
  few milliseconds' worth, are lost: their searches were answered and their feedback is accepted
  and reaches the click memory (the served key was written first), but they get no line in the
  decisions log and no bandit reward (the worker drops a due search without a decision, as when
  one expires), exactly as if Redis had been down for that moment;
* Redis down: the batch is counted (ltrr_errors_total{kind="redis_decision"}) and dropped, as the
  synchronous write did before; the JSONL lines are still written.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

import redis

from logged.records import DecisionRecord
from services import metrics
from services.decision_store import DecisionStore

log = logging.getLogger(__name__)
_BATCH = 64  # records per Redis round trip, at most


class LineLog(Protocol):
    """services.jsonl_log.JsonlWriter: appends a line on its own thread."""

    def write(self, line: str) -> None: ...


class SearchActivity(Protocol):
    """Per-minute counters for the web page's learning view (services.activity.ActivityRecorder),
    written in the writer's round trip with the decision."""

    def record_search(self, pipe: redis.client.Pipeline, action_key: str, explored: bool,
                      timings_ms: Mapping[str, float], ts: float) -> None: ...


@dataclass(frozen=True)
class _Pending:
    record: DecisionRecord
    timings_ms: Mapping[str, float]
    now: float


class DecisionWriter:
    def __init__(self, client: redis.Redis | None, store: DecisionStore | None, decision_log: LineLog | None,
                 activity: SearchActivity | None, *, max_pending: int = 1024):
        self.redis, self.store, self.decision_log, self.activity = client, store, decision_log, activity
        # Items: a record to write, an Event to set once everything queued before it is written
        # (flush), or None (stop).
        self._q: queue.Queue[_Pending | threading.Event | None] = queue.Queue(maxsize=max_pending)
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="decision-writer", daemon=True)
        self._thread.start()

    def submit(self, record: DecisionRecord, timings_ms: Mapping[str, float], now: float) -> None:
        """Queues one search's record; blocks only while `max_pending` are already waiting."""
        if self._closed:  # after close() nobody drains the queue: write it here
            self._write([_Pending(record, timings_ms, now)])
            return
        self._q.put(_Pending(record, timings_ms, now))

    def flush(self, timeout: float = 10.0) -> bool:
        """Waits until everything submitted before this call is written; False on timeout."""
        if self._closed:
            return True
        done = threading.Event()
        try:
            self._q.put(done, timeout=timeout)
        except queue.Full:
            return False
        return done.wait(timeout)

    @property
    def pending(self) -> int:
        return self._q.qsize()

    def close(self, timeout: float = 30.0) -> None:
        """Writes what is queued, then stops the thread; a later submit writes synchronously."""
        if self._closed:
            return
        self._q.put(None)
        self._thread.join(timeout)
        self._closed = True

    # --- the writer thread -----------------------------------------------------------------
    def _run(self) -> None:
        stop = False
        while not stop:
            batch: list[_Pending] = []
            done: list[threading.Event] = []
            item = self._q.get()
            while True:
                if item is None:
                    stop = True
                elif isinstance(item, threading.Event):
                    done.append(item)
                else:
                    batch.append(item)
                if len(batch) >= _BATCH or stop:
                    break
                try:
                    item = self._q.get_nowait()
                except queue.Empty:
                    break
            if batch:
                try:
                    self._write(batch)
                except Exception:  # a bug here must not stop the thread: later records still go out
                    log.exception("writing %d decision records failed", len(batch))
            for event in done:
                event.set()
        # Stopped: anything put after the stop marker (a submit racing close) is written too.
        rest: list[_Pending] = []
        waiting: list[threading.Event] = []
        while True:
            try:
                item = self._q.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, _Pending):
                rest.append(item)
            elif isinstance(item, threading.Event):
                waiting.append(item)
        if rest:
            self._write(rest)
        for event in waiting:
            event.set()

    def _write(self, batch: list[_Pending]) -> None:
        bodies = [p.record.model_dump_json() for p in batch]
        if self.decision_log is not None:
            for body in bodies:
                self.decision_log.write(body)
        if self.redis is None or self.store is None:
            return
        try:
            pipe = self.redis.pipeline(transaction=False)
            for p, body in zip(batch, bodies, strict=True):
                self.store.stage_decision(pipe, p.record.search_id, body, p.now)
                if self.activity is not None:
                    rec = p.record
                    probs = rec.probabilities
                    explored = bool(probs) and probs[rec.chosen] < max(probs)
                    self.activity.record_search(pipe, rec.actions[rec.chosen].key, explored, p.timings_ms, p.now)
            pipe.execute()
        except (redis.RedisError, OSError) as exc:
            metrics.ERRORS.labels(kind="redis_decision").inc(len(batch))
            log.warning("could not store %d decision records in redis: %s", len(batch), exc)
