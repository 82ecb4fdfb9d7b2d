"""The KPA: stable window average, panic mode, bounds."""

from __future__ import annotations

from nfaas.control.autoscaler import Kpa


def test_stable_window_average_divided_by_target() -> None:
    kpa = Kpa(stable_window=60, panic_window=6)
    for t in range(60):
        kpa.record(float(t), 10.0)
    assert kpa.desired(59.0, current=5, target=2, lo=0, hi=100) == 5


def test_bounds_are_respected() -> None:
    kpa = Kpa()
    kpa.record(0.0, 1000.0)
    assert kpa.desired(0.0, current=1, target=1, lo=0, hi=4) == 4
    assert Kpa().desired(0.0, current=0, target=1, lo=2, hi=4) == 2


def test_burst_enters_panic_and_never_scales_down_during_it() -> None:
    kpa = Kpa(stable_window=60, panic_window=6)
    for t in range(54):
        kpa.record(float(t), 1.0)
    for t in range(54, 60):
        kpa.record(float(t), 20.0)  # burst in the last 6 s
    # panic window (t >= 53): one sample of 1 and six of 20 -> ceil(121 / 7) = 18
    assert kpa.desired(59.0, current=1, target=1, lo=0, hi=100) == 18
    assert kpa.panicking(59.0)
    for t in range(60, 70):
        kpa.record(float(t), 0.0)  # burst over, but still panicking: keep current
    assert kpa.desired(69.0, current=20, target=1, lo=0, hi=100) == 20


def test_old_samples_leave_the_stable_window() -> None:
    kpa = Kpa(stable_window=10, panic_window=2)
    kpa.record(0.0, 50.0)
    kpa.record(20.0, 0.0)
    assert kpa.desired(20.0, current=0, target=1, lo=0, hi=100) == 0
