"""The retriever timeout policy (services.serving.arm_budgets) on its own: deadlines from measured latency,
the cap before anything is measured, timeouts pushing a deadline up, the cheapest good arm."""

from __future__ import annotations

import pytest

from services.serving.arm_budgets import ArmBudgets


def test_the_cap_holds_until_an_arm_is_measured() -> None:
    b = ArmBudgets(80.0, min_samples=32)
    for _ in range(31):
        b.observe("dense", 5.0, found=True)
    assert b.deadline_ms("dense") == 80.0 and b.deadline_ms("never-ran") == 80.0
    b.observe("dense", 5.0, found=True)
    assert b.deadline_ms("dense") == 40.0  # 4 x 5 ms is below the default 40 ms floor


def test_the_deadline_is_a_multiple_of_the_p95_between_floor_and_cap() -> None:
    b = ArmBudgets(80.0, factor=3.0, floor_ms=2.0)
    for i in range(96):
        b.observe("xr", 1.0 + i % 10, found=True)  # 1..10 ms: p95 = 10 ms
    assert b.deadline_ms("xr") == pytest.approx(30.0)
    for _ in range(256):
        b.observe("slow", 60.0, found=True)
    assert b.deadline_ms("slow") == 80.0  # 3 x 60 ms, capped


def test_timeouts_push_an_arm_deadline_toward_the_cap() -> None:
    b = ArmBudgets(80.0, factor=3.0, floor_ms=5.0)
    for _ in range(200):
        b.observe("dense", 4.0, found=True)
    tight = b.deadline_ms("dense")
    for _ in range(30):  # an overloaded stretch: the arm misses its deadline again and again
        b.observe("dense", tight, found=False)
    assert tight < b.deadline_ms("dense") <= 80.0


def test_the_cheapest_good_arm_is_measured_not_configured() -> None:
    b = ArmBudgets(80.0)
    assert b.cheapest_good(["lexical", "dense"], default="lexical") == "lexical"  # nothing measured yet
    for _ in range(64):
        b.observe("q2e", 0.3, found=False)  # fastest, but empty for queries it never saw
        b.observe("lexical", 2.0, found=True)
        b.observe("dense", 6.0, found=True)
    assert b.cheapest_good(["lexical", "dense", "q2e"], default="dense") == "lexical"
    assert b.cheapest_good(["dense", "q2e"], default="lexical") == "dense"


@pytest.mark.parametrize("kwargs", [{"cap_ms": 0}, {"cap_ms": 80, "factor": 0}, {"cap_ms": 80, "floor_ms": -1},
                                    {"cap_ms": 80, "window": 8, "min_samples": 32}])
def test_nonsense_settings_are_refused(kwargs: dict) -> None:
    cap = kwargs.pop("cap_ms")
    with pytest.raises(ValueError):
        ArmBudgets(cap, **kwargs)
