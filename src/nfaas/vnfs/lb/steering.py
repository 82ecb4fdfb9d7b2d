"""What the load-balancer graph steers with: VIPs, a `FlowBalancer`, backend MACs, a lock.

Steering is direct server return (DSR) at layer 2, as in LVS "direct routing": a packet to a
VIP keeps its IP header and payload untouched and only gets the chosen backend's Ethernet
address as destination (and the balancer's own as source, if given). Backends carry the VIP
on a loopback interface and answer clients directly, so replies never come back through
the balancer. See docs/vnf-lb.md for why this and not Maglev's GRE encapsulation.

A flow is identified by a seeded hash of its 5-tuple; IP fragments hash on addresses and
protocol only (the ports are in the first fragment alone), so every fragment of a datagram
goes to the same backend -- at the price that a fragmented flow may land elsewhere than its
unfragmented packets. `FlowBalancer` keeps per-flow affinity and backend health.

All methods hold `lock`: a control API may mark backends up or down, add or remove them,
from another thread while the graph runs.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from nfaas.nf.build import Mac, mac_bytes
from nfaas.nf.headers import PROTO_TCP, PROTO_UDP, Headers, flow_hash
from nfaas.vnfs.lb.affinity import NO_BACKEND, FlowBalancer
from nfaas.vnfs.lb.maglev import Backend

__all__ = ["Steering", "Vip", "parse_vip"]

IPAddr = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Vip:
    """A virtual service: an address, optionally one port (TCP and UDP, or `proto` only)."""

    address: IPAddr
    port: int | None = None
    proto: int | None = None

    def __post_init__(self) -> None:
        if self.port is not None and not 1 <= self.port <= 65535:
            raise ValueError(f"VIP {self.address}: port {self.port} is not within 1-65535")
        if self.proto is not None and self.port is None:
            raise ValueError(f"VIP {self.address}: a protocol needs a port")
        if self.proto is not None and self.proto not in (PROTO_TCP, PROTO_UDP):
            raise ValueError(f"VIP {self.address}: protocol must be TCP (6) or UDP (17)")

    def __str__(self) -> str:
        host = f"[{self.address}]" if self.address.version == 6 else str(self.address)
        return host if self.port is None else f"{host}:{self.port}"


def parse_vip(text: str) -> Vip:
    """A `Vip` from "198.18.1.1", "198.18.1.1:80", "2001:db8::1" or "[2001:db8::1]:443"."""
    text = text.strip()
    host, port = text, None
    if text.startswith("["):
        host, sep, rest = text[1:].partition("]")
        if not sep or (rest and not rest.startswith(":")):
            raise ValueError(f"VIP {text!r}: expected [IPV6] or [IPV6]:PORT")
        port = rest[1:] if rest else None
    elif text.count(":") == 1:
        host, port = text.split(":")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"VIP {text!r}: {host!r} is not an IP address") from None
    if port is not None and not port.isdigit():
        raise ValueError(f"VIP {text!r}: port {port!r} is not a number")
    return Vip(address, None if port is None else int(port))


def _vips(vips: str | Vip | Sequence[str | Vip]) -> tuple[Vip, ...]:
    items = [vips] if isinstance(vips, str | Vip) else list(vips)
    if not items:
        raise ValueError("a load balancer needs at least one VIP")
    return tuple(v if isinstance(v, Vip) else parse_vip(v) for v in items)


class Steering:
    """VIP matching and backend choice for `maglev_graph`; see the module docstring.

    `macs` gives each backend's Ethernet address by backend name; every backend of the
    balancer needs one. `own_mac`, when given, becomes the source address of steered frames.
    """

    def __init__(
        self,
        balancer: FlowBalancer,
        vips: str | Vip | Sequence[str | Vip],
        macs: Mapping[str, Mac],
        *,
        own_mac: Mac | None = None,
        seed: int = 0,
    ) -> None:
        self.lock = threading.RLock()
        self.balancer = balancer
        self.vips = _vips(vips)
        self.own_mac = None if own_mac is None else np.frombuffer(mac_bytes(own_mac), np.uint8)
        self.seed = seed
        self._macs = np.zeros((0, 6), np.uint8)
        self.packets = np.zeros(0, np.uint64)
        self.bytes = np.zeros(0, np.uint64)
        names = {b.name for b in balancer.backends}
        missing = sorted(names - set(macs))
        if missing:
            raise ValueError(f"no MAC address for backend(s) {missing}")
        for backend in balancer.backends:
            self._set_mac(balancer.backend_id(backend.name), macs[backend.name])

    def _set_mac(self, backend_id: int, mac: Mac) -> None:
        try:
            raw = np.frombuffer(mac_bytes(mac), np.uint8)
        except ValueError as exc:
            raise ValueError(
                f"backend {self.balancer.backends[backend_id].name!r}: {exc}"
            ) from None
        grow = backend_id + 1 - self._macs.shape[0]
        if grow > 0:
            self._macs = np.concatenate([self._macs, np.zeros((grow, 6), np.uint8)])
            self.packets = np.concatenate([self.packets, np.zeros(grow, np.uint64)])
            self.bytes = np.concatenate([self.bytes, np.zeros(grow, np.uint64)])
        self._macs[backend_id] = raw

    # -- control --------------------------------------------------------------------------

    def set_up(self, name: str, up: bool) -> None:
        """Mark a backend up or down (KeyError for an unknown name). Tracked flows of a
        backend going down move on their next packet; others stay where they are."""
        with self.lock:
            if up:
                self.balancer.mark_up(name)
            else:
                self.balancer.mark_down(name)

    def add_backend(self, name: str, mac: Mac, weight: float = 1.0) -> int:
        """Add (or re-add, with a new weight or MAC) a backend; returns its stable id."""
        with self.lock:
            backend = Backend(name, weight)
            mac_bytes(mac)  # reject a bad address before the pool changes
            backend_id = self.balancer.add_backend(backend)
            self._set_mac(backend_id, mac)
            return backend_id

    def remove_backend(self, name: str) -> None:
        with self.lock:
            self.balancer.remove_backend(name)

    def status(self) -> list[dict[str, Any]]:
        """Per backend: name, weight, MAC, up, serving (in the table), packets, bytes."""
        with self.lock:
            serving = set(self.balancer.serving)
            rows = []
            for i, b in enumerate(self.balancer.backends):
                rows.append(
                    {
                        "name": b.name,
                        "weight": b.weight,
                        "mac": ":".join(f"{x:02x}" for x in self._macs[i].tolist()),
                        "up": self.balancer.is_up(b.name),
                        "serving": b.name in serving,
                        "packets": int(self.packets[i]),
                        "bytes": int(self.bytes[i]),
                    }
                )
            return rows

    # -- the datapath -----------------------------------------------------------------------

    def to_vip(self, h: Headers) -> NDArray[np.bool_]:
        """Per packet: is it addressed to one of the VIPs?"""
        hit = np.zeros(len(h), np.bool_)
        for vip in self.vips:
            if vip.address.version == 4:
                match = (h.ip_version == 4) & (h.ipv4_dst == np.uint32(int(vip.address)))
            else:
                value = int(vip.address)
                match = (
                    (h.ip_version == 6)
                    & (h.ipv6_dst_hi == np.uint64(value >> 64))
                    & (h.ipv6_dst_lo == np.uint64(value & ((1 << 64) - 1)))
                )
            if vip.port is not None:
                proto_ok = (
                    (h.protocol == PROTO_TCP) | (h.protocol == PROTO_UDP)
                    if vip.proto is None
                    else h.protocol == vip.proto
                )
                # A non-first fragment has no ports: it cannot be told to belong here.
                match &= proto_ok & (h.l4_offset >= 0) & (h.dport == vip.port)
            hit |= match
        return hit & h.valid

    def flow_keys(self, h: Headers) -> NDArray[np.uint64]:
        """The hash each packet is steered by (fragments: addresses and protocol only)."""
        fragment = h.is_fragment
        if fragment.any():
            zero = np.uint16(0)
            h = dataclasses.replace(
                h, sport=np.where(fragment, zero, h.sport), dport=np.where(fragment, zero, h.dport)
            )
        return flow_hash(h, seed=self.seed)

    def choose(
        self, h: Headers, rows: NDArray[np.intp], lengths: NDArray[np.int32], now: float
    ) -> tuple[NDArray[np.int32], NDArray[np.uint8]]:
        """(backend id, its MAC as (n, 6) bytes) for the packets `rows`; id -1: none up."""
        keys = self.flow_keys(h)[rows]
        with self.lock:
            ids = self.balancer.select(keys, now)
            macs = self._macs[np.maximum(ids, 0)]
            ok = ids != NO_BACKEND
            if ok.any():
                which, inverse = np.unique(ids[ok], return_inverse=True)
                self.packets[which] += np.bincount(inverse).astype(np.uint64)
                size = lengths[ok].astype(np.float64)
                self.bytes[which] += np.bincount(inverse, weights=size).astype(np.uint64)
        return ids, macs

    def expire(self, now: float) -> int:
        with self.lock:
            return self.balancer.expire(now)
