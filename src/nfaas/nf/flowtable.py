"""A vectorised flow table: uint64 keys to int64 values, with last-seen times and expiry.

NFs keep per-flow state (the backend a load balancer chose, a NAT session) in tables keyed by
a 64-bit flow key. This is an open-addressing hash table held in numpy arrays, with linear
probing, tombstones for deletions, and growth by rehashing. Every operation takes a whole
batch of keys, so the per-packet cost is a few vector passes instead of a Python loop.

Batch semantics follow a dict applied element by element: in an insert the last value given
for a key wins; a delete reports a key as present only at its first occurrence in the batch.
Times are plain floats the caller passes in (no wall clock here), so tests and replays are
deterministic.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from numpy.typing import ArrayLike, NDArray

_EMPTY = np.uint8(0)
_USED = np.uint8(1)
_DELETED = np.uint8(2)

_MIX_1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX_2 = np.uint64(0x94D049BB133111EB)

# A per-entry time-to-live: a number of seconds, or a function of the entries' values.
TTL = float | Callable[[NDArray[np.int64]], NDArray[np.float64]]


def mix64(keys: NDArray[np.uint64]) -> NDArray[np.uint64]:
    """splitmix64's finaliser: spreads any structure in the keys over all 64 bits."""
    z = keys.astype(np.uint64, copy=True)
    z ^= z >> np.uint64(30)
    z *= _MIX_1
    z ^= z >> np.uint64(27)
    z *= _MIX_2
    z ^= z >> np.uint64(31)
    return z


def as_keys(keys: ArrayLike) -> NDArray[np.uint64]:
    """The keys as a 1-d uint64 array; rejects negative or fractional input by name."""
    array = np.asarray(keys)
    if array.ndim != 1:
        raise ValueError(f"flow keys must be a 1-d array, got shape {array.shape}")
    if array.dtype == np.uint64:
        return array
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"flow keys must be integers, got dtype {array.dtype}")
    if array.size and np.issubdtype(array.dtype, np.signedinteger) and array.min() < 0:
        raise ValueError(f"flow keys must be non-negative, got {array.min()}")
    return array.astype(np.uint64)


def _distinct(keys: NDArray[np.uint64]) -> NDArray[np.intp]:
    """For each distinct key, the index of its last occurrence (a dict keeps the last
    write), ordered by first occurrence (the order a dict would have admitted them in)."""
    _, first = np.unique(keys, return_index=True)
    _, first_in_reversed = np.unique(keys[::-1], return_index=True)
    last = keys.size - 1 - first_in_reversed
    return last[np.argsort(first)].astype(np.intp)


class FlowTable:
    """uint64 key -> int64 value, with a last-seen time per entry.

    capacity is a starting size (rounded up to a power of two); the table doubles whenever
    live entries plus tombstones would pass max_load of it. max_entries, when set, bounds the
    number of live entries: inserts of new keys beyond it are refused (reported, not raised).
    """

    def __init__(
        self, capacity: int = 1024, max_load: float = 0.5, max_entries: int | None = None
    ) -> None:
        if not 0.05 <= max_load <= 0.9:
            raise ValueError(f"max_load must be within [0.05, 0.9], got {max_load}")
        if max_entries is not None and max_entries < 0:
            raise ValueError(f"max_entries must be >= 0, got {max_entries}")
        self.max_load = max_load
        self.max_entries = max_entries
        self._allocate(max(8, 1 << (max(capacity, 1) - 1).bit_length()))

    def _allocate(self, capacity: int) -> None:
        self._mask = np.uint64(capacity - 1)
        self._state = np.zeros(capacity, np.uint8)
        self._keys = np.zeros(capacity, np.uint64)
        self._values = np.zeros(capacity, np.int64)
        self._seen = np.zeros(capacity, np.float64)
        self._used = 0
        self._deleted = 0

    @property
    def capacity(self) -> int:
        return int(self._state.size)

    def __len__(self) -> int:
        return self._used

    # -- probing -------------------------------------------------------------------------

    def _home(self, keys: NDArray[np.uint64]) -> NDArray[np.uint64]:
        return mix64(keys) & self._mask

    def _find(self, keys: NDArray[np.uint64]) -> NDArray[np.int64]:
        """Slot holding each key, or -1. Walks all probe chains in lockstep."""
        slots = np.full(keys.size, -1, np.int64)
        probe = self._home(keys)
        pending = np.arange(keys.size)
        while pending.size:
            at = probe[pending] if pending.size != probe.size else probe
            state = self._state[at]
            hit = (state == _USED) & (self._keys[at] == keys[pending])
            slots[pending[hit]] = at[hit].astype(np.int64)
            go_on = ~hit & (state != _EMPTY)
            pending = pending[go_on]
            probe[pending] = (at[go_on] + np.uint64(1)) & self._mask
        return slots

    def _place(self, keys: NDArray[np.uint64]) -> NDArray[np.int64]:
        """Claim a free slot for each key (distinct, known absent). Room must already exist.

        Each round every pending key looks at its probe position; of the keys looking at
        the same free slot the first takes it, all others step on. So every key ends at
        the first free slot of its chain as it was when it got there, as a sequential
        insert would, and no empty slot is left between a key's home and its position.
        """
        slots = np.empty(keys.size, np.int64)
        probe = self._home(keys)
        pending = np.arange(keys.size)
        while pending.size:
            at = probe[pending]
            free = self._state[at] != _USED
            candidates = pending[free]
            taken, first = np.unique(at[free], return_index=True)
            winners = candidates[first]
            self._deleted -= int(np.count_nonzero(self._state[taken] == _DELETED))
            self._state[taken] = _USED
            self._keys[taken] = keys[winners]
            slots[winners] = taken.astype(np.int64)
            won = np.zeros(keys.size, bool)
            won[winners] = True
            pending = pending[~won[pending]]
            probe[pending] = (probe[pending] + np.uint64(1)) & self._mask
        self._used += keys.size
        return slots

    def _make_room(self, extra: int) -> bool:
        """Grow (or just clear tombstones) so extra more keys keep the load under max_load.

        Returns whether the table was rebuilt (every slot number found before is stale).
        """
        limit = self.max_load * self.capacity
        if self._used + self._deleted + extra <= limit:
            return False
        capacity = self.capacity
        while self._used + extra > self.max_load * capacity:
            capacity *= 2
        live = self._state == _USED
        keys, values, seen = self._keys[live], self._values[live], self._seen[live]
        self._allocate(capacity)
        slots = self._place(keys)
        self._values[slots] = values
        self._seen[slots] = seen
        return True

    # -- the public operations -------------------------------------------------------------

    def lookup(
        self,
        keys: ArrayLike,
        now: float | None = None,
        ttl: float | None = None,
        default: int = -1,
    ) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
        """(values, found) for each key; default where absent.

        With now, hits are touched (their last-seen time becomes now). With ttl as well,
        an entry idle for more than ttl seconds counts as absent (and is left untouched for
        expire() to collect or insert() to overwrite).
        """
        keys = as_keys(keys)
        slots = self._find(keys)
        found = slots >= 0
        if ttl is not None:
            if now is None:
                raise ValueError("lookup: ttl needs now")
            found[found] = now - self._seen[slots[found]] <= ttl
        values = np.full(keys.size, default, np.int64)
        values[found] = self._values[slots[found]]
        if now is not None:
            self._seen[slots[found]] = now
        return values, found

    def __contains__(self, key: int) -> bool:
        return bool(self._find(as_keys([key]))[0] >= 0)

    def touch(self, keys: ArrayLike, now: float) -> NDArray[np.bool_]:
        """Set the last-seen time of the keys present; returns which were present."""
        slots = self._find(as_keys(keys))
        found = slots >= 0
        self._seen[slots[found]] = now
        return found

    def insert(self, keys: ArrayLike, values: ArrayLike, now: float) -> NDArray[np.bool_]:
        """Set key -> value (last-seen = now) for each pair; returns which were stored.

        Existing keys are always updated. New keys are refused only when max_entries is
        reached; the mask says which (every occurrence of a refused key is False).
        """
        keys = as_keys(keys)
        values = np.broadcast_to(np.asarray(values, np.int64), keys.shape)
        stored = np.ones(keys.size, bool)
        if keys.size == 0:
            return stored
        last = _distinct(keys)
        unique_keys, unique_values = keys[last], values[last]
        slots = self._find(unique_keys)
        new = slots < 0
        new_count = int(np.count_nonzero(new))
        if new_count:
            if self.max_entries is not None and self._used + new_count > self.max_entries:
                room = max(0, self.max_entries - self._used)
                refused = np.flatnonzero(new)[room:]
                new[refused] = False
                stored &= ~np.isin(keys, unique_keys[refused])
                slots[refused] = -2
                new_count = room
            if self._make_room(new_count):
                existing = slots >= 0
                slots[existing] = self._find(unique_keys[existing])
            slots[new] = self._place(unique_keys[new])
        kept = slots >= 0
        self._values[slots[kept]] = unique_values[kept]
        self._seen[slots[kept]] = now
        return stored

    def delete(self, keys: ArrayLike) -> NDArray[np.bool_]:
        """Remove the keys; True where the key was present (its first occurrence only)."""
        keys = as_keys(keys)
        slots = self._find(keys)
        present = slots >= 0
        if present.any():
            distinct, first = np.unique(slots[present], return_index=True)
            firsts = np.zeros(keys.size, bool)
            firsts[np.flatnonzero(present)[first]] = True
            present = firsts
            self._state[distinct] = _DELETED
            self._used -= distinct.size
            self._deleted += distinct.size
        return present

    def expire(self, now: float, ttl: TTL) -> tuple[NDArray[np.uint64], NDArray[np.int64]]:
        """Remove entries idle for more than ttl seconds; returns their (keys, values).

        ttl is one number for all entries or a function from the entries' values to their
        ttls (a NAT gives each session the timeout of its protocol and state).
        """
        live = np.flatnonzero(self._state == _USED)
        values = self._values[live]
        limit = ttl(values) if callable(ttl) else ttl
        idle = now - self._seen[live] > limit
        gone = live[idle]
        self._state[gone] = _DELETED
        self._used -= gone.size
        self._deleted += gone.size
        return self._keys[gone].copy(), values[idle]

    def items(self) -> tuple[NDArray[np.uint64], NDArray[np.int64], NDArray[np.float64]]:
        """All live (keys, values, last-seen times), in slot order."""
        live = self._state == _USED
        return self._keys[live].copy(), self._values[live].copy(), self._seen[live].copy()

    def clear(self) -> None:
        self._allocate(self.capacity)
