"""Scheduled events for NF graphs: one-shot and periodic callbacks driven by a caller's clock.

NetBricks' fifth abstraction: work that is not triggered by a packet (expiry sweeps, stats
export, rate-limiter refills). `Timers` keeps pending callbacks in a binary heap ordered by
deadline. Nothing here reads a wall clock: the owner calls `advance(now)` with the time it
uses for packets (the graph does so before each batch, and `Graph.tick(now)` between batches),
so tests and pcap replays are deterministic.

Per-flow timeouts are not timers: state tables expire flows with one vectorised sweep, which a
single periodic timer runs. The heap therefore holds few entries (one per operator job), and
a heap is simpler than a timing wheel at that size.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass, field

__all__ = ["Timer", "Timers"]

Callback = Callable[[float], None]


@dataclass(eq=False)
class Timer:
    """A scheduled callback; `fn(now)` runs when `advance` passes `deadline`.

    `period` is None for a one-shot timer. A periodic timer re-arms itself before its callback
    runs (so a callback may cancel it). With `catch_up=False` (the default) a periodic timer
    that missed several periods fires once and moves on to its next deadline after `now`;
    with `catch_up=True` it fires once per missed period.
    """

    deadline: float
    fn: Callback
    period: float | None = None
    name: str = ""
    catch_up: bool = False
    fired: int = 0
    active: bool = True
    _seq: int = field(default=0, repr=False)

    def cancel(self) -> None:
        """Stop the timer; it is dropped from the heap lazily."""
        self.active = False


class Timers:
    """A heap of timers advanced by an explicit clock."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = float(now)
        self._heap: list[tuple[float, int, Timer]] = []
        self._seq = 0

    def __len__(self) -> int:
        """Active timers (cancelled ones still in the heap are not counted)."""
        return sum(1 for _, _, t in self._heap if t.active)

    def _push(self, timer: Timer) -> None:
        self._seq += 1
        timer._seq = self._seq
        heapq.heappush(self._heap, (timer.deadline, timer._seq, timer))

    def once(
        self,
        fn: Callback,
        *,
        at: float | None = None,
        after: float | None = None,
        name: str = "",
    ) -> Timer:
        """Run `fn(now)` once, at absolute time `at` or `after` seconds from the current time."""
        if (at is None) == (after is None):
            raise ValueError("once(): give exactly one of at= or after=")
        deadline = float(at) if at is not None else self.now + float(after or 0.0)
        if not math.isfinite(deadline):
            raise ValueError(f"once(): deadline must be finite, got {deadline}")
        timer = Timer(deadline, fn, None, name or getattr(fn, "__name__", ""))
        self._push(timer)
        return timer

    def every(
        self,
        period: float,
        fn: Callback,
        *,
        start: float | None = None,
        name: str = "",
        catch_up: bool = False,
    ) -> Timer:
        """Run `fn(now)` every `period` seconds, first at `start` (default: now + period)."""
        if not (period > 0 and math.isfinite(period)):
            raise ValueError(f"every(): period must be a positive number of seconds, got {period}")
        first = self.now + period if start is None else float(start)
        timer = Timer(first, fn, float(period), name or getattr(fn, "__name__", ""), catch_up)
        self._push(timer)
        return timer

    def next_deadline(self) -> float | None:
        """The earliest deadline of an active timer, or None."""
        while self._heap and not self._heap[0][2].active:
            heapq.heappop(self._heap)
        return self._heap[0][0] if self._heap else None

    def advance(self, now: float) -> int:
        """Fire every timer due at or before `now`, earliest first; returns how many fired.

        Time never goes backwards: an earlier `now` than the last one is ignored. Timers
        created by callbacks during this call fire at the next `advance` at the earliest, so a
        callback that re-schedules itself "now" cannot loop forever. An exception from a
        callback propagates; the timers not yet run stay scheduled for the next call.
        """
        self.now = max(self.now, float(now))
        limit = self._seq
        deferred: list[tuple[float, int, Timer]] = []
        fired = 0
        try:
            while self._heap and self._heap[0][0] <= self.now:
                entry = heapq.heappop(self._heap)
                deadline, seq, timer = entry
                if not timer.active or seq != timer._seq:
                    continue
                if seq > limit:
                    deferred.append(entry)
                    continue
                self._rearm(timer, deadline)
                timer.fired += 1
                fired += 1
                timer.fn(self.now)
        finally:
            for entry in deferred:
                heapq.heappush(self._heap, entry)
        return fired

    def _rearm(self, timer: Timer, deadline: float) -> None:
        if timer.period is None:
            timer.active = False
            return
        if timer.catch_up:
            timer.deadline = deadline + timer.period
            # Keep the sequence number: a catching-up timer belongs to this advance.
            heapq.heappush(self._heap, (timer.deadline, timer._seq, timer))
            return
        missed = math.floor((self.now - deadline) / timer.period) + 1
        timer.deadline = deadline + missed * timer.period
        self._push(timer)
