"""Admission control for /search: how many searches run at once, and what happens past that.

A process runs Python one thread at a time (the GIL), so a search's work does not go faster
for being started early: with 16 searches in flight, each fanning out to its retrievers in one
thread pool, every arm queues behind the others' work, misses its deadline and is wasted, and
throughput falls to half of what 10 connections got (bench_load, 2026-12-02). So:

* at most `max_active` searches run at once; the others wait their turn in arrival order (an
  asyncio semaphore: waiting costs no thread);
* a search that starts while `shed_waiting` or more are still waiting behind it is *shed*: it
  runs only the cheapest good retriever (services.serving.pipeline), which answers in a few
  milliseconds and drains the queue instead of growing it. It is logged with the action that
  ran and propensity 1, so the bandit learns from it as from any fixed-policy search;
* a search that arrives while `max_waiting` are already waiting gets 503 with Retry-After at
  once: a client waiting for a full queue would time out anyway, and a load balancer can send
  it to another replica.

Counted in ltrr_searches_shed_total / ltrr_searches_rejected_total; ltrr_searches_waiting is
the queue depth.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from services import metrics


class Overloaded(Exception):
    """The wait queue is full: answer 503 without running the search."""


class SearchAdmission:
    def __init__(self, max_active: int, max_waiting: int, shed_waiting: int):
        """`shed_waiting` above `max_waiting` never sheds (the queue never gets that long)."""
        if max_active < 1 or max_waiting < 0 or shed_waiting < 0:
            raise ValueError("invalid admission settings")
        self.max_active, self.max_waiting, self.shed_waiting = max_active, max_waiting, shed_waiting
        self.active = 0
        self.waiting = 0
        # Created lazily: an asyncio primitive belongs to the loop that first awaits it, and the
        # app is built before uvicorn starts its loop.
        self._slots: asyncio.Semaphore | None = None

    @asynccontextmanager
    async def admit(self) -> AsyncIterator[bool]:
        """Waits for a slot; yields whether this search is shed. Raises Overloaded when the
        queue is full. Counters are plain ints: they change only on the event loop's thread."""
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_active)
        if self.active >= self.max_active and self.waiting >= self.max_waiting:
            metrics.SEARCHES_REJECTED.inc()
            raise Overloaded
        self.waiting += 1
        metrics.SEARCHES_WAITING.set(self.waiting)
        try:
            await self._slots.acquire()
        finally:
            self.waiting -= 1
            metrics.SEARCHES_WAITING.set(self.waiting)
        self.active += 1
        try:
            shed = self.waiting >= self.shed_waiting
            if shed:
                metrics.SEARCHES_SHED.inc()
            yield shed
        finally:
            self.active -= 1
            self._slots.release()
