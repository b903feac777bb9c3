"""Admission control for /search (services.serving.admission): a bounded number of searches run
at once, a long queue sheds to the cheapest retriever, a full one answers 503 at once."""

from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest

from services.serving.admission import Overloaded, SearchAdmission
from services.serving.api import create_app
from services.serving.runtime import Runtime


def test_searches_wait_for_a_slot_and_a_full_queue_is_refused() -> None:
    async def scenario() -> tuple[list[object], int]:
        gate = SearchAdmission(max_active=1, max_waiting=2, shed_waiting=1)
        release = asyncio.Event()
        order: list[object] = []
        peak = 0

        async def one(name: str, hold: bool) -> None:
            nonlocal peak
            try:
                async with gate.admit() as shed:
                    peak = max(peak, gate.active)
                    order.append((name, shed))
                    if hold:
                        await release.wait()
            except Overloaded:
                order.append((name, "503"))

        first = asyncio.create_task(one("a", hold=True))
        await asyncio.sleep(0)
        waiting = [asyncio.create_task(one(n, hold=False)) for n in ("b", "c")]
        await asyncio.sleep(0)
        await one("d", hold=False)  # two already wait: refused at once, without waiting
        release.set()
        await asyncio.gather(first, *waiting)
        return order, peak

    order, peak = asyncio.run(scenario())
    # "b" starts while "c" still waits behind it (1 >= shed_waiting): shed; "c" starts alone.
    assert order == [("a", False), ("d", "503"), ("b", True), ("c", False)]
    assert peak == 1


@pytest.mark.parametrize("kwargs", [{"max_active": 0, "max_waiting": 1, "shed_waiting": 1},
                                    {"max_active": 1, "max_waiting": -1, "shed_waiting": 1},
                                    {"max_active": 1, "max_waiting": 1, "shed_waiting": -1}])
def test_invalid_admission_settings_are_refused(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        SearchAdmission(**kwargs)


@pytest.fixture()
def runtime(keyed_service) -> Runtime:
    return keyed_service[0]


def test_a_shed_search_runs_the_cheapest_good_arm_alone_and_logs_it(runtime: Runtime) -> None:
    pipe = runtime.pipeline
    arm = pipe.budgets.cheapest_good(pipe.parts.retrievers, pipe.fallback_arm)
    out = pipe.search("shape of you", 10, analytics=False, shed=True)
    assert set(out.record.candidates) == {arm}
    assert out.record.policy == f"shed:{arm}" and out.record.propensity == 1.0
    assert out.record.actions[out.record.chosen].arms == (arm,)
    assert out.record.served  # a shed search still answers, ranked as usual


def test_over_http_a_full_queue_gets_503_with_retry_after_and_the_rest_answer(
        runtime: Runtime, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "settings", runtime.settings.model_copy(
        update={"max_active_searches": 1, "search_queue": 1, "shed_queue": 1}))
    app = create_app(runtime)
    real_search = runtime.pipeline.search
    running = threading.Semaphore(0)
    concurrent = {"now": 0, "peak": 0}
    lock = threading.Lock()

    def slow_search(*args: object, **kwargs: object) -> object:
        with lock:
            concurrent["now"] += 1
            concurrent["peak"] = max(concurrent["peak"], concurrent["now"])
        running.release()
        time.sleep(0.3)  # hold the only slot while the other requests arrive
        try:
            return real_search(*args, **kwargs)
        finally:
            with lock:
                concurrent["now"] -= 1

    monkeypatch.setattr(runtime.pipeline, "search", slow_search)

    async def burst() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://ltrr") as client:
            first = asyncio.create_task(client.get("/search", params={"q": "shape of you", "analytics": "false"}))
            await asyncio.to_thread(running.acquire)  # the first search holds the slot
            rest = [asyncio.create_task(client.post("/search", json={"q": q, "analytics": False}))
                    for q in ("bad guy", "old town road", "blinding lights")]
            return [await first, *[await r for r in rest]]

    responses = asyncio.run(burst())
    codes = [r.status_code for r in responses]
    assert codes[0] == 200 and sorted(codes[1:]) == [200, 503, 503], codes
    refused = [r for r in responses if r.status_code == 503]
    for r in refused:
        assert r.headers["retry-after"] == "1" and r.json()["error"]["code"] == "overloaded"
    assert concurrent["peak"] == 1  # never two searches at once with one slot
    # the second request waited for the slot and then answered (with nobody behind it: not shed)
    served = [r.json() for r in responses if r.status_code == 200]
    assert all(body["results"] for body in served)
