"""A rate limiter for NF graphs: token buckets keyed per source, destination, flow or globally.

`RateLimiter(bytes=Limit(...), packets=Limit(...), key="src")` polices batches;
`RateLimit(limiter)` is the graph operator (drop what exceeds, or split it onto a second
output), and `ratelimit_graph(limiter)` a ready graph from port "in" to port "out".

Keys: "global" (one bucket for everything), "src" / "dst" (per IPv4 or IPv6 address; packets
without an IP header share the key 0), "flow" (per direction of a 5-tuple, `flow_hash`), or
a function `(batch, headers) -> uint64 keys`. Costs: a packet's frame length in bytes
(Ethernet header included, no FCS) and one packet. Per-key and global limits combine by
chaining two operators (`pipe.then(per_source).then(overall)`): the second sees only what
the first let through, as chained policers do.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from nfaas.nf.batch import PacketBatch
from nfaas.nf.flowtable import mix64
from nfaas.nf.graph import Fork, Graph, Pipe
from nfaas.nf.headers import Headers, flow_hash
from nfaas.nf.operators import EdgeType, Operator, Output, select_output
from nfaas.nf.state import schedule_expiry
from nfaas.nf.timers import Timers
from nfaas.vnfs.common import check_positive
from nfaas.vnfs.ratelimit.buckets import Limit, TokenBuckets, Verdict

__all__ = [
    "KEYS",
    "KeyFn",
    "RateLimit",
    "RateLimitStats",
    "RateLimiter",
    "rate_limit",
    "rate_limit_split",
    "ratelimit_graph",
]

KeyFn = Callable[[PacketBatch, Headers], NDArray[np.uint64]]
KEYS = ("global", "src", "dst", "flow")
_V6 = np.uint64(1 << 63)  # keeps IPv6 hashes apart from IPv4 addresses


def _address_key(h: Headers, side: str) -> NDArray[np.uint64]:
    v4 = getattr(h, f"ipv4_{side}").astype(np.uint64)
    hi, lo = getattr(h, f"ipv6_{side}_hi"), getattr(h, f"ipv6_{side}_lo")
    v6 = (mix64(hi) ^ lo) | _V6
    return np.where(h.ip_version == 6, v6, np.where(h.ip_version == 4, v4, np.uint64(0)))


def source_key(batch: PacketBatch, h: Headers) -> NDArray[np.uint64]:
    return _address_key(h, "src")


def destination_key(batch: PacketBatch, h: Headers) -> NDArray[np.uint64]:
    return _address_key(h, "dst")


def flow_key(batch: PacketBatch, h: Headers) -> NDArray[np.uint64]:
    return flow_hash(h)


_KEY_FNS: dict[str, KeyFn] = {"src": source_key, "dst": destination_key, "flow": flow_key}


@dataclass
class RateLimitStats:
    conform_packets: int = 0
    conform_bytes: int = 0
    exceed_packets: int = 0
    exceed_bytes: int = 0
    no_bucket_packets: int = 0
    expired_buckets: int = 0


class RateLimiter:
    """Token-bucket policing of batches: bytes and/or packets, with burst, per key."""

    def __init__(
        self,
        *,
        bytes: Limit | None = None,
        packets: Limit | None = None,
        key: str | KeyFn = "global",
        max_buckets: int | None = None,
        idle_timeout: float | None = None,
        sweep_every: float = 10.0,
    ) -> None:
        if isinstance(key, str) and key not in KEYS:
            raise ValueError(f"key must be one of {KEYS} or a function, got {key!r}")
        check_positive("sweep_every", sweep_every, "seconds")
        self.buckets = TokenBuckets(
            bytes, packets, idle_timeout=idle_timeout, max_buckets=max_buckets
        )
        self.key = key
        self.sweep_every = sweep_every
        self.stats = RateLimitStats()

    @property
    def needs_headers(self) -> bool:
        return self.key != "global"

    def keys(self, batch: PacketBatch, headers: Headers | None) -> NDArray[np.uint64] | None:
        if self.key == "global":
            return None
        if headers is None:
            raise ValueError(f"key {self.key!r} needs parsed packets")
        fn = _KEY_FNS[self.key] if isinstance(self.key, str) else self.key
        return np.asarray(fn(batch, headers))

    def police(self, batch: PacketBatch, headers: Headers | None, now: float) -> NDArray[np.uint8]:
        """A Verdict per packet of the batch (packets of one key take tokens in order)."""
        verdict = self.buckets.police(self.keys(batch, headers), batch.lengths, now)
        s = self.stats
        sizes = batch.lengths.astype(np.int64)
        for value, pk, by in (
            (Verdict.CONFORM, "conform_packets", "conform_bytes"),
            (Verdict.EXCEED, "exceed_packets", "exceed_bytes"),
        ):
            hit = verdict == value
            setattr(s, pk, getattr(s, pk) + int(np.count_nonzero(hit)))
            setattr(s, by, getattr(s, by) + int(sizes[hit].sum()))
        s.no_bucket_packets += int(np.count_nonzero(verdict == Verdict.NO_BUCKET))
        return verdict

    def expire(self, now: float) -> int:
        """Forget buckets that are full again; returns how many."""
        expired = self.buckets.expire(now)
        self.stats.expired_buckets += expired
        return expired


class RateLimit(Operator):
    """Graph operator: one output "out" (exceeding packets dropped as "rate", packets
    refused a bucket as "no_bucket"), or with `split=True` outputs "conform" and "exceed"
    (nothing dropped; a no-bucket packet goes to "exceed")."""

    kind = "ratelimit"

    def __init__(
        self, limiter: RateLimiter, name: str | None = None, *, split: bool = False
    ) -> None:
        super().__init__(name, outputs=("conform", "exceed") if split else ("out",))
        self.limiter = limiter
        self.split = split
        self.needs = EdgeType.PARSED if limiter.needs_headers else None

    def attach(self, timers: Timers) -> None:
        schedule_expiry(self, timers, self.limiter.sweep_every, self.limiter.expire)

    def process(self, batch: PacketBatch, headers: Headers | None, now: float) -> list[Output]:
        verdict = self.limiter.police(batch, headers, now)
        ok = verdict == Verdict.CONFORM
        self.counters.extra["buckets"] = len(self.limiter.buckets)
        conform = select_output(batch, headers, np.flatnonzero(ok))
        if self.split:
            return [conform, select_output(batch, headers, np.flatnonzero(~ok))]
        self.drop("rate", int(np.count_nonzero(verdict == Verdict.EXCEED)))
        self.drop("no_bucket", int(np.count_nonzero(verdict == Verdict.NO_BUCKET)))
        return [conform]


def rate_limit(limiter: RateLimiter, name: str | None = None) -> Callable[[Pipe], Pipe]:
    """A fragment for `pipe.apply(...)`: drop what exceeds the limit."""
    return lambda pipe: pipe.then(RateLimit(limiter, name))


def rate_limit_split(pipe: Pipe, limiter: RateLimiter, name: str | None = None) -> Fork:
    """Split `pipe` into "conform" and "exceed" outputs (to mark, queue or drop elsewhere)."""
    return pipe.fork(RateLimit(limiter, name, split=True))


def ratelimit_graph(
    limiter: RateLimiter, name: str = "ratelimit", **graph_options: object
) -> Graph:
    """Port "in" → (parse, keeping malformed packets, when the key needs headers) → police →
    port "out". Packets leave as they came, byte for byte."""
    g = Graph(name, **graph_options)  # type: ignore[arg-type]
    pipe = g.source("in")
    if limiter.needs_headers:
        pipe = pipe.parse(drop_invalid=False)
    pipe.then(RateLimit(limiter, "police")).emit("out")
    g.sink("out")
    return g
