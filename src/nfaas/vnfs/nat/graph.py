"""The NAT as an NF graph between ports "inside" and "outside".

    nat = NatTable(NatConfig(public_addrs=[ipv4("198.18.200.1")], forwards=[...]))
    g = nat_graph(nat)
    out = g.run_batch({"inside": from_inside, "outside": from_outside}, now)

    source(inside)  -> parse -> snat[out] -> emit -> outside
    source(outside) -> parse -> dnat[out] -> emit -> inside

`snat` (a `NatTranslate` operator, direction "out") translates what leaves the inside
network: port-forwarded services' answers get their public endpoint, everything else a
SNAT session's public address and port. `dnat` (direction "in") translates what arrives
from outside: port forwards to their inside endpoint, replies back to the session's inside
endpoint. The `NatTable` decides; the operator rewrites the packets' bytes with
`nfaas.nf.build`'s rewriters, which update the IPv4 header and TCP/UDP/ICMP checksums
incrementally (RFC 1624), and drops what cannot be translated, counted by reason:
the table's verdicts ("exhausted", "no_session", "filtered", "unsupported",
"collision") and what never reaches it ("non_ip", "not_ipv4", "fragment",
"icmp_not_echo"). Both operators share the table and a lock, so a control API may read
or change the table from another thread.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray

from nfaas.nf.batch import PacketBatch
from nfaas.nf.build import set_icmp_id, set_ipv4_dst, set_ipv4_src, set_l4_dport, set_l4_sport
from nfaas.nf.graph import Graph
from nfaas.nf.headers import PROTO_ICMP, Headers
from nfaas.nf.operators import EdgeType, Operator, Output, select_output
from nfaas.vnfs.common import find_operator
from nfaas.vnfs.nat.table import FiveTuples, NatTable, Verdict

__all__ = ["NatTranslate", "nat_graph", "nat_of"]

Lock = AbstractContextManager[Any]  # threading.Lock / RLock
Setter = Callable[[PacketBatch, Headers, ArrayLike, ArrayLike | None], None]
_ECHO = (0, 8)  # ICMP echo reply, echo request: the identifier plays the port


class NatTranslate(Operator):
    """Translate parsed packets with a `NatTable`, "out" (from inside) or "in" (from outside).

    Only unfragmented IPv4 TCP, UDP and ICMP echo packets can be translated; the rest is
    dropped and counted (see the module docstring).
    """

    kind = "nat"
    needs = EdgeType.PARSED

    def __init__(
        self,
        nat: NatTable,
        direction: Literal["out", "in"],
        name: str | None = None,
        *,
        lock: Lock | None = None,
    ) -> None:
        if direction not in ("out", "in"):
            raise ValueError(f"direction must be 'out' or 'in', got {direction!r}")
        super().__init__(name)
        self.nat = nat
        self.direction = direction
        self.lock = lock if lock is not None else threading.RLock()

    def process(self, batch: PacketBatch, headers: Headers | None, now: float) -> list[Output]:
        assert headers is not None
        h = headers
        keep = self._translatable(h)
        rows = np.flatnonzero(keep)
        if rows.size:
            ok = self._translate(batch, h, rows, now)
            keep[rows[~ok]] = False
        return [select_output(batch, h, np.flatnonzero(keep))]

    def _translatable(self, h: Headers) -> NDArray[np.bool_]:
        """Mask of packets the table can take; the others are counted as dropped."""
        ip = h.ip_version != 0
        v4 = h.ip_version == 4
        fragment = v4 & (h.is_fragment | (h.l4_offset < 0))
        icmp = v4 & ~fragment & (h.protocol == PROTO_ICMP)
        not_echo = icmp & ~np.isin(h.icmp_type, _ECHO)
        self.drop("non_ip", int(np.count_nonzero(h.valid & ~ip)))
        self.drop("not_ipv4", int(np.count_nonzero(ip & ~v4)))
        self.drop("fragment", int(np.count_nonzero(fragment)))
        self.drop("icmp_not_echo", int(np.count_nonzero(not_echo)))
        return h.valid & v4 & ~fragment & ~not_echo

    def _translate(
        self, batch: PacketBatch, h: Headers, rows: NDArray[np.intp], now: float
    ) -> NDArray[np.bool_]:
        """Rewrite the packets `rows` that the table translates; returns which it did."""
        icmp = h.protocol[rows] == PROTO_ICMP
        sport = np.where(icmp, h.icmp_id[rows], h.sport[rows])
        dport = np.where(icmp, h.icmp_id[rows], h.dport[rows])
        tuples = FiveTuples(h.ipv4_src[rows], h.ipv4_dst[rows], sport, dport, h.protocol[rows])
        flags = (h.tcp_flags[rows] & 0xFF).astype(np.uint8)
        with self.lock:
            if self.direction == "out":
                result = self.nat.outbound(tuples, now, tcp_flags=flags)
            else:
                result = self.nat.inbound(tuples, now, tcp_flags=flags)
        verdict = result.verdict
        for value in np.unique(verdict).tolist():
            if value != Verdict.TRANSLATED:
                self.drop(Verdict(value).name.lower(), int(np.count_nonzero(verdict == value)))
        ok = verdict == Verdict.TRANSLATED
        new = result.tuples
        if self.direction == "out":
            _rewrite(batch, h, rows, ok, new.src, h.ipv4_src, set_ipv4_src)
            _rewrite(batch, h, rows, ok & ~icmp, new.sport, h.sport, set_l4_sport)
        else:
            _rewrite(batch, h, rows, ok, new.dst, h.ipv4_dst, set_ipv4_dst)
            _rewrite(batch, h, rows, ok & ~icmp, new.dport, h.dport, set_l4_dport)
        # ICMP echo: the table translated the identifier (in sport and dport alike).
        _rewrite(batch, h, rows, ok & icmp, new.sport, h.icmp_id, set_icmp_id)
        return ok


def _rewrite(
    batch: PacketBatch,
    h: Headers,
    rows: NDArray[np.intp],
    which: NDArray[np.bool_],
    new: NDArray[Any],
    old: NDArray[Any],
    setter: Setter,
) -> None:
    """Give the packets `rows[which]` the values `new[which]` of the field whose batch-wide
    column is `old`, with `setter` (a checksum-keeping rewriter), where the value changes."""
    picked = rows[which]
    changes = new[which] != old[picked]
    if not changes.any():
        return
    values = old.copy()
    values[picked] = new[which]
    mask = np.zeros(len(h), np.bool_)
    mask[picked[changes]] = True
    setter(batch, h, values, mask)


def nat_graph(
    nat_table: NatTable,
    *,
    name: str = "nat",
    lock: Lock | None = None,
    errors: Literal["drop", "raise"] = "drop",
) -> Graph:
    """A NAT graph between ports "inside" and "outside" (each a source and a sink).

    `lock` guards the table between the graph and a control API (a fresh one if None);
    both directions use it.
    """
    lock = lock if lock is not None else threading.RLock()
    g = Graph(name, errors=errors)
    (
        g.source("inside")
        .parse(name="parse_inside")
        .then(NatTranslate(nat_table, "out", "snat", lock=lock))
        .emit("outside", name="to_outside")
    )
    (
        g.source("outside")
        .parse(name="parse_outside")
        .then(NatTranslate(nat_table, "in", "dnat", lock=lock))
        .emit("inside", name="to_inside")
    )
    g.sink("inside")
    g.sink("outside")
    return g


def nat_of(graph: Graph) -> tuple[NatTable, Lock]:
    """The `NatTable` of a graph made by `nat_graph`, and the lock that guards it."""
    op = find_operator(graph, NatTranslate, "NAT")
    return op.nat, op.lock
