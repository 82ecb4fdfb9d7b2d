"""The Traffic Offloading Function's data path (seed 002 §4.3): learn, divert, return.

The TOF sits on S1-U between the RAN (eNodeBs) and the core (SGWs) and has a third leg to
the edge applications. Per batch:

- **uplink** (RAN → core): every GTP-U G-PDU with an inner IPv4 packet teaches the uplink
  tunnel of its UE (inner source). A G-PDU whose inner destination is a registered
  serviceIP is decapsulated, its destination rewritten to the service's applicationIP
  (IPv4 and TCP/UDP checksums updated) and sent to the edge; everything else goes on to
  the core unchanged. If the UE has no downlink tunnel yet, the Pinger (when configured)
  sends an ICMP echo from the UE's address into its uplink tunnel, so that the reply
  coming down teaches the downlink TEID even if the UE talks only to edge services
  (§4.3.1, §4.3.3.1 steps 5-11).
- **downlink** (core → RAN): every G-PDU teaches the downlink tunnel of its UE (inner
  destination); everything is forwarded unchanged, except the Pinger's own echo replies,
  which are consumed.
- **edge** (edge apps → RAN): an IPv4 packet from a registered applicationIP to a UE with
  a live downlink tunnel gets its source rewritten back to the serviceIP and is
  encapsulated into that tunnel (the TOF speaks as the SGW towards the eNodeB).

Nothing here raises on packet contents; what is not sent is counted with a reason. Time is
the `now` given with each batch (no wall clock), so replays are deterministic.
"""

from __future__ import annotations

import ipaddress
import weakref
from dataclasses import dataclass, field, fields

import numpy as np
from numpy.typing import NDArray

from nfaas.nf import build
from nfaas.nf.batch import PacketBatch
from nfaas.nf.gtpu import MAX_INNER_LENGTH, decapsulate
from nfaas.nf.headers import PROTO_ICMP, Headers, parse_inner
from nfaas.nf.timers import Timers
from nfaas.vnfs.common import check_positive, check_range
from nfaas.vnfs.tof.services import ServiceRegistry, parse_address
from nfaas.vnfs.tof.tunnels import Learned, Tunnel, TunnelTable

__all__ = ["Drops", "Tof", "TofConfig", "TofStats"]

GTP_G_PDU = 0xFF
Drops = dict[str, int]


@dataclass(frozen=True)
class TofConfig:
    """How the TOF behaves; every field has a working default.

    tunnel_timeout: seconds a tunnel may stay idle before it is purged.
    sweep_every: seconds between expiry sweeps (idle tunnels count as gone at once anyway).
    max_tunnels: bound per direction (new UEs beyond it are not learned; None: no bound).
    edge_mac / tof_mac: destination and source MAC of frames sent to the edge (the next hop
        towards the applications, and the TOF's own edge port).
    pinger_target: a PDN address the Pinger sends echo requests to (None: no Pinger).
    pinger_interval: at most one probe per UE per this many seconds.
    pinger_ident: ICMP identifier of probes; echo replies carrying it are consumed.
    outer_ttl: TTL of the outer IPv4 header of packets the TOF tunnels.
    """

    tunnel_timeout: float = 300.0
    sweep_every: float = 10.0
    max_tunnels: int | None = None
    edge_mac: str = "02:00:00:00:ed:01"
    tof_mac: str = "02:00:00:00:ed:00"
    pinger_target: str | None = None
    pinger_interval: float = 1.0
    pinger_ident: int = 0x70F1
    outer_ttl: int = 64

    def __post_init__(self) -> None:
        for name in ("tunnel_timeout", "sweep_every", "pinger_interval"):
            check_positive(name, getattr(self, name), "seconds")
        if self.max_tunnels is not None:
            check_range("max_tunnels", self.max_tunnels, 0)
        for name in ("edge_mac", "tof_mac"):
            try:
                build.mac_bytes(getattr(self, name))
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
        if self.pinger_target is not None:
            parse_address("pinger_target", self.pinger_target)
        check_range("pinger_ident", self.pinger_ident, 0, 0xFFFF)
        check_range("outer_ttl", self.outer_ttl, 1, 255)


@dataclass
class TofStats:
    """What the TOF has done since it started (drops are in the operators' counters)."""

    uplink_learned: int = 0
    uplink_changed: int = 0
    downlink_learned: int = 0
    downlink_changed: int = 0
    downlink_invalidated: int = 0  # the UE's uplink came from another eNodeB
    not_learned_table_full: int = 0
    uplink_purged: int = 0
    downlink_purged: int = 0
    decapsulated: int = 0
    encapsulated: int = 0
    forwarded_uplink: int = 0
    forwarded_downlink: int = 0
    probes_sent: int = 0
    probe_replies: int = 0

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def _count(drops: Drops, reason: str, mask: NDArray[np.bool_]) -> None:
    k = int(np.count_nonzero(mask))
    if k:
        drops[reason] = drops.get(reason, 0) + k


def _gpdu(h: Headers) -> NDArray[np.bool_]:
    """G-PDUs carried over outer IPv4 (the tunnels the TOF can learn and use)."""
    return (
        h.is_gtpu & (h.gtp_msg_type == GTP_G_PDU) & (h.ip_version == 4) & (h.gtp_inner_offset >= 0)
    )


def _inner_errors(drops: Drops, inner: Headers) -> None:
    for error, count in inner.error_counts().items():
        reason = f"inner_{error.name.lower()}"
        drops[reason] = drops.get(reason, 0) + count


@dataclass
class _Split:
    """The G-PDUs of a batch, their inner headers, and the rows whose inner IPv4 is usable."""

    rows: NDArray[np.intp]  # G-PDU rows of the batch
    inner: Headers  # inner headers of those rows
    bad: NDArray[np.bool_]  # per G-PDU: inner packet malformed
    usable: NDArray[np.bool_]  # per G-PDU: valid inner IPv4, TEID not 0
    batch: PacketBatch = field(repr=False)  # the G-PDUs (shares the buffer)
    outer: Headers = field(repr=False)


def _split(batch: PacketBatch, h: Headers) -> _Split:
    rows = np.flatnonzero(_gpdu(h))
    if rows.size == len(batch):
        sub, outer = batch, h  # all G-PDUs: no need to copy 60 header columns
    else:
        sub, outer = batch.select(rows, copy=False), h.select(rows)
    inner = parse_inner(sub, outer)
    usable = inner.valid & (inner.ip_version == 4) & (outer.gtp_teid != 0)
    return _Split(rows, inner, ~inner.valid, usable, sub, outer)


class Tof:
    """A TOF instance: services, learned tunnels, and the three batch functions."""

    def __init__(
        self, registry: ServiceRegistry | None = None, config: TofConfig | None = None
    ) -> None:
        self.registry = registry if registry is not None else ServiceRegistry()
        self.config = config or TofConfig()
        c = self.config
        self.uplink_tunnels = TunnelTable("uplink", c.tunnel_timeout, c.max_tunnels)
        self.downlink_tunnels = TunnelTable("downlink", c.tunnel_timeout, c.max_tunnels)
        self.stats = TofStats()
        self._edge_mac = build.mac_bytes(c.edge_mac)
        self._tof_mac = build.mac_bytes(c.tof_mac)
        self._pinger = (
            None if c.pinger_target is None else int(ipaddress.IPv4Address(c.pinger_target))
        )
        self._ident = 0  # outer IPv4 identification of the packets we tunnel
        self._probe_seq = 0
        self._timers: weakref.WeakSet[Timers] = weakref.WeakSet()

    # -- housekeeping -------------------------------------------------------------------

    def attach(self, timers: Timers) -> None:
        """Schedule the expiry sweep on `timers` (once per Timers, however often called)."""
        if timers not in self._timers:
            self._timers.add(timers)
            timers.every(self.config.sweep_every, self._sweep, name="tof.expire")

    def _sweep(self, now: float) -> None:
        self.expire(now)

    def expire(self, now: float) -> tuple[int, int]:
        """Purge tunnels idle past the timeout; returns (uplink, downlink) purged."""
        up = self.uplink_tunnels.expire(now)
        down = self.downlink_tunnels.expire(now)
        self.stats.uplink_purged += up
        self.stats.downlink_purged += down
        return up, down

    def tunnels(self) -> list[Tunnel]:
        """Every held tunnel, uplink then downlink."""
        return self.uplink_tunnels.tunnels() + self.downlink_tunnels.tunnels()

    def _learned(self, learned: Learned, direction: str) -> None:
        s = self.stats
        if direction == "uplink":
            s.uplink_learned += learned.new
            s.uplink_changed += learned.changed
        else:
            s.downlink_learned += learned.new
            s.downlink_changed += learned.changed
        s.not_learned_table_full += learned.refused

    def _next_idents(self, n: int) -> NDArray[np.int64]:
        idents = (self._ident + np.arange(n, dtype=np.int64)) & 0xFFFF
        self._ident = (self._ident + n) & 0xFFFF
        return idents

    # -- RAN -> core ------------------------------------------------------------------------

    def uplink(
        self, batch: PacketBatch, h: Headers, now: float
    ) -> tuple[PacketBatch, PacketBatch, Drops]:
        """Packets from the RAN: (to the core, to the edge, drops by reason)."""
        drops: Drops = {}
        g = _split(batch, h)
        _inner_errors(drops, g.inner)
        table = self.registry.table()
        use = np.flatnonzero(g.usable)
        ue = g.inner.ipv4_src[use]
        learned, tunnel_rows = self.uplink_tunnels.learn(ue, g.batch, g.outer, use, now)
        self._learned(learned, "uplink")
        self._invalidate_moved_downlinks(use, g, now)

        hit, app = table.application_of(g.inner.ipv4_dst[use])
        to_edge = np.zeros(len(g.rows), np.bool_)
        to_edge[use[hit]] = True
        core = np.ones(len(batch), np.bool_)
        core[g.rows[g.bad]] = False
        core[g.rows[to_edge]] = False

        edge_rows = use[hit]
        new_dst = np.zeros(len(g.rows), np.uint32)
        new_dst[edge_rows] = app[hit]
        build.set_ipv4_dst(g.batch, g.inner, new_dst, to_edge)  # in the input buffer
        to_app = decapsulate(
            g.batch, g.inner, dst_mac=self._edge_mac, src_mac=self._tof_mac, rows=edge_rows
        )
        self.stats.decapsulated += len(to_app)

        forwarded = batch if core.all() else batch.select(np.flatnonzero(core), copy=False)
        self.stats.forwarded_uplink += len(forwarded)
        probes = self._probes(ue[hit], tunnel_rows[hit], now)
        if len(probes):
            forwarded = PacketBatch.concat([forwarded, probes])
        return forwarded, to_app, drops

    def _invalidate_moved_downlinks(self, use: NDArray[np.intp], g: _Split, now: float) -> None:
        """A UE whose uplink now comes from another eNodeB has moved: its downlink TEID
        belongs to the old eNodeB, so forget it (the next downlink packet teaches the new)."""
        if not use.size or not len(self.downlink_tunnels):
            return
        ue = g.inner.ipv4_src[use]
        rows = self.downlink_tunnels.find(ue, now)
        known = rows >= 0
        enb = self.downlink_tunnels.records["dst"][rows[known]]
        moved = enb != g.outer.ipv4_src[use][known]
        if moved.any():
            gone = np.unique(ue[known][moved])
            self.stats.downlink_invalidated += self.downlink_tunnels.remove(gone)

    def _probes(
        self, ue: NDArray[np.uint32], uplink_rows: NDArray[np.int64], now: float
    ) -> PacketBatch:
        """Pinger: an echo request into the uplink tunnel of each UE that reached a service
        but has no downlink tunnel, at most once per pinger_interval."""
        if self._pinger is None or ue.size == 0:
            return PacketBatch.empty()
        ue, first = np.unique(ue, return_index=True)
        rows = uplink_rows[first]
        need = (rows >= 0) & (self.downlink_tunnels.find(ue, now) < 0)
        rec = self.uplink_tunnels.records
        due = ~rec["probed"][rows] | (now - rec["probed_at"][rows] >= self.config.pinger_interval)
        pick = need & due
        if not pick.any():
            return PacketBatch.empty()
        ue, rows = ue[pick], rows[pick]
        rec["probed"][rows] = True
        rec["probed_at"][rows] = now
        target = self._pinger
        inner = []
        for addr in ue.tolist():
            self._probe_seq = (self._probe_seq + 1) & 0xFFFF
            echo = build.icmp_echo(self.config.pinger_ident, self._probe_seq, b"nfaas-tof")
            inner.append(build.ipv4(addr, target, PROTO_ICMP, echo))
        probes = self.uplink_tunnels.encapsulate(
            PacketBatch.from_bytes(inner, timestamps_ns=int(now * 1e9)),
            rows,
            ttl=self.config.outer_ttl,
            ident=self._next_idents(rows.size),
        )
        self.stats.probes_sent += len(probes)
        return probes

    # -- core -> RAN ----------------------------------------------------------------------

    def downlink(self, batch: PacketBatch, h: Headers, now: float) -> tuple[PacketBatch, Drops]:
        """Packets from the core: (to the RAN, drops by reason)."""
        drops: Drops = {}
        g = _split(batch, h)
        _inner_errors(drops, g.inner)
        use = np.flatnonzero(g.usable)
        learned, _ = self.downlink_tunnels.learn(g.inner.ipv4_dst[use], g.batch, g.outer, use, now)
        self._learned(learned, "downlink")
        keep = np.ones(len(batch), np.bool_)
        keep[g.rows[g.bad]] = False
        if self._pinger is not None:
            i = g.inner
            reply = (
                g.usable
                & (i.protocol == PROTO_ICMP)
                & (i.icmp_type == 0)
                & (i.icmp_id == self.config.pinger_ident)
                & (i.ipv4_src == self._pinger)
            )
            keep[g.rows[reply]] = False
            _count(drops, "pinger_reply", reply)
            self.stats.probe_replies += int(np.count_nonzero(reply))
        out = batch if keep.all() else batch.select(np.flatnonzero(keep), copy=False)
        self.stats.forwarded_downlink += len(out)
        return out, drops

    # -- edge -> RAN ----------------------------------------------------------------------

    def edge(self, batch: PacketBatch, h: Headers, now: float) -> tuple[PacketBatch, Drops]:
        """Replies from edge applications: (tunnelled towards the RAN, drops by reason)."""
        drops: Drops = {}
        n = len(batch)
        ipv4 = h.valid & (h.ip_version == 4)
        _count(drops, "not_ipv4", ~ipv4)
        from_app, service = self.registry.table().service_of(h.ipv4_src)
        from_app &= ipv4
        _count(drops, "not_from_service", ipv4 & ~from_app)
        rows = np.full(n, -1, np.int64)
        cand = np.flatnonzero(from_app)
        rows[cand] = self.downlink_tunnels.find(h.ipv4_dst[cand], now)
        tunnelled = from_app & (rows >= 0)
        _count(drops, "no_downlink_tunnel", from_app & (rows < 0))
        too_big = tunnelled & (h.ip_total_length > MAX_INNER_LENGTH)
        _count(drops, "too_big", too_big)
        send = np.flatnonzero(tunnelled & ~too_big)
        if send.size == 0:
            return PacketBatch.empty(), drops
        mask = np.zeros(n, np.bool_)
        mask[send] = True
        build.set_ipv4_src(batch, h, service, mask)  # in the input buffer
        start = h.l3_offset[send].astype(np.int64)
        end = start + h.ip_total_length[send]
        tunnel_rows = rows[send]
        self.downlink_tunnels.touch(tunnel_rows, now)
        out = self.downlink_tunnels.encapsulate(
            batch if send.size == n else batch.select(send, copy=False),
            tunnel_rows,
            ttl=self.config.outer_ttl,
            ident=self._next_idents(send.size),
            start=start,
            end=end,
        )
        self.stats.encapsulated += len(out)
        return out, drops
