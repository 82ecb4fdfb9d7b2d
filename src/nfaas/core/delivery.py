"""How the platform delivers asynchronous work to a function: retries and queue limits.

One policy for async calls, trigger messages and cron fires alike: a failed attempt whose
status is retryable is tried again after an exponentially growing, jittered delay (or the
function's own Retry-After), until ``attempts`` is spent; then it goes to the dead letters.
"""

from __future__ import annotations

import random
from typing import Any

import msgspec

# 408 and 429 say "later"; 5xx covers a crashed, overloaded or timed-out instance.
DEFAULT_RETRY_ON = (408, 429, 500, 502, 503, 504)


class Retry(msgspec.Struct, frozen=True):
    attempts: int = 3  # deliveries in all, the first included
    on_status: tuple[int, ...] = DEFAULT_RETRY_ON
    backoff: float = 1.0  # delay before the second attempt, seconds
    max_backoff: float = 60.0
    multiplier: float = 2.0
    jitter: float = 0.2  # +- this fraction of the delay, so retries of a burst spread out

    def retryable(self, status: int) -> bool:
        return status in self.on_status

    def delay(self, attempt: int, retry_after: float | None = None, rng: Any = random) -> float:
        """Seconds to wait after failed attempt ``attempt`` (1-based). A Retry-After from the
        function wins over the schedule, capped at ``max_backoff``."""
        if retry_after is not None and retry_after >= 0:
            return float(min(retry_after, self.max_backoff))
        base = min(self.backoff * self.multiplier ** max(attempt - 1, 0), self.max_backoff)
        spread = base * self.jitter
        return float(max(0.0, min(base + rng.uniform(-spread, spread), self.max_backoff)))


class Queue(msgspec.Struct, frozen=True):
    concurrency: int = 0  # calls in flight at once; 0: scale.max x target_concurrency


def effective_concurrency(queue: Queue, scale_max: int, target_concurrency: int) -> int:
    return queue.concurrency or max(1, scale_max * target_concurrency)


def parse_retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (delta-seconds form; an HTTP date is taken as 'no hint')."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 and seconds == seconds else None
