"""The NAT translation table: SNAT with port allocation, DNAT port forwards, timeouts.

Packets come as arrays of 5-tuples (FiveTuples). `outbound` translates packets leaving the
inside network, `inbound` packets arriving from outside; both work on whole batches.

SNAT is endpoint-dependent (one session per inside 5-tuple, as Linux conntrack and VPP's
NAT44-ED do) and every live session owns its public (address, port, protocol) alone, so a
reply is found by its destination (address, port) with no ambiguity, and inbound packets
are filtered: only the remote endpoint the session was opened to gets in (RFC 4787's
address-and-port-dependent filtering; address only for ICMP). The public address is chosen
by a hash of the inside address ("paired" pooling, RFC 4787 REQ-2) while it has free ports,
else the next address with some. Ports come from a per-(address, protocol) FIFO of free
ports, shuffled at start (RFC 6056's advice against predictable ports) and refilled at the
back when sessions expire, so a freed port is reused as late as possible.

ICMP echo: the identifier plays the port. By convention a tuple carries it in both sport
and dport (the parser puts it there); translation rewrites both.

DNAT is static port forwarding: public (address, port, protocol) -> inside (address,
port), stateless in both directions; SNAT never hands out a forwarded public port.

Sessions expire after a timeout per protocol and, for TCP, per state (RFC 5382: 2 h 4 min
established, 4 min transitory; RFC 4787: UDP 5 min; RFC 5508: ICMP 60 s). Time is the `now`
argument of each call. Expired sessions are swept every sweep_interval seconds of `now`,
whenever an expired session is hit, and before a packet is refused for want of a port.
A packet that cannot be translated is dropped with a verdict and counted, never raised.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike, NDArray

from nfaas.nf.flowtable import FlowTable, mix64
from nfaas.vnfs.common import check_positive, check_range

ICMP, TCP, UDP = 1, 6, 17
PROTOCOLS = (ICMP, TCP, UDP)
_PROTO_INDEX = np.full(256, -1, np.int64)
_PROTO_INDEX[list(PROTOCOLS)] = np.arange(len(PROTOCOLS))

FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10

# TCP session states (transitory unless established).
_TCP_OPENING, _TCP_ESTABLISHED, _TCP_CLOSING = 1, 2, 3


def ipv4(text: str) -> int:
    """A dotted IPv4 address as the uint32 the tables use."""
    return int(ipaddress.IPv4Address(text))


class Verdict(enum.IntEnum):
    """Per-packet outcome of a translation."""

    TRANSLATED = 0
    EXHAUSTED = 1  # no free public port (or session slot) for a new flow
    NO_SESSION = 2  # inbound packet matching no session and no forward
    FILTERED = 3  # inbound packet from an endpoint the session was not opened to
    UNSUPPORTED = 4  # protocol other than TCP, UDP, ICMP
    COLLISION = 5  # 64-bit flow key equal to another live flow's (expected never)


_FIELDS: tuple[tuple[str, type[np.unsignedinteger]], ...] = (
    ("src", np.uint32),
    ("dst", np.uint32),
    ("sport", np.uint16),
    ("dport", np.uint16),
)


def _column(name: str, values: ArrayLike, dtype: type[np.unsignedinteger]) -> NDArray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise ValueError(f"5-tuple field {name} must be a 1-d array, got shape {array.shape}")
    if array.dtype == dtype:
        return array
    if array.size:
        if not np.issubdtype(array.dtype, np.integer):
            raise ValueError(f"5-tuple field {name} must be integers, got dtype {array.dtype}")
        bad = (array < 0) | (array > np.iinfo(dtype).max)
        if bad.any():
            at = int(np.flatnonzero(bad)[0])
            raise ValueError(
                f"5-tuple field {name}[{at}] = {array[at]} out of range for {dtype.__name__}"
            )
    return array.astype(dtype)


@dataclass
class FiveTuples:
    """A batch of 5-tuples as parallel arrays (addresses as uint32, host order)."""

    src: NDArray[np.uint32]
    dst: NDArray[np.uint32]
    sport: NDArray[np.uint16]
    dport: NDArray[np.uint16]
    proto: NDArray[np.uint8]

    @classmethod
    def of(
        cls, src: ArrayLike, dst: ArrayLike, sport: ArrayLike, dport: ArrayLike, proto: ArrayLike
    ) -> FiveTuples:
        """Validated arrays: 1-d, one length, each value in its field's range."""
        columns = [
            _column(name, values, dtype)
            for (name, dtype), values in zip(_FIELDS, (src, dst, sport, dport), strict=True)
        ]
        columns.append(_column("proto", proto, np.uint8))
        lengths = {c.size for c in columns}
        if len(lengths) != 1:
            raise ValueError(f"5-tuple fields differ in length: {[c.size for c in columns]}")
        return cls(*columns)

    def __len__(self) -> int:
        return int(self.src.size)

    def copy(self) -> FiveTuples:
        return FiveTuples(
            self.src.copy(), self.dst.copy(), self.sport.copy(), self.dport.copy(),
            self.proto.copy(),
        )  # fmt: skip

    def reply(self) -> FiveTuples:
        """The tuples of the packets answering these (source and destination swapped)."""
        return FiveTuples(self.dst, self.src, self.dport, self.sport, self.proto)

    def take(self, index: NDArray[np.intp] | NDArray[np.bool_]) -> FiveTuples:
        return FiveTuples(
            self.src[index], self.dst[index], self.sport[index], self.dport[index],
            self.proto[index],
        )  # fmt: skip

    def equals(self, other: FiveTuples) -> NDArray[np.bool_]:
        """Per packet: are the two tuples the same?"""
        return (
            (self.src == other.src)
            & (self.dst == other.dst)
            & (self.sport == other.sport)
            & (self.dport == other.dport)
            & (self.proto == other.proto)
        )


@dataclass(frozen=True)
class Translation:
    """Rewritten tuples (dropped packets left as they came) and a verdict per packet."""

    tuples: FiveTuples
    verdict: NDArray[np.uint8]

    @property
    def ok(self) -> NDArray[np.bool_]:
        return self.verdict == Verdict.TRANSLATED


@dataclass(frozen=True)
class Timeouts:
    """Idle timeouts in seconds (defaults: the RFC minimums/recommendations)."""

    tcp_established: float = 7440.0  # RFC 5382 REQ-5
    tcp_transitory: float = 240.0  # RFC 5382 REQ-5
    udp: float = 300.0  # RFC 4787 REQ-5
    icmp: float = 60.0  # RFC 5508 REQ-1

    def __post_init__(self) -> None:
        for name in ("tcp_established", "tcp_transitory", "udp", "icmp"):
            check_positive(f"timeouts.{name}", getattr(self, name), "seconds")


@dataclass(frozen=True)
class PortForward:
    """DNAT: traffic to public_addr:public_port goes to inside_addr:inside_port."""

    proto: int
    public_addr: int
    public_port: int
    inside_addr: int
    inside_port: int


def _default_ranges() -> dict[int, tuple[int, int]]:
    return {TCP: (1024, 65535), UDP: (1024, 65535), ICMP: (1024, 65535)}


@dataclass(frozen=True)
class NatConfig:
    """public_addrs: the SNAT pool (uint32 addresses). port_ranges: inclusive range of
    public ports (ICMP ids) per protocol. max_sessions: cap on live sessions (default: one
    per public port). seed: the port shuffle (same seed, same ports)."""

    public_addrs: Sequence[int]
    port_ranges: Mapping[int, tuple[int, int]] = field(default_factory=_default_ranges)
    forwards: Sequence[PortForward] = ()
    timeouts: Timeouts = field(default_factory=Timeouts)
    max_sessions: int | None = None
    sweep_interval: float = 1.0
    seed: int = 0

    def validate(self) -> None:
        for i, addr in enumerate(self.public_addrs):
            if not 0 <= addr <= 0xFFFFFFFF:
                raise ValueError(f"public_addrs[{i}] = {addr} is not an IPv4 address")
        if len(set(self.public_addrs)) != len(self.public_addrs):
            raise ValueError("public_addrs lists an address twice")
        for proto in PROTOCOLS:
            if proto not in self.port_ranges:
                raise ValueError(f"port_ranges has no range for protocol {proto}")
        for proto, (low, high) in self.port_ranges.items():
            if proto not in PROTOCOLS:
                raise ValueError(f"port_ranges: protocol {proto} is not one of {PROTOCOLS}")
            if not 0 <= low <= high <= 65535:
                raise ValueError(f"port_ranges[{proto}] = ({low}, {high}) is not a port range")
        for i, rule in enumerate(self.forwards):
            where = f"forwards[{i}]"
            if rule.proto not in (TCP, UDP):
                raise ValueError(f"{where}: protocol must be TCP (6) or UDP (17), got {rule.proto}")
            for name in ("public_addr", "inside_addr"):
                if not 0 <= getattr(rule, name) <= 0xFFFFFFFF:
                    raise ValueError(f"{where}: {name} is not an IPv4 address")
            for name in ("public_port", "inside_port"):
                check_range(f"{where}: {name}", getattr(rule, name), 1, 65535)
        if self.max_sessions is not None:
            check_range("max_sessions", self.max_sessions, 0)
        check_range("sweep_interval", self.sweep_interval, 0)


@dataclass
class NatStats:
    translated_out: int = 0
    translated_in: int = 0
    sessions_created: int = 0
    sessions_expired: int = 0
    exhausted: int = 0
    no_session: int = 0
    filtered: int = 0
    unsupported: int = 0
    collisions: int = 0

    def count(self, verdicts: NDArray[np.uint8], direction: str) -> None:
        tally = np.bincount(verdicts, minlength=len(Verdict))
        if direction == "out":
            self.translated_out += int(tally[Verdict.TRANSLATED])
        else:
            self.translated_in += int(tally[Verdict.TRANSLATED])
        self.exhausted += int(tally[Verdict.EXHAUSTED])
        self.no_session += int(tally[Verdict.NO_SESSION])
        self.filtered += int(tally[Verdict.FILTERED])
        self.unsupported += int(tally[Verdict.UNSUPPORTED])
        self.collisions += int(tally[Verdict.COLLISION])


def endpoint_key(
    addr: NDArray[np.uint32], port: NDArray[np.uint16], proto: NDArray[np.uint8]
) -> NDArray[np.uint64]:
    """(address, port, protocol) packed exactly into 56 bits."""
    key = addr.astype(np.uint64) << np.uint64(24)
    key |= port.astype(np.uint64) << np.uint64(8)
    key |= proto.astype(np.uint64)
    return key


def flow_key(t: FiveTuples) -> NDArray[np.uint64]:
    """A 64-bit hash of the whole 5-tuple (104 bits do not fit; sessions verify the tuple)."""
    addrs = (t.src.astype(np.uint64) << np.uint64(32)) | t.dst.astype(np.uint64)
    rest = (
        (t.sport.astype(np.uint64) << np.uint64(24))
        | (t.dport.astype(np.uint64) << np.uint64(8))
        | t.proto.astype(np.uint64)
    )
    return mix64(mix64(addrs) ^ rest)


class PortPool:
    """Free ports of one (public address, protocol): oldest-freed handed out first."""

    def __init__(self, ports: NDArray[np.uint16], rng: np.random.Generator) -> None:
        self._ring = rng.permutation(ports).astype(np.uint16)
        self._head = 0
        self.free = int(ports.size)

    @property
    def size(self) -> int:
        return int(self._ring.size)

    def take(self, count: int) -> NDArray[np.uint16]:
        count = min(count, self.free)
        at = (self._head + np.arange(count)) % max(self.size, 1)
        self._head = (self._head + count) % max(self.size, 1)
        self.free -= count
        return self._ring[at]

    def give(self, ports: NDArray[np.uint16]) -> None:
        at = (self._head + self.free + np.arange(ports.size)) % self.size
        self._ring[at] = ports
        self.free += int(ports.size)


class _Sessions:
    """Session state as parallel arrays indexed by session id, grown on demand."""

    _columns = {
        "in_addr": np.uint32, "in_port": np.uint16, "remote_addr": np.uint32,
        "remote_port": np.uint16, "proto": np.uint8, "pub_addr": np.uint32,
        "pub_port": np.uint16, "pool": np.int64, "last_seen": np.float64, "tcp": np.uint8,
        "seen_in": np.bool_, "live": np.bool_,
    }  # fmt: skip

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.capacity = 0
        self._free = np.zeros(0, np.int64)  # a stack of free ids
        self._top = 0
        for name, dtype in self._columns.items():
            setattr(self, name, np.zeros(0, dtype))
        self.in_addr: NDArray[np.uint32]
        self.in_port: NDArray[np.uint16]
        self.remote_addr: NDArray[np.uint32]
        self.remote_port: NDArray[np.uint16]
        self.proto: NDArray[np.uint8]
        self.pub_addr: NDArray[np.uint32]
        self.pub_port: NDArray[np.uint16]
        self.pool: NDArray[np.int64]
        self.last_seen: NDArray[np.float64]
        self.tcp: NDArray[np.uint8]
        self.seen_in: NDArray[np.bool_]
        self.live: NDArray[np.bool_]

    def __len__(self) -> int:
        return self.capacity - self._top

    def _grow(self, needed: int) -> None:
        capacity = min(self.limit, max(1024, 2 * self.capacity, self.capacity + needed))
        extra = capacity - self.capacity
        for name, dtype in self._columns.items():
            setattr(self, name, np.concatenate([getattr(self, name), np.zeros(extra, dtype)]))
        fresh = np.arange(capacity - 1, self.capacity - 1, -1, dtype=np.int64)
        self._free = np.concatenate([self._free[: self._top], fresh])
        self._top += extra
        self.capacity = capacity

    def allocate(self, count: int) -> NDArray[np.int64]:
        """Up to count fresh session ids (fewer when the limit is reached)."""
        if count > self._top and self.capacity < self.limit:
            self._grow(count - self._top)
        count = min(count, self._top)
        ids = self._free[self._top - count : self._top][::-1].copy()
        self._top -= count
        self.live[ids] = True
        return ids

    def release(self, ids: NDArray[np.int64]) -> None:
        self.live[ids] = False
        self._free[self._top : self._top + ids.size] = ids
        self._top += ids.size


class _Forwards:
    """The static port forwards, searchable by public and by inside endpoint."""

    def __init__(self, rules: Sequence[PortForward]) -> None:
        def column(name: str, dtype: type[np.unsignedinteger]) -> NDArray:
            return np.array([getattr(r, name) for r in rules], dtype)

        self.proto = column("proto", np.uint8)
        self.public_addr = column("public_addr", np.uint32)
        self.public_port = column("public_port", np.uint16)
        self.inside_addr = column("inside_addr", np.uint32)
        self.inside_port = column("inside_port", np.uint16)
        self._public = self._index(
            endpoint_key(self.public_addr, self.public_port, self.proto), rules, "public"
        )
        self._inside = self._index(
            endpoint_key(self.inside_addr, self.inside_port, self.proto), rules, "inside"
        )

    @staticmethod
    def _index(
        keys: NDArray[np.uint64], rules: Sequence[PortForward], side: str
    ) -> tuple[NDArray[np.uint64], NDArray[np.intp]]:
        order = np.argsort(keys, kind="stable")
        ordered = keys[order]
        dup = np.flatnonzero(ordered[1:] == ordered[:-1])
        if dup.size:
            first, second = sorted((int(order[dup[0]]), int(order[dup[0] + 1])))
            raise ValueError(
                f"forwards[{second}] repeats the {side} endpoint of forwards[{first}]: {rules[second]}"
            )
        return ordered, order

    @staticmethod
    def _match(
        index: tuple[NDArray[np.uint64], NDArray[np.intp]], keys: NDArray[np.uint64]
    ) -> NDArray[np.intp]:
        ordered, order = index
        if ordered.size == 0:
            return np.full(keys.size, -1, np.intp)
        at = np.searchsorted(ordered, keys).clip(max=ordered.size - 1)
        return np.where(ordered[at] == keys, order[at], -1)

    def by_public(
        self, addr: NDArray[np.uint32], port: NDArray[np.uint16], proto: NDArray[np.uint8]
    ) -> NDArray[np.intp]:
        return self._match(self._public, endpoint_key(addr, port, proto))

    def by_inside(
        self, addr: NDArray[np.uint32], port: NDArray[np.uint16], proto: NDArray[np.uint8]
    ) -> NDArray[np.intp]:
        return self._match(self._inside, endpoint_key(addr, port, proto))


class NatTable:
    """SNAT sessions and DNAT forwards; translate batches with outbound() and inbound()."""

    def __init__(self, config: NatConfig) -> None:
        config.validate()
        self.config = config
        self.timeouts = config.timeouts
        self._addrs = np.array(config.public_addrs, np.uint32)
        self._forwards = _Forwards(config.forwards)
        rng = np.random.default_rng(config.seed)
        # pools[a * 3 + p]: free ports of public address a for protocol PROTOCOLS[p]
        self._pools: list[PortPool] = []
        reserved = {(r.public_addr, r.proto, r.public_port) for r in config.forwards}
        for addr in config.public_addrs:
            for proto in PROTOCOLS:
                low, high = config.port_ranges[proto]
                ports = np.arange(low, high + 1, dtype=np.uint16)
                taken = [p for a, q, p in reserved if a == addr and q == proto]
                ports = ports[~np.isin(ports, taken)]
                self._pools.append(PortPool(ports, rng))
        total_ports = sum(p.size for p in self._pools)
        limit = (
            total_ports if config.max_sessions is None else min(total_ports, config.max_sessions)
        )
        self._sessions = _Sessions(limit)
        self._out = FlowTable()  # flow_key(inside tuple) -> session id
        self._in = FlowTable()  # endpoint_key(public addr, port, proto) -> session id
        self._last_sweep = -np.inf
        self.stats = NatStats()

    def __len__(self) -> int:
        """Live sessions."""
        return len(self._sessions)

    # -- translation ---------------------------------------------------------------------------

    def outbound(
        self, tuples: FiveTuples, now: float, tcp_flags: ArrayLike | None = None
    ) -> Translation:
        """Translate packets from the inside: forwarded services' replies, then SNAT."""
        out, verdict, proto_ok = self._start(tuples, now, tcp_flags)
        rule = self._forwards.by_inside(tuples.src, tuples.sport, tuples.proto)
        served = proto_ok & (rule >= 0)
        out.src[served] = self._forwards.public_addr[rule[served]]
        out.sport[served] = self._forwards.public_port[rule[served]]

        todo = np.flatnonzero(proto_ok & ~served)
        if todo.size:
            batch = tuples.take(todo)
            sids = self._outbound_sessions(batch, now)
            same = np.zeros(todo.size, bool)
            have = sids >= 0
            same[have] = self._inside_tuples(sids[have]).equals(batch.take(have))
            verdict[todo[~have]] = Verdict.EXHAUSTED
            verdict[todo[have & ~same]] = Verdict.COLLISION
            rows, sids = todo[same], sids[same]
            out.src[rows] = self._sessions.pub_addr[sids]
            out.sport[rows] = self._sessions.pub_port[sids]
            icmp = tuples.proto[rows] == ICMP
            out.dport[rows[icmp]] = self._sessions.pub_port[sids[icmp]]
            self._sessions.last_seen[sids] = now
            self._track_tcp(sids, _flags_at(tcp_flags, rows), inbound=False)
        self.stats.count(verdict, "out")
        return Translation(out, verdict)

    def inbound(
        self, tuples: FiveTuples, now: float, tcp_flags: ArrayLike | None = None
    ) -> Translation:
        """Translate packets from outside: port forwards, then replies to SNAT sessions."""
        out, verdict, proto_ok = self._start(tuples, now, tcp_flags)
        rule = self._forwards.by_public(tuples.dst, tuples.dport, tuples.proto)
        forwarded = proto_ok & (rule >= 0)
        out.dst[forwarded] = self._forwards.inside_addr[rule[forwarded]]
        out.dport[forwarded] = self._forwards.inside_port[rule[forwarded]]

        todo = np.flatnonzero(proto_ok & ~forwarded)
        if todo.size:
            keys = endpoint_key(tuples.dst[todo], tuples.dport[todo], tuples.proto[todo])
            sids, found = self._lookup_live(self._in, keys, now)
            s = self._sessions
            allowed = found.copy()
            hit = sids[found]
            proto = tuples.proto[todo[found]]
            allowed[found] = (s.remote_addr[hit] == tuples.src[todo[found]]) & (
                (proto == ICMP) | (s.remote_port[hit] == tuples.sport[todo[found]])
            )
            verdict[todo[~found]] = Verdict.NO_SESSION
            verdict[todo[found & ~allowed]] = Verdict.FILTERED
            rows, sids = todo[allowed], sids[allowed]
            out.dst[rows] = s.in_addr[sids]
            out.dport[rows] = s.in_port[sids]
            icmp = tuples.proto[rows] == ICMP
            out.sport[rows[icmp]] = s.in_port[sids[icmp]]
            s.last_seen[sids] = now
            s.seen_in[sids] = True
            self._track_tcp(sids, _flags_at(tcp_flags, rows), inbound=True)
        self.stats.count(verdict, "in")
        return Translation(out, verdict)

    def _start(
        self, tuples: FiveTuples, now: float, tcp_flags: ArrayLike | None
    ) -> tuple[FiveTuples, NDArray[np.uint8], NDArray[np.bool_]]:
        """What both directions begin with: check the flags, sweep if due, and give the
        output tuples (a copy to rewrite), the verdicts (UNSUPPORTED for protocols NAT does
        not know, else TRANSLATED so far) and the mask of supported packets."""
        _check_flags(tcp_flags, len(tuples))
        self._sweep_if_due(now)
        verdict = np.zeros(len(tuples), np.uint8)
        proto_ok = _PROTO_INDEX[tuples.proto] >= 0
        verdict[~proto_ok] = Verdict.UNSUPPORTED
        return tuples.copy(), verdict, proto_ok

    # -- sessions ------------------------------------------------------------------------------

    def _inside_tuples(self, sids: NDArray[np.int64]) -> FiveTuples:
        s = self._sessions
        return FiveTuples(
            s.in_addr[sids], s.remote_addr[sids], s.in_port[sids], s.remote_port[sids],
            s.proto[sids],
        )  # fmt: skip

    def _lookup_live(
        self, table: FlowTable, keys: NDArray[np.uint64], now: float
    ) -> tuple[NDArray[np.int64], NDArray[np.bool_]]:
        """Session ids for keys, treating sessions past their timeout as gone."""
        sids, found = table.lookup(keys)
        hit = sids[found]
        if (now - self._sessions.last_seen[hit] > self._timeout_of(hit)).any():
            self.expire(now)
            sids, found = table.lookup(keys)
        return sids, found

    def _outbound_sessions(self, batch: FiveTuples, now: float) -> NDArray[np.int64]:
        """The session of each packet, opening sessions for new flows; -1 if none free."""
        keys = flow_key(batch)
        sids, found = self._lookup_live(self._out, keys, now)
        if found.all():
            return sids
        missing = np.flatnonzero(~found)
        new_keys, first, which = np.unique(keys[missing], return_index=True, return_inverse=True)
        flows = batch.take(missing[first])
        opened = self._open(flows, new_keys, now)
        sids[missing] = opened[which.ravel()]
        return sids

    def _open(self, flows: FiveTuples, keys: NDArray[np.uint64], now: float) -> NDArray[np.int64]:
        """Open a session per flow (distinct flows); -1 where no port or slot is left."""
        sids = np.full(len(flows), -1, np.int64)
        pending = np.arange(len(flows))
        for attempt in range(2):
            pending = pending[sids[pending] < 0]
            if attempt and pending.size:
                self.expire(now)  # make room from idle sessions, then try once more
            if not pending.size:
                break
            ids = self._sessions.allocate(pending.size)
            got = pending[: ids.size]
            pools, ports = self._allocate_ports(flows.src[got], flows.proto[got])
            placed = pools >= 0
            self._sessions.release(ids[~placed])
            got, ids = got[placed], ids[placed]
            sids[got] = ids
            self._fill(ids, flows.take(got), pools[placed], ports[placed], keys[got], now)
        self.stats.sessions_created += int(np.count_nonzero(sids >= 0))
        return sids

    def _fill(
        self,
        ids: NDArray[np.int64],
        flows: FiveTuples,
        pools: NDArray[np.int64],
        ports: NDArray[np.uint16],
        keys: NDArray[np.uint64],
        now: float,
    ) -> None:
        s = self._sessions
        s.in_addr[ids], s.in_port[ids] = flows.src, flows.sport
        s.remote_addr[ids], s.remote_port[ids] = flows.dst, flows.dport
        s.proto[ids] = flows.proto
        s.pool[ids] = pools
        s.pub_addr[ids] = self._addrs[pools // len(PROTOCOLS)]
        s.pub_port[ids] = ports
        s.last_seen[ids] = now
        s.tcp[ids] = np.where(flows.proto == TCP, _TCP_OPENING, 0)
        s.seen_in[ids] = False
        self._out.insert(keys, ids, now)
        self._in.insert(endpoint_key(s.pub_addr[ids], ports, flows.proto), ids, now)

    def _allocate_ports(
        self, inside: NDArray[np.uint32], proto: NDArray[np.uint8]
    ) -> tuple[NDArray[np.int64], NDArray[np.uint16]]:
        """(pool, port) per new flow; pool -1 where every address is out of ports."""
        count = len(PROTOCOLS)
        pools = np.full(inside.size, -1, np.int64)
        ports = np.zeros(inside.size, np.uint16)
        if not self._addrs.size:
            return pools, ports
        proto_index = _PROTO_INDEX[proto]
        home = (mix64(inside.astype(np.uint64)) % np.uint64(self._addrs.size)).astype(np.int64)
        # Each flow tries its home address first, then the following ones in turn.
        for shift in range(self._addrs.size):
            waiting = np.flatnonzero(pools < 0)
            if not waiting.size:
                break
            want = ((home[waiting] + shift) % self._addrs.size) * count + proto_index[waiting]
            for pool in np.unique(want):
                rows = waiting[want == pool]
                granted = self._pools[pool].take(rows.size)
                rows = rows[: granted.size]
                pools[rows], ports[rows] = pool, granted
        return pools, ports

    def _timeout_of(self, sids: NDArray[np.int64]) -> NDArray[np.float64]:
        s, t = self._sessions, self.timeouts
        proto, state = s.proto[sids], s.tcp[sids]
        other = np.where(proto == UDP, t.udp, t.icmp)
        tcp = np.where(state == _TCP_ESTABLISHED, t.tcp_established, t.tcp_transitory)
        return np.where(proto == TCP, tcp, other)

    def _track_tcp(
        self, sids: NDArray[np.int64], flags: NDArray[np.uint8] | None, inbound: bool
    ) -> None:
        """Move TCP sessions between transitory and established (batch order ignored).

        Established once packets went both ways; closing (transitory) after a FIN or RST;
        a bare SYN from the inside on a closing session starts it afresh.
        """
        s = self._sessions
        tcp = sids[s.proto[sids] == TCP]
        if flags is not None:
            flags = flags[s.proto[sids] == TCP]
            if not inbound:
                restart = tcp[((flags & (SYN | ACK)) == SYN) & (s.tcp[tcp] == _TCP_CLOSING)]
                s.tcp[restart] = _TCP_OPENING
                s.seen_in[restart] = False
            s.tcp[tcp[(flags & (FIN | RST)) != 0]] = _TCP_CLOSING
        opening = tcp[(s.tcp[tcp] == _TCP_OPENING) & s.seen_in[tcp]]
        s.tcp[opening] = _TCP_ESTABLISHED

    # -- expiry --------------------------------------------------------------------------------

    def _sweep_if_due(self, now: float) -> None:
        if now - self._last_sweep >= self.config.sweep_interval:
            self.expire(now)

    def expire(self, now: float) -> int:
        """End sessions idle past their timeout and free their ports; returns how many."""
        self._last_sweep = now
        s = self._sessions
        live = np.flatnonzero(s.live)
        dead = live[now - s.last_seen[live] > self._timeout_of(live)]
        if not dead.size:
            return 0
        inside = self._inside_tuples(dead)
        self._out.delete(flow_key(inside))
        self._in.delete(endpoint_key(s.pub_addr[dead], s.pub_port[dead], s.proto[dead]))
        pools = s.pool[dead]
        for pool in np.unique(pools):
            self._pools[pool].give(s.pub_port[dead[pools == pool]])
        s.release(dead)
        self.stats.sessions_expired += int(dead.size)
        return int(dead.size)

    # -- introspection -------------------------------------------------------------------------

    def sessions(self) -> dict[str, NDArray]:
        """The live sessions as columns: inside/remote/public endpoints, proto, last seen."""
        s = self._sessions
        live = np.flatnonzero(s.live)
        return {
            "in_addr": s.in_addr[live], "in_port": s.in_port[live],
            "remote_addr": s.remote_addr[live], "remote_port": s.remote_port[live],
            "proto": s.proto[live], "pub_addr": s.pub_addr[live], "pub_port": s.pub_port[live],
            "last_seen": s.last_seen[live],
        }  # fmt: skip

    def free_ports(self, public_addr: int, proto: int) -> int:
        """Ports (ICMP ids) of one public address still free for one protocol."""
        where = np.flatnonzero(self._addrs == public_addr)
        if not where.size or proto not in PROTOCOLS:
            raise KeyError(f"no port pool for address {public_addr} protocol {proto}")
        return self._pools[int(where[0]) * len(PROTOCOLS) + PROTOCOLS.index(proto)].free


def _flags_at(tcp_flags: ArrayLike | None, rows: NDArray[np.intp]) -> NDArray[np.uint8] | None:
    return None if tcp_flags is None else np.asarray(tcp_flags, np.uint8)[rows]


def _check_flags(tcp_flags: ArrayLike | None, count: int) -> None:
    if tcp_flags is not None and np.shape(tcp_flags) != (count,):
        raise ValueError(f"tcp_flags has shape {np.shape(tcp_flags)}, expected ({count},)")
