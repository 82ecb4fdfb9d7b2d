"""Token buckets for bytes and/or packets, many at once, policing whole batches.

A bucket holds up to `burst` tokens and gains `rate` tokens per second. A packet conforms
when every enabled bucket of its key holds at least its cost (its length in bytes; one
packet) and then takes that cost from each; a packet that does not conform takes nothing
(the classic single-rate policer, RFC 2697 without the excess bucket, Linux `tc police`).

Time is the batch's `now`: buckets refill once per batch, then the batch's packets take
tokens in order. Within a batch this is exact, not approximate: for each key the longest
prefix of packets that fits is found with one cumulative sum; after the first packet that
does not fit, a smaller later one may still fit the remainder (bytes mode), so a few
vectorised rounds hand out what is left — all keys at once, each round removing every
candidate that can no longer fit. The remainder is below one packet's size, so rounds are
few; past `MAX_ROUNDS` the rest finishes in a plain loop. Costs are integers and the
remainders are computed exactly, so the verdicts equal a packet-by-packet reference.

Time may step back (a late batch): a bucket is then not refilled, it keeps what it had
(each bucket refills from the latest time it saw). Buckets live in a `FlowState` keyed by
uint64. A bucket idle for as long as it takes to refill completely is full, so forgetting
it changes nothing: the idle timeout is never shorter than that. Except for a batch
stamped before the sweep that forgot it: at that earlier time the bucket may not have
been full yet, and a forgotten key cannot be told from a new one. So an expiry sweep at
`now` also sets the buckets' clock: a later batch stamped earlier is policed as of the
latest sweep, and then a forgotten bucket and a remembered one hold the same.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from nfaas.nf.flowtable import as_keys
from nfaas.nf.state import FlowState

__all__ = ["MAX_ROUNDS", "Limit", "TokenBuckets", "Verdict"]

MAX_ROUNDS = 32

_FIELDS = np.dtype([("bytes", np.float64), ("packets", np.float64), ("last", np.float64)])


class Verdict(enum.IntEnum):
    """Per-packet outcome of policing."""

    CONFORM = 0
    EXCEED = 1
    NO_BUCKET = 2  # a new key found the bucket table full (max_buckets)


@dataclass(frozen=True)
class Limit:
    """`rate` tokens per second into a bucket of `burst` tokens (bytes or packets)."""

    rate: float
    burst: float

    def __post_init__(self) -> None:
        for name in ("rate", "burst"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value!r}")

    @property
    def fill_time(self) -> float:
        """Seconds an empty bucket takes to fill."""
        return self.burst / self.rate


class TokenBuckets:
    """Buckets keyed by uint64 (or one global bucket), for bytes and/or packets.

    `police(keys, sizes, now)` returns a Verdict per packet. `idle_timeout` (default: the
    time to refill) is raised to at least that time; `max_buckets` bounds the table.
    """

    def __init__(
        self,
        bytes: Limit | None = None,
        packets: Limit | None = None,
        *,
        idle_timeout: float | None = None,
        max_buckets: int | None = None,
    ) -> None:
        if bytes is None and packets is None:
            raise ValueError("give a bytes limit, a packets limit, or both")
        self.bytes = bytes
        self.packets = packets
        fill = max(lim.fill_time for lim in (bytes, packets) if lim is not None)
        # A hair over the refill time, so that rounding cannot leave a forgotten bucket
        # short of full.
        self.idle_timeout = max(fill * (1 + 1e-6) + 1e-6, idle_timeout or 0.0)
        self.state = FlowState(_FIELDS, timeout=self.idle_timeout, max_flows=max_buckets)
        # The latest expiry sweep: batches and lookups stamped earlier count as at this time.
        self.swept_at = -math.inf

    def __len__(self) -> int:
        return len(self.state)

    def expire(self, now: float) -> int:
        """Forget buckets that are full again by `now`; returns how many. Later batches
        stamped before `now` are policed as of `now` (see the module docstring)."""
        self.swept_at = max(self.swept_at, now)
        keys, _ = self.state.expire(self.swept_at)
        return int(keys.shape[0])

    def tokens(self, key: int, now: float) -> tuple[float, float]:
        """(byte tokens, packet tokens) key `key` would hold at `now` (full if unknown)."""
        now = max(now, self.swept_at)
        row = int(self.state.find(np.array([key], np.uint64), now)[0])
        full_b = self.bytes.burst if self.bytes else math.inf
        full_p = self.packets.burst if self.packets else math.inf
        if row < 0:
            return full_b, full_p
        rec = self.state.records[row]
        dt = max(0.0, now - float(rec["last"]))
        tb = min(full_b, float(rec["bytes"]) + self.bytes.rate * dt) if self.bytes else math.inf
        tp = (
            min(full_p, float(rec["packets"]) + self.packets.rate * dt)
            if self.packets
            else math.inf
        )
        return tb, tp

    def _refill(
        self, rows: NDArray[np.int64], created: NDArray[np.bool_], now: float
    ) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        rec = self.state.records
        dt = np.maximum(0.0, now - rec["last"][rows])
        out = []
        for field, limit in (("bytes", self.bytes), ("packets", self.packets)):
            if limit is None:
                out.append(np.full(rows.shape[0], np.inf))
                continue
            held = np.where(created, limit.burst, rec[field][rows])
            out.append(np.minimum(limit.burst, held + limit.rate * dt))
        return out[0], out[1]

    def police(self, keys: ArrayLike | None, sizes: ArrayLike, now: float) -> NDArray[np.uint8]:
        """Verdict per packet; `keys` None means one global bucket. Packets of one key take
        tokens in the order given."""
        now = max(now, self.swept_at)
        cost = np.asarray(sizes).astype(np.int64)
        n = cost.shape[0]
        verdict = np.full(n, Verdict.EXCEED, np.uint8)
        if n == 0:
            return verdict
        if int(cost.min()) < 0:
            raise ValueError(f"packet sizes must be >= 0, got {int(cost.min())}")
        if keys is None:
            uniq = np.zeros(1, np.uint64)
            group = np.zeros(n, np.intp)
            order = np.arange(n)
        else:
            k = as_keys(np.asarray(keys))
            if k.shape[0] != n:
                raise ValueError(f"{k.shape[0]} keys for {n} packets")
            uniq, inverse = np.unique(k, return_inverse=True)
            order = np.argsort(inverse, kind="stable")
            group = inverse[order]
        rows, created = self.state.upsert_distinct(uniq, now)
        have = rows >= 0
        if not have.all():
            verdict[order[~have[group]]] = Verdict.NO_BUCKET
        tb, tp = self._refill(np.where(have, rows, 0), created, now)

        # The longest prefix of each key's packets that fits both buckets.
        c = cost[order]
        counts = np.bincount(group, minlength=uniq.shape[0])
        starts = np.cumsum(counts) - counts
        cum = np.cumsum(c)
        before = np.where(starts > 0, cum[np.maximum(starts - 1, 0)], 0)
        within = cum - before[group]
        position = np.arange(n) - starts[group]
        fits = (within <= tb[group]) & (position + 1 <= tp[group]) & have[group]
        taken_b = np.bincount(group, weights=np.where(fits, c, 0), minlength=uniq.shape[0])
        left_b = tb - taken_b  # exact: integer costs from a float no larger than their sum
        left_p = tp - np.bincount(group, weights=fits, minlength=uniq.shape[0])
        conform = fits

        # After a key's first misfit, smaller packets may still fit what is left (bytes).
        if self.bytes is not None:
            cand = np.flatnonzero(~fits & have[group] & (left_p[group] >= 1))
            rounds = 0
            while cand.size:
                g = group[cand]
                cand = cand[(c[cand] <= left_b[g]) & (left_p[g] >= 1)]  # the rest never fits
                if not cand.size:
                    break
                if rounds == MAX_ROUNDS:
                    self._finish_in_order(cand, group, c, left_b, left_p, conform)
                    break
                g = group[cand]
                head = np.concatenate(([True], g[1:] != g[:-1]))
                chosen, cg = cand[head], g[head]
                conform[chosen] = True
                left_b[cg] -= c[chosen]
                left_p[cg] -= 1
                cand = cand[~head]
                rounds += 1

        verdict[order[conform]] = Verdict.CONFORM
        rec = self.state.records
        r = rows[have]
        if self.bytes is not None:
            rec["bytes"][r] = left_b[have]
        if self.packets is not None:
            rec["packets"][r] = left_p[have]
        last = np.maximum(rec["last"][r], now)
        rec["last"][r] = last
        # Idle time counts from the latest refill, even if `now` stepped back.
        self.state.touch(r, last)
        return verdict

    @staticmethod
    def _finish_in_order(
        cand: NDArray[np.intp],
        group: NDArray[np.intp],
        c: NDArray[np.int64],
        left_b: NDArray[np.float64],
        left_p: NDArray[np.float64],
        conform: NDArray[np.bool_],
    ) -> None:
        """The same hand-out, packet by packet (for keys with many tiny packets)."""
        for i in cand.tolist():
            g = int(group[i])
            cost = int(c[i])
            if left_b[g] >= cost and left_p[g] >= 1:
                conform[i] = True
                left_b[g] -= cost
                left_p[g] -= 1
