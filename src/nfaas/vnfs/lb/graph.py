"""The Maglev load balancer as an NF graph: port "clients" in, port "backends" out.

    lb = FlowBalancer(["web-1", Backend("web-2", weight=2)])
    g = maglev_graph(lb, "198.18.1.1:80", macs={"web-1": "02:00:00:00:01:01", ...})
    out = g.run_batch({"clients": batch}, now)["backends"]

    source(clients) -> parse -> steer[steered] -> emit -> backends
                                     [other]   -> drop "not_vip"  (or emit, non_vip="pass")

`steer` (a `MaglevSteer` operator) picks a backend per packet to a VIP with Maglev and
per-flow affinity (`FlowBalancer`) and rewrites the destination MAC to that backend's:
direct server return (see `steering.py` and docs/vnf-lb.md). Packets to no VIP go to
"other"; with every backend down, VIP packets are dropped as "no_backend". Backend health
changes go through the `Steering` object (`steering_of(graph)`), which holds a lock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np

from nfaas.nf.batch import PacketBatch
from nfaas.nf.build import Mac
from nfaas.nf.graph import Graph
from nfaas.nf.headers import Headers
from nfaas.nf.operators import EdgeType, Operator, Output, select_output
from nfaas.nf.state import schedule_expiry
from nfaas.nf.timers import Timers
from nfaas.vnfs.common import find_operator
from nfaas.vnfs.lb.affinity import NO_BACKEND, FlowBalancer
from nfaas.vnfs.lb.steering import Steering, Vip

__all__ = ["MaglevSteer", "maglev_graph", "steering_of"]


class MaglevSteer(Operator):
    """Steer packets to VIPs towards their backend (MAC rewrite); others to "other"."""

    kind = "maglev"
    needs = EdgeType.PARSED

    def __init__(self, steering: Steering, name: str | None = None, *, sweep_every: float = 10.0):
        super().__init__(name, outputs=("steered", "other"))
        self.steering = steering
        self.sweep_every = sweep_every

    def attach(self, timers: Timers) -> None:
        schedule_expiry(self, timers, self.sweep_every, self.steering.expire)

    def process(self, batch: PacketBatch, headers: Headers | None, now: float) -> list[Output]:
        assert headers is not None
        to_vip = self.steering.to_vip(headers)
        rows = np.flatnonzero(to_vip)
        other = select_output(batch, headers, np.flatnonzero(~to_vip))
        if not rows.size:
            return [select_output(batch, headers, rows), other]
        ids, macs = self.steering.choose(headers, rows, batch.lengths[rows], now)
        served = ids != NO_BACKEND
        self.drop("no_backend", int(np.count_nonzero(~served)))
        rows, macs = rows[served], macs[served]
        batch.write_bytes(0, macs, rows)
        headers.eth_dst[rows] = _mac_values(macs)
        own = self.steering.own_mac
        if own is not None:
            batch.write_bytes(6, own, rows)
            headers.eth_src[rows] = _mac_values(own[None, :])[0]
        return [select_output(batch, headers, rows), other]


def _mac_values(macs: np.ndarray) -> np.ndarray:
    """(n, 6) bytes -> the parser's uint64 MAC values."""
    padded = np.zeros((macs.shape[0], 8), np.uint8)
    padded[:, 2:] = macs
    return padded.view(">u8")[:, 0].astype(np.uint64)


def maglev_graph(
    balancer: FlowBalancer | Steering,
    vips: str | Vip | Sequence[str | Vip] = (),
    *,
    macs: Mapping[str, Mac] | None = None,
    own_mac: Mac | None = None,
    non_vip: Literal["drop", "pass"] = "drop",
    name: str = "lb",
    errors: Literal["drop", "raise"] = "drop",
) -> Graph:
    """A load balancer graph from port "clients" to port "backends".

    `balancer` is a `FlowBalancer` (then `vips` and `macs`, one MAC per backend name, are
    required) or a ready `Steering` (which has them). `non_vip` says what happens to packets
    to no VIP: "drop" (counted as "not_vip") or "pass" (out of "backends" unchanged).
    """
    if isinstance(balancer, Steering):
        if vips or macs is not None or own_mac is not None:
            raise ValueError("maglev_graph got a Steering: give vips and MACs to Steering(...)")
        steering = balancer
    else:
        if macs is None:
            raise ValueError("maglev_graph needs macs={backend name: MAC} for a FlowBalancer")
        steering = Steering(balancer, vips, macs, own_mac=own_mac)
    if non_vip not in ("drop", "pass"):
        raise ValueError(f"non_vip must be 'drop' or 'pass', got {non_vip!r}")
    g = Graph(name, errors=errors)
    steered, other = g.source("clients").parse(name="parse").fork(MaglevSteer(steering, "steer"))
    steered.emit("backends", name="to_backends")
    if non_vip == "pass":
        other.emit("backends", name="pass_through")
    else:
        other.drop("not_vip", name="not_vip")
    g.sink("backends")
    return g


def steering_of(graph: Graph) -> Steering:
    """The `Steering` of a graph made by `maglev_graph`."""
    return find_operator(graph, MaglevSteer, "Maglev steering").steering
