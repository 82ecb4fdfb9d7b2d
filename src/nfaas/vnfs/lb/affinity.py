"""Per-flow affinity and backend health on top of a Maglev table.

Maglev (§3.3) remembers the backend chosen for each recent flow in a connection tracking
table, so a change of the backend set moves no established flow whose backend is still
serving; only new flows and flows of a backend that went away are hashed again. This is
that: a FlowTable from flow hash to backend, with an idle timeout, in front of the table.

Backends keep a stable id (their position in `backends`) for the balancer's lifetime, so the
ids stored per flow stay valid across rebuilds. Health is a flag per backend: marking one
down rebuilds the table without it, and its tracked flows are re-hashed on their next
packet; marking it up rebuilds with it (tracked flows stay where they are).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike, NDArray

from nfaas.nf.flowtable import FlowTable
from nfaas.vnfs.common import check_positive
from nfaas.vnfs.lb.maglev import DEFAULT_TABLE_SIZE, Backend, MaglevTable, as_backends

NO_BACKEND = -1


@dataclass
class BalancerStats:
    packets: int = 0
    new_flows: int = 0  # flows hashed through the table (first packet or after expiry)
    rehashed: int = 0  # tracked flows moved because their backend went down or away
    untracked: int = 0  # flows the full tracking table could not remember
    no_backend: int = 0  # packets with every backend down
    expired: int = 0
    rebuilds: int = 0


class FlowBalancer:
    """Maglev load balancing with connection tracking and backend health.

    select() answers a stable backend id per packet (an index into `backends`, or -1 when
    every backend is down). idle_timeout is how long a flow is remembered after its last
    packet; max_flows bounds the tracking table (beyond it new flows still get the table's
    choice, they are just not remembered).
    """

    def __init__(
        self,
        backends: Sequence[Backend | str],
        table_size: int = DEFAULT_TABLE_SIZE,
        idle_timeout: float = 300.0,
        max_flows: int | None = None,
    ) -> None:
        check_positive("idle_timeout", idle_timeout, "seconds")
        self.backends: list[Backend] = list(as_backends(backends))
        self.table_size = table_size
        self.idle_timeout = idle_timeout
        self._up = np.ones(len(self.backends), bool)
        self._present = np.ones(len(self.backends), bool)  # False once removed
        self.flows = FlowTable(max_entries=max_flows)
        self.stats = BalancerStats()
        self.table: MaglevTable | None = None
        self._table_ids = np.zeros(0, np.int32)  # table backend index -> stable id
        self._rebuild()

    # -- membership and health --------------------------------------------------------------

    def backend_id(self, name: str) -> int:
        for i, backend in enumerate(self.backends):
            if backend.name == name:
                return i
        raise KeyError(f"no backend named {name!r}")

    def is_up(self, name: str) -> bool:
        i = self.backend_id(name)
        return bool(self._up[i] and self._present[i])

    @property
    def serving(self) -> list[str]:
        """Names of the backends in the current table."""
        return [b.name for b, ok in zip(self.backends, self._serving_mask(), strict=True) if ok]

    def mark_down(self, name: str) -> None:
        i = self.backend_id(name)
        if self._up[i]:
            self._up[i] = False
            self._rebuild()

    def mark_up(self, name: str) -> None:
        i = self.backend_id(name)
        if not self._up[i]:
            self._up[i] = True
            self._rebuild()

    def add_backend(self, backend: Backend | str) -> int:
        """Add (or re-add, possibly with a new weight) a backend; returns its stable id."""
        (new,) = as_backends([backend])
        try:
            i = self.backend_id(new.name)
        except KeyError:
            self.backends.append(new)
            self._up = np.append(self._up, True)
            self._present = np.append(self._present, True)
            i = len(self.backends) - 1
        else:
            self.backends[i] = new
            self._present[i] = True
        self._rebuild()
        return i

    def remove_backend(self, name: str) -> None:
        """Take a backend out of the pool; its id is kept (and reused if it comes back)."""
        i = self.backend_id(name)
        if self._present[i]:
            self._present[i] = False
            self._rebuild()

    def _serving_mask(self) -> NDArray[np.bool_]:
        return self._up & self._present

    def _rebuild(self) -> None:
        serving = np.flatnonzero(self._serving_mask()).astype(np.int32)
        if serving.size:
            self.table = MaglevTable([self.backends[i] for i in serving], self.table_size)
        else:
            self.table = None
        self._table_ids = serving
        self.stats.rebuilds += 1

    # -- the datapath ------------------------------------------------------------------------

    def table_select(self, flow_hashes: ArrayLike) -> NDArray[np.int32]:
        """The current table's choice for each flow (stable ids), ignoring tracked flows."""
        hashes = np.asarray(flow_hashes, np.uint64)
        if self.table is None:
            return np.full(hashes.size, NO_BACKEND, np.int32)
        return self._table_ids[self.table.lookup(hashes)]

    def select(self, flow_hashes: ArrayLike, now: float) -> NDArray[np.int32]:
        """Stable backend id for each packet's flow (-1 if no backend is up)."""
        hashes = np.asarray(flow_hashes, np.uint64)
        self.stats.packets += hashes.size
        ids, tracked = self.flows.lookup(hashes, now=now, ttl=self.idle_timeout)
        chosen = ids.astype(np.int32)
        gone = tracked.copy()
        gone[tracked] = ~self._serving_mask()[chosen[tracked]]
        need = ~tracked | gone
        if not need.any():
            return chosen
        fresh = hashes[need]
        if self.table is None:
            chosen[need] = NO_BACKEND
            self.stats.no_backend += fresh.size
            return chosen
        picked = self.table_select(fresh)
        chosen[need] = picked
        stored = self.flows.insert(fresh, picked, now)
        if not stored.all():
            # A full table: make room from idle flows and try once more.
            self.expire(now)
            stored[~stored] = self.flows.insert(fresh[~stored], picked[~stored], now)
        self.stats.untracked += _distinct_count(fresh[~stored])
        self.stats.rehashed += _distinct_count(hashes[gone])
        self.stats.new_flows += _distinct_count(hashes[~tracked])
        return chosen

    def expire(self, now: float) -> int:
        """Forget flows idle for more than idle_timeout; returns how many."""
        keys, _ = self.flows.expire(now, self.idle_timeout)
        self.stats.expired += keys.size
        return int(keys.size)


def _distinct_count(hashes: NDArray[np.uint64]) -> int:
    return int(np.unique(hashes).size) if hashes.size else 0
