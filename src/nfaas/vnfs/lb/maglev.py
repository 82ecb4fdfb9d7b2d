"""Maglev consistent hashing (Eisenbud et al., NSDI 2016, §3.4): the lookup table.

Every backend has a preference list over the M slots of the table, a permutation given by
two hashes of its name: offset = h1(name) mod M, skip = h2(name) mod (M - 1) + 1, and
permutation[j] = (offset + j * skip) mod M. M is prime, so every skip is coprime with it
and each list visits every slot. Backends take turns; at its turn a backend claims the
first slot of its list still empty. A flow goes to entry[hash(flow) mod M].

Weights: the paper says weights come from how often backends take turns and leaves the
scheme open. Here backend i gets exactly its largest-remainder share of the M turns (so
of the slots), q_i = M * w_i / W rounded, and its turns are spread evenly over the build:
its k-th turn comes at time (k + 1/2) / q_i, ties to the lower index. With equal weights
that is the paper's round-robin. The table depends only on the backends' names, weights and
order and on M, so every balancer builds the same one.

Disruption (how many flows move when the backend set changes) is measured by `disruption`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

DEFAULT_TABLE_SIZE = 65537  # the paper's choice: prime, and > 100 N for N up to 655


@dataclass(frozen=True)
class Backend:
    """A load-balancing target, known by a name unique in its pool (e.g. "198.18.0.5:80")."""

    name: str
    weight: float = 1.0

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("backend name must not be empty")
        if not self.weight > 0 or self.weight == float("inf"):
            raise ValueError(f"backend {self.name!r}: weight must be > 0, got {self.weight}")


def as_backends(backends: Sequence[Backend | str]) -> tuple[Backend, ...]:
    """Backends from names or Backend objects; names must be distinct."""
    result = tuple(b if isinstance(b, Backend) else Backend(b) for b in backends)
    seen: set[str] = set()
    for position, backend in enumerate(result):
        if backend.name in seen:
            raise ValueError(f"backend {backend.name!r} listed twice (position {position})")
        seen.add(backend.name)
    return result


def is_prime(n: int) -> bool:
    if n < 2:
        return False
    if n % 2 == 0:
        return n == 2
    return all(n % d for d in range(3, int(n**0.5) + 1, 2))


def _hash64(name: str, purpose: bytes) -> int:
    """A stable 64-bit hash (the same on every machine and run, unlike hash())."""
    digest = hashlib.blake2b(name.encode(), digest_size=8, person=purpose).digest()
    return int.from_bytes(digest, "little")


def permutation_params(name: str, size: int) -> tuple[int, int]:
    """(offset, skip) of a backend's preference list over a table of the given size."""
    offset = _hash64(name, b"maglev-offset") % size
    skip = _hash64(name, b"maglev-skip") % (size - 1) + 1
    return offset, skip


def slot_shares(weights: Sequence[float], size: int) -> NDArray[np.int64]:
    """How many slots each backend gets: size * w / sum(w), largest-remainder rounding."""
    w = np.asarray(weights, np.float64)
    exact = size * w / w.sum()
    shares = np.floor(exact).astype(np.int64)
    short = size - int(shares.sum())
    # Largest remainders first; ties to the lower index (stable sort).
    order = np.argsort(-(exact - shares), kind="stable")
    shares[order[:short]] += 1
    return shares


def turn_order(shares: NDArray[np.int64]) -> NDArray[np.int64]:
    """The sequence of turns: backend i appears shares[i] times, evenly spread."""
    owners = np.repeat(np.arange(shares.size), shares)
    rank = np.arange(owners.size) - np.repeat(np.cumsum(shares) - shares, shares)
    times = (rank + 0.5) / shares[owners]
    return owners[np.lexsort((owners, times))]


def populate(params: Sequence[tuple[int, int]], turns: NDArray[np.int64], size: int) -> list[int]:
    """The paper's population loop: at its turn a backend takes its first empty slot.

    There is exactly one turn per slot, so the table ends full. The loop is sequential by
    nature (each claim depends on all earlier ones); expected work is about M ln M probes.
    """
    entry = [-1] * size
    offsets = [offset for offset, _ in params]
    skips = [skip for _, skip in params]
    current = offsets[:]  # each backend's position in its own preference list
    for backend in turns.tolist():
        slot = current[backend]
        if entry[slot] >= 0:
            skip = skips[backend]
            while entry[slot] >= 0:
                slot += skip
                if slot >= size:
                    slot -= size
        entry[slot] = backend
        current[backend] = slot
    return entry


class MaglevTable:
    """An immutable Maglev lookup table over a set of backends."""

    def __init__(self, backends: Sequence[Backend | str], size: int = DEFAULT_TABLE_SIZE) -> None:
        if not is_prime(size):
            raise ValueError(f"Maglev table size must be prime, got {size}")
        self.backends = as_backends(backends)
        if not self.backends:
            raise ValueError("a Maglev table needs at least one backend")
        self.size = size
        params = [permutation_params(b.name, size) for b in self.backends]
        shares = slot_shares([b.weight for b in self.backends], size)
        self.entries: NDArray[np.int32] = np.array(
            populate(params, turn_order(shares), size), np.int32
        )
        self.entries.flags.writeable = False

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(b.name for b in self.backends)

    def with_backends(self, backends: Sequence[Backend | str]) -> MaglevTable:
        """A new table of the same size over another backend set (the rebuild)."""
        return MaglevTable(backends, self.size)

    def lookup(self, flow_hashes: ArrayLike) -> NDArray[np.int32]:
        """Backend index (into self.backends) for each flow hash."""
        hashes = np.asarray(flow_hashes, np.uint64)
        return self.entries[hashes % np.uint64(self.size)]

    def counts(self) -> NDArray[np.int64]:
        """Slots held by each backend."""
        return np.bincount(self.entries, minlength=len(self.backends)).astype(np.int64)


@dataclass(frozen=True)
class Disruption:
    """Fractions of table entries (or of a flow set) between two tables.

    moved: whose backend changed. necessary: moved because the old backend is gone or the
    new backend is new (any consistent hash must move these). excess = moved - necessary:
    moved between two backends present in both tables (the price of Maglev's balance).
    """

    moved: float
    necessary: float

    @property
    def excess(self) -> float:
        return self.moved - self.necessary


def disruption(
    old: MaglevTable, new: MaglevTable, flow_hashes: ArrayLike | None = None
) -> Disruption:
    """How much changes from old to new: over all table entries, or over the given flows.

    Backends are matched by name, so indices may differ between the tables. Comparing
    entries needs equal table sizes; comparing flows works across sizes.
    """
    if flow_hashes is None:
        if old.size != new.size:
            raise ValueError(f"tables differ in size ({old.size} vs {new.size}); pass flow_hashes")
        before, after = old.entries, new.entries
    else:
        before, after = old.lookup(flow_hashes), new.lookup(flow_hashes)
    if before.size == 0:
        return Disruption(0.0, 0.0)
    names = sorted(set(old.names) | set(new.names))
    ids = {name: i for i, name in enumerate(names)}
    old_ids = np.array([ids[n] for n in old.names])[before]
    new_ids = np.array([ids[n] for n in new.names])[after]
    survivors = np.zeros(len(names), bool)
    survivors[[ids[n] for n in set(old.names) & set(new.names)]] = True
    moved = old_ids != new_ids
    necessary = moved & ~(survivors[old_ids] & survivors[new_ids])
    total = before.size
    return Disruption(
        float(np.count_nonzero(moved) / total), float(np.count_nonzero(necessary) / total)
    )
