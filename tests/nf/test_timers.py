"""Timers: one-shot and periodic callbacks fire in deadline order when the clock passes them."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nfaas.nf.timers import Timers


def test_once_fires_once_when_due() -> None:
    timers = Timers()
    seen: list[float] = []
    timers.once(seen.append, at=5.0)
    assert timers.advance(4.999) == 0
    assert timers.advance(5.0) == 1
    assert timers.advance(100.0) == 0
    assert seen == [5.0]
    assert len(timers) == 0


def test_once_after_is_relative_to_the_clock() -> None:
    timers = Timers(now=10.0)
    seen: list[float] = []
    timers.once(seen.append, after=2.5)
    timers.advance(12.0)
    timers.advance(13.0)
    assert seen == [13.0]


def test_every_fires_each_period_and_coalesces_a_gap() -> None:
    timers = Timers()
    seen: list[float] = []
    t = timers.every(1.0, seen.append)
    for now in (0.5, 1.0, 1.5, 2.0):
        timers.advance(now)
    assert seen == [1.0, 2.0]
    timers.advance(10.5)  # missed 3..10: fires once, then resumes on the period grid
    assert seen == [1.0, 2.0, 10.5]
    assert t.deadline == 11.0
    timers.advance(11.0)
    assert seen[-1] == 11.0


def test_every_with_catch_up_fires_per_missed_period() -> None:
    timers = Timers()
    seen: list[float] = []
    timers.every(1.0, seen.append, start=1.0, catch_up=True)
    assert timers.advance(4.2) == 4
    assert len(seen) == 4


def test_cancel_and_self_cancel() -> None:
    timers = Timers()
    seen: list[str] = []
    a = timers.once(lambda now: seen.append("a"), at=1.0)
    a.cancel()

    def stop_after_two(now: float) -> None:
        seen.append("b")
        if len([s for s in seen if s == "b"]) == 2:
            b.cancel()

    b = timers.every(1.0, stop_after_two)
    for now in range(1, 6):
        timers.advance(float(now))
    assert seen == ["b", "b"]
    assert timers.next_deadline() is None


def test_earliest_first_and_ties_in_creation_order() -> None:
    timers = Timers()
    order: list[str] = []
    timers.once(lambda now: order.append("late"), at=3.0)
    timers.once(lambda now: order.append("first"), at=1.0)
    timers.once(lambda now: order.append("second"), at=1.0)
    timers.advance(5.0)
    assert order == ["first", "second", "late"]


def test_timer_scheduled_by_a_callback_waits_for_the_next_advance() -> None:
    timers = Timers()
    count = [0]

    def again(now: float) -> None:
        count[0] += 1
        timers.once(again, after=0.0)  # due immediately, but must not loop forever

    timers.once(again, at=1.0)
    timers.advance(1.0)
    assert count[0] == 1
    timers.advance(1.0)
    assert count[0] == 2


def test_exception_propagates_and_other_timers_still_run_later() -> None:
    timers = Timers()
    seen: list[str] = []

    def boom(now: float) -> None:
        raise RuntimeError("boom")

    timers.once(boom, at=1.0)
    timers.once(lambda now: seen.append("ok"), at=2.0)
    with pytest.raises(RuntimeError, match="boom"):
        timers.advance(3.0)
    assert seen == []
    timers.advance(3.0)
    assert seen == ["ok"]


def test_time_does_not_go_backwards() -> None:
    timers = Timers()
    timers.advance(10.0)
    timers.advance(5.0)
    assert timers.now == 10.0
    seen: list[float] = []
    timers.once(seen.append, after=1.0)
    timers.advance(10.5)
    assert seen == []
    timers.advance(11.0)
    assert seen == [11.0]


def test_bad_arguments_are_named() -> None:
    timers = Timers()
    with pytest.raises(ValueError, match="exactly one of at= or after="):
        timers.once(print)
    with pytest.raises(ValueError, match="period must be a positive"):
        timers.every(0.0, print)
    with pytest.raises(ValueError, match="finite"):
        timers.once(print, at=float("inf"))


@settings(max_examples=60, deadline=None)
@given(
    deadlines=st.lists(st.floats(0, 100, allow_nan=False), max_size=20),
    steps=st.lists(st.floats(0, 120, allow_nan=False), min_size=1, max_size=8),
)
def test_one_shots_fire_exactly_when_passed_in_deadline_order(
    deadlines: list[float], steps: list[float]
) -> None:
    timers = Timers()
    fired: list[tuple[float, int]] = []
    for i, d in enumerate(deadlines):
        timers.once(lambda now, i=i, d=d: fired.append((d, i)), at=d)
    clock = 0.0
    for step in sorted(steps):
        clock = step
        timers.advance(clock)
        assert sorted(i for _, i in fired) == [i for i, d in enumerate(deadlines) if d <= clock]
    assert fired == sorted(fired)  # by deadline, then creation order
