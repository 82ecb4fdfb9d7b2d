"""Instantiation records: the phase timestamps of every cold start (seed 002 §3's VIM breakdown)."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass

PHASES = ("scheduled", "spawned", "shipped", "loaded", "ready", "first_response")
# Cold starts nobody waits for (the others' callers get the first response): what triggers
# a start is one of these, a request, or the event that woke the function (async, nats, …).
BACKGROUND_TRIGGERS = frozenset(
    {"scale", "autoscaler", "replacement", "packet", "deploy", "restart", "wake"}
)


@dataclass
class ColdStart:
    """Monotonic timestamps in seconds; ``accepted`` is when the triggering request arrived.

    ``spawned`` marks the shell acquired (taken from the prepared pool, or made on demand);
    ``shipped`` the function's code in place inside it with its limits and uid applied (for
    containers: the bundle sent over the stream and unpacked); ``loaded`` the handler imported.
    """

    instance_id: str
    trigger: str
    accepted: float
    shell: str = ""  # "prepared" (taken from the shell pool) or "fresh" (made on demand)
    scheduled: float = 0.0
    spawned: float = 0.0
    shipped: float = 0.0
    loaded: float = 0.0
    ready: float = 0.0
    first_response: float = 0.0
    error: str = ""

    def durations(self) -> dict[str, float]:
        """Seconds each phase took after the previous one, plus ``total``."""
        out: dict[str, float] = {}
        previous = self.accepted
        for phase in PHASES:
            stamp = getattr(self, phase)
            if not stamp:
                break
            out[phase] = stamp - previous
            previous = stamp
        out["total"] = previous - self.accepted
        return out

    def to_dict(self) -> dict[str, object]:
        data: dict[str, object] = asdict(self)
        data["durations_ms"] = {k: round(v * 1000, 3) for k, v in self.durations().items()}
        return data


def percentiles(records: list[ColdStart]) -> dict[str, dict[str, float]]:
    """p50/p90/p99 in milliseconds of each phase over complete records."""
    complete = [r.durations() for r in records if r.first_response]
    out: dict[str, dict[str, float]] = {}
    for phase in (*PHASES, "total"):
        values = sorted(d[phase] * 1000 for d in complete if phase in d)
        if not values:
            continue
        if len(values) == 1:
            p50 = p90 = p99 = values[0]
        else:
            cuts = statistics.quantiles(values, n=100, method="inclusive")
            p50, p90, p99 = cuts[49], cuts[89], cuts[98]
        out[phase] = {
            "p50": round(p50, 3),
            "p90": round(p90, 3),
            "p99": round(p99, 3),
            "n": len(values),
        }
    return out
