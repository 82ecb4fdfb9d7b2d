"""A per-5-tuple verdict cache in front of the firewall's classifier.

Firewall rules match on the 5-tuple only, so every packet of one flow gets the same first
matching rule: once classified, a flow's answer can be remembered and the classifier skipped
for its next packets. This is that memory, a `FlowState` keyed by a seeded 64-bit hash of the
tuple, holding the matching rule's position (-1 for the chain policy).

Three things keep the cache from ever changing a verdict:

- every hit is verified against the stored tuple (a hash collision, crafted or not, is a miss);
- every entry carries the rule generation it was computed under, and any change to the rules
  bumps the generation (O(1) invalidation; old entries are misses and get overwritten);
- idle entries expire (`timeout`), and `max_flows` bounds the memory (flows beyond it are
  classified every time, just not remembered).
"""

from __future__ import annotations

import secrets

import numpy as np
from numpy.typing import NDArray

from nfaas.nf.state import FlowState
from nfaas.vnfs.firewall.tuples import PacketTuples

__all__ = ["MISS", "VerdictCache"]

MISS = -2  # `lookup` answer for tuples the cache cannot answer

_FIELDS = {
    "generation": np.uint32,
    "rule": np.int32,
    "version": np.uint8,
    "proto": np.uint8,
    "sport": np.uint16,
    "dport": np.uint16,
    "src_hi": np.uint64,
    "src_lo": np.uint64,
    "dst_hi": np.uint64,
    "dst_lo": np.uint64,
}
_TUPLE_FIELDS = ("version", "proto", "sport", "dport", "src_hi", "src_lo", "dst_hi", "dst_lo")


class VerdictCache:
    """5-tuple -> position of the first matching rule, verified and generation-checked."""

    def __init__(
        self,
        *,
        timeout: float = 60.0,
        max_flows: int | None = 1 << 20,
        capacity: int = 4096,
        seed: int | None = None,
    ) -> None:
        self.table = FlowState(_FIELDS, timeout=timeout, capacity=capacity, max_flows=max_flows)
        # A secret seed: nobody outside can aim packets at one hash chain.
        self.seed = secrets.randbits(64) if seed is None else seed
        self.generation = 1  # 0 is what a zeroed record holds: never valid
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self.table)

    def invalidate(self) -> None:
        """Forget every answer (the rules changed): O(1), entries turn into misses."""
        self.generation += 1
        if self.generation > np.iinfo(np.uint32).max:
            self.table.clear()
            self.generation = 1

    def lookup(
        self, tuples: PacketTuples, now: float
    ) -> tuple[NDArray[np.int32], NDArray[np.uint64]]:
        """(rule position or MISS per tuple, the tuples' keys); hits count as traffic."""
        keys = tuples.keys(self.seed)
        rows = self.table.find(keys, now)
        answer = np.full(len(tuples), MISS, np.int32)
        found = np.flatnonzero(rows >= 0)
        if found.size:
            rec = self.table.records[rows[found]]
            same = rec["generation"] == self.generation
            for name in _TUPLE_FIELDS:
                same &= rec[name] == getattr(tuples, name)[found]
            hit = found[same]
            answer[hit] = rec["rule"][same]
            self.table.touch(rows[hit], now)
        hits = int(np.count_nonzero(answer != MISS))
        self.hits += hits
        self.misses += len(tuples) - hits
        return answer, keys

    def store(
        self, tuples: PacketTuples, keys: NDArray[np.uint64], rules: NDArray[np.int32], now: float
    ) -> None:
        """Remember the answers `rules` for `tuples` (whose `keys` came from `lookup`)."""
        if not len(tuples):
            return
        rows, _ = self.table.upsert(keys, now)
        ok = np.flatnonzero(rows >= 0)  # -1: the cache is full
        if not ok.size:
            return
        r = rows[ok]
        rec = self.table.records
        rec["generation"][r] = self.generation
        rec["rule"][r] = rules[ok]
        for name in _TUPLE_FIELDS:
            rec[name][r] = getattr(tuples, name)[ok]

    def expire(self, now: float) -> int:
        """Drop entries idle past the timeout; returns how many."""
        keys, _ = self.table.expire(now)
        return int(keys.size)
