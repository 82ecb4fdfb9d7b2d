"""Concurrency-based autoscaling in the manner of Knative's KPA: a stable and a panic window.

The desired replica count is the average observed concurrency (requests in flight plus queued)
over the stable window divided by the target concurrency per instance. When the short panic
window asks for at least ``panic_threshold`` times the current replicas, the scaler panics:
for one stable window it follows the panic window and never scales down.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field


@dataclass
class Kpa:
    stable_window: float = 60.0
    panic_window: float = 6.0
    panic_threshold: float = 2.0
    samples: deque[tuple[float, float]] = field(default_factory=deque)
    panic_until: float = 0.0

    def record(self, now: float, concurrency: float) -> None:
        self.samples.append((now, concurrency))
        horizon = now - self.stable_window
        while self.samples and self.samples[0][0] < horizon:
            self.samples.popleft()

    def _average(self, now: float, window: float) -> float:
        values = [c for t, c in self.samples if t >= now - window]
        return sum(values) / len(values) if values else 0.0

    def panicking(self, now: float) -> bool:
        return now < self.panic_until

    def desired(self, now: float, current: int, target: int, lo: int, hi: int) -> int:
        stable = math.ceil(self._average(now, self.stable_window) / target)
        panic = math.ceil(self._average(now, self.panic_window) / target)
        if current > 0 and panic >= self.panic_threshold * current:
            self.panic_until = now + self.stable_window
        want = max(panic, current) if self.panicking(now) else stable
        return max(lo, min(hi, want))
