"""Per-flow state for NFs: a vectorised flow-state table with expiry, and connection tracking.

`FlowState` keeps one record (a row of a numpy structured array, fields chosen by the NF) per
64-bit flow key, with a last-seen time and an idle timeout per row. Lookups, inserts and
expiry sweeps take whole arrays of keys. It is built on `nfaas.nf.flowtable.FlowTable`, which
maps keys to row numbers.

`ConnTrack` follows netfilter's connection tracking. Each packet gets a state: NEW (the
connection has not seen a reply yet), ESTABLISHED (it has; and every valid reply-direction
packet), RELATED (an ICMP/ICMPv6 error about a tracked connection: the embedded header is
parsed and looked up), INVALID (malformed, out of the TCP state machine, a TCP connection
not starting with a SYN, an echo reply nobody asked for, an ICMP error about nothing we
track) or UNTRACKED (non-IP, non-first IP fragments, IPv6 neighbour discovery and MLD).
Connections are keyed by a symmetric hash of both endpoints, so both directions find one
entry, and the entry remembers which endpoint sent first: `reply` says, per packet, whether
it travels in the reply direction. TCP follows netfilter's state table (SYN_SENT, SYN_RECV,
ESTABLISHED, FIN_WAIT, CLOSE_WAIT, LAST_ACK, TIME_WAIT, CLOSE, SYN_SENT2) with its default
timeouts, without sequence-window checks; UDP and other protocols are "unreplied" then
"replied"; ICMP echo is tracked by identifier.

Confirmation: netfilter creates a connection unconfirmed and records it only when its first
packet leaves the hook, so a packet that a filter drops leaves no connection behind. `track`
takes an optional `confirm` function for that: asked about the packets that would create
(or re-open) a connection, it says which of them will be let through; the others stay NEW
but record nothing (a TIME_WAIT connection a refused SYN would re-open is gone, as in
netfilter, which kills it when the SYN arrives), and later packets of the batch see the
table as they would had the refused packet been processed and dropped on its own.
`Tracked.created` flags the packets that did create a connection.

Vectorisation: packets are grouped by connection; each round resolves, for every
connection at once, all packets up to and including the next one that changes its state
(most packets change nothing), so a batch costs a few rounds, not a loop over packets. A
connection that changes state more than `MAX_ROUNDS` times within one batch (SYN/RST storms)
finishes in a plain loop.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray

from nfaas.nf.batch import PacketBatch
from nfaas.nf.flowtable import FlowTable, as_keys, mix64
from nfaas.nf.headers import (
    PROTO_ICMP,
    PROTO_ICMPV6,
    PROTO_SCTP,
    PROTO_TCP,
    PROTO_UDP,
    Headers,
    ParseError,
    parse,
)
from nfaas.nf.operators import EdgeType, Operator, Output, with_meta
from nfaas.nf.timers import Timers

__all__ = [
    "MAX_ROUNDS",
    "Confirm",
    "ConnTrack",
    "CtState",
    "FlowState",
    "TcpState",
    "Timeouts",
    "Track",
    "Tracked",
    "connection_keys",
    "schedule_expiry",
]

U64 = NDArray[np.uint64]
I64 = NDArray[np.int64]


# -- the flow-state table ---------------------------------------------------------------------


class FlowState:
    """uint64 flow key -> one record of `fields`, with idle expiry.

    `records` is a structured array indexed by row; `find`/`upsert` return rows, so an NF
    reads and writes columns directly: `st.records["bytes"][rows] += sizes` (use `np.add.at`
    when a key may repeat within the batch). A row is live until it has been idle (no
    `upsert` or `touch`) for longer than its timeout (`timeout` by default, per row via
    `set_timeout`). Idle rows count as absent at once; `expire(now)` removes them and returns
    their keys and records. `max_flows` bounds the live rows: new keys beyond it are refused
    (row -1).
    """

    def __init__(
        self,
        fields: Mapping[str, DTypeLike] | np.dtype[Any] | None = None,
        *,
        timeout: float = 300.0,
        capacity: int = 1024,
        max_flows: int | None = None,
    ) -> None:
        if not timeout > 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        if isinstance(fields, np.dtype):
            self.dtype: np.dtype[Any] = fields
        else:
            self.dtype = np.dtype([(k, v) for k, v in (fields or {}).items()])
        self.timeout = float(timeout)
        self.max_flows = max_flows
        self._index = FlowTable(capacity=max(8, 2 * capacity))
        self._allocate(max(8, capacity))
        self._top = 0  # rows below this have been used at least once
        self._free: list[int] = []  # released rows, reused first
        self._live = 0

    def _allocate(self, capacity: int) -> None:
        self.records: NDArray[Any] = np.zeros(capacity, self.dtype)
        self._keys = np.zeros(capacity, np.uint64)
        self._seen = np.zeros(capacity, np.float64)
        self._ttl = np.zeros(capacity, np.float64)
        self._used = np.zeros(capacity, np.bool_)

    def _grow(self, capacity: int) -> None:
        old = (self.records, self._keys, self._seen, self._ttl, self._used)
        self._allocate(capacity)
        for new, prev in zip(
            (self.records, self._keys, self._seen, self._ttl, self._used), old, strict=True
        ):
            new[: prev.shape[0]] = prev

    def __len__(self) -> int:
        """Rows held (including idle ones not yet swept by `expire`)."""
        return self._live

    @property
    def capacity(self) -> int:
        return int(self._used.shape[0])

    def find(self, keys: ArrayLike, now: float | None = None) -> I64:
        """Row of each key, or -1 when absent (or idle past its timeout, given `now`)."""
        keys = as_keys(np.asarray(keys))
        values, found = self._index.lookup(keys)
        rows = np.where(found, values, -1)
        if now is not None and found.any():
            hit = np.flatnonzero(found)
            r = rows[hit]
            stale = now - self._seen[r] > self._ttl[r]
            rows[hit[stale]] = -1
        return rows

    def _take_rows(self, count: int) -> I64:
        reuse = min(count, len(self._free))
        rows = [self._free.pop() for _ in range(reuse)]
        fresh = count - reuse
        if self._top + fresh > self.capacity:
            size = self.capacity
            while self._top + fresh > size:
                size *= 2
            self._grow(size)
        out = np.empty(count, np.int64)
        out[:reuse] = rows
        out[reuse:] = np.arange(self._top, self._top + fresh)
        self._top += fresh
        return out

    def upsert(self, keys: ArrayLike, now: float) -> tuple[I64, NDArray[np.bool_]]:
        """(rows, created) per key: existing rows are refreshed, new keys get zeroed records.

        A key whose row was idle past its timeout starts over with a zeroed record (created).
        Keys refused because of `max_flows` get row -1.
        """
        keys = as_keys(np.asarray(keys))
        if keys.size == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.bool_)
        uniq, inverse = np.unique(keys, return_inverse=True)
        rows, created = self.upsert_distinct(uniq, now)
        return rows[inverse], created[inverse]

    def upsert_distinct(self, keys: U64, now: float) -> tuple[I64, NDArray[np.bool_]]:
        """`upsert` for keys known to be distinct (skips the grouping)."""
        values, found = self._index.lookup(keys)
        rows = np.where(found, values, -1)
        created = ~found
        hit = np.flatnonzero(found)
        if hit.size:
            r = rows[hit]
            stale = hit[now - self._seen[r] > self._ttl[r]]
            if stale.size:
                created[stale] = True
                self.records[rows[stale]] = np.zeros(1, self.dtype)
                self._ttl[rows[stale]] = self.timeout
        new = np.flatnonzero(~found)
        if new.size:
            if self.max_flows is not None and self._live + new.size > self.max_flows:
                room = max(0, self.max_flows - self._live)
                created[new[room:]] = False
                new = new[:room]
            fresh = self._take_rows(new.size)
            rows[new] = fresh
            self._index.insert(keys[new], fresh, now)
            self._keys[fresh] = keys[new]
            self.records[fresh] = np.zeros(1, self.dtype)
            self._ttl[fresh] = self.timeout
            self._used[fresh] = True
            self._live += new.size
        ok = rows[rows >= 0]
        self._seen[ok] = now
        return rows, created

    def touch(self, rows: ArrayLike, now: float) -> None:
        """Mark rows as seen at `now` (their idle time starts over)."""
        self._seen[np.asarray(rows, np.int64)] = now

    def set_timeout(self, rows: ArrayLike, seconds: ArrayLike) -> None:
        """Per-row idle timeouts (one value, or one per row)."""
        self._ttl[np.asarray(rows, np.int64)] = seconds

    def keys_of(self, rows: ArrayLike) -> U64:
        return self._keys[np.asarray(rows, np.int64)]

    def last_seen(self, rows: ArrayLike) -> NDArray[np.float64]:
        return self._seen[np.asarray(rows, np.int64)]

    def _release(self, rows: I64) -> None:
        self._index.delete(self._keys[rows])
        self._used[rows] = False
        self._free.extend(rows.tolist())
        self._live -= rows.size

    def remove(self, keys: ArrayLike) -> NDArray[np.bool_]:
        """Delete keys; True where a row was removed (first occurrence of each key)."""
        keys = as_keys(np.asarray(keys))
        values, found = self._index.lookup(keys)
        rows = np.unique(values[found])
        if rows.size:
            self._release(rows.astype(np.int64))
        first = np.zeros(keys.size, np.bool_)
        if found.any():
            _, at = np.unique(keys[found], return_index=True)
            first[np.flatnonzero(found)[at]] = True
        return first

    def expire(self, now: float) -> tuple[U64, NDArray[Any]]:
        """Remove rows idle past their timeout; returns their (keys, records)."""
        live = np.flatnonzero(self._used[: self._top])
        idle = live[now - self._seen[live] > self._ttl[live]]
        keys, records = self._keys[idle].copy(), self.records[idle].copy()
        if idle.size:
            self._release(idle.astype(np.int64))
        return keys, records

    def rows(self) -> I64:
        """Every held row (live or idle-not-yet-swept), in row order."""
        return np.flatnonzero(self._used[: self._top]).astype(np.int64)

    def clear(self) -> None:
        self._index.clear()
        self._allocate(self.capacity)
        self._top = 0
        self._free = []
        self._live = 0


# -- connection tracking: vocabulary ----------------------------------------------------------


class CtState(enum.IntEnum):
    """The conntrack state of a packet (netfilter's `ct state`)."""

    INVALID = 0
    NEW = 1
    ESTABLISHED = 2
    RELATED = 3
    UNTRACKED = 4


class TcpState(enum.IntEnum):
    """A TCP connection's state in the tracker (netfilter's names)."""

    NONE = 0
    SYN_SENT = 1
    SYN_RECV = 2
    ESTABLISHED = 3
    FIN_WAIT = 4
    CLOSE_WAIT = 5
    LAST_ACK = 6
    TIME_WAIT = 7
    CLOSE = 8
    SYN_SENT2 = 9


@dataclass(frozen=True)
class Timeouts:
    """Idle timeouts in seconds per protocol state (netfilter's defaults)."""

    tcp_syn_sent: float = 120.0
    tcp_syn_recv: float = 60.0
    tcp_established: float = 432000.0
    tcp_fin_wait: float = 120.0
    tcp_close_wait: float = 60.0
    tcp_last_ack: float = 30.0
    tcp_time_wait: float = 120.0
    tcp_close: float = 10.0
    udp_unreplied: float = 30.0
    udp_replied: float = 120.0
    icmp: float = 30.0
    generic: float = 600.0


@dataclass
class Tracked:
    """Per-packet conntrack verdicts for one batch."""

    state: NDArray[np.uint8]  # CtState
    reply: NDArray[np.bool_]  # travels in the connection's reply direction
    key: U64  # connection key (0 where none: non-IP, fragments, malformed, stray ICMP)
    created: NDArray[np.bool_]  # created (or re-opened) its connection, and it was recorded


Confirm = Callable[[NDArray[np.intp]], NDArray[np.bool_]]
"""`track`'s `confirm`: batch rows of packets about to create a connection -> which of them
will pass (and so may create it). It may be asked about a packet that then creates nothing
(see `ConnTrack.track`), so its answer must depend on the packet alone."""


# Families of the transition tables, and packet classes within each.
FAM_TCP, FAM_UDP, FAM_ICMP, FAM_OTHER = 0, 1, 2, 3
TCP_SYN, TCP_SYNACK, TCP_FIN, TCP_ACK, TCP_RST, TCP_BAD = 0, 1, 2, 3, 4, 5
ICMP_REQUEST, ICMP_REPLY = 0, 1
N_FAM, N_CLASS, N_PSTATE = 4, 6, 10
N_STATE = 2 * N_PSTATE  # a connection's state: protocol state * 2 + "reply seen" bit
V_INVALID, V_OK, V_CREATE = 0, 1, 2
# Connections that change state more often than this within one batch finish in a loop.
MAX_ROUNDS = 12

_FIN, _SYN, _RST, _ACK, _URG = 0x01, 0x02, 0x04, 0x10, 0x20
# Flag combinations netfilter accepts (ECE, CWR, PSH ignored); anything else is INVALID.
_VALID_FLAGS = {
    _SYN,
    _SYN | _URG,
    _SYN | _ACK,
    _RST,
    _RST | _ACK,
    _FIN | _ACK,
    _FIN | _ACK | _URG,
    _ACK,
    _ACK | _URG,
}


def _flag_classes() -> NDArray[np.uint8]:
    """TCP class of each value of flags & (FIN|SYN|RST|ACK|URG) (netfilter's index)."""
    table = np.full(64, TCP_BAD, np.uint8)
    for f in _VALID_FLAGS:
        if f & _RST:
            table[f] = TCP_RST
        elif f & _SYN:
            table[f] = TCP_SYNACK if f & _ACK else TCP_SYN
        elif f & _FIN:
            table[f] = TCP_FIN
        else:
            table[f] = TCP_ACK
    return table


_FLAG_CLASS = _flag_classes()

# netfilter's tcp_conntracks[dir][class][old state]; -1 invalid, -2 ignore (no change).
_IV, _IG = -1, -2
_NO, _SS, _SR, _ES, _FW, _CW, _LA, _TW, _CL, _S2 = range(10)
_TCP_TABLE = (
    (  # original direction
        (_SS, _SS, _IG, _IG, _IG, _IG, _IG, _SS, _SS, _S2),  # syn
        (_IV, _IV, _IG, _IG, _IG, _IG, _IG, _IG, _IG, _SR),  # syn-ack
        (_IV, _IV, _FW, _FW, _LA, _LA, _LA, _TW, _CL, _IV),  # fin
        (_IV, _IV, _ES, _ES, _CW, _CW, _TW, _TW, _CL, _IV),  # ack (no mid-stream pick-up)
        (_IV, _CL, _CL, _CL, _CL, _CL, _CL, _CL, _CL, _CL),  # rst
    ),
    (  # reply direction
        (_IV, _S2, _IV, _IV, _IV, _IV, _IV, _SS, _SS, _S2),  # syn
        (_IV, _SR, _IG, _IG, _IG, _IG, _IG, _IG, _IG, _SR),  # syn-ack
        (_IV, _IV, _FW, _FW, _LA, _LA, _LA, _TW, _CL, _IV),  # fin
        (_IV, _IG, _SR, _ES, _CW, _CW, _TW, _TW, _CL, _IG),  # ack
        (_IV, _CL, _CL, _CL, _CL, _CL, _CL, _CL, _CL, _CL),  # rst
    ),
)


def _transition_tables() -> tuple[NDArray[np.uint8], NDArray[np.uint8]]:
    """NEXT[family, dir, class, state] and VERDICT[...] for every family.

    Rules beyond the table: only an original-direction SYN creates a TCP connection; a SYN in
    TIME_WAIT or CLOSE from either side starts a new connection with that side as original;
    a RST before any reply removes the connection (netfilter kills it).
    """
    nxt = np.zeros((N_FAM, 2, N_CLASS, N_STATE), np.uint8)
    nxt[:] = np.arange(N_STATE, dtype=np.uint8)  # invalid packets change nothing
    verdict = np.full((N_FAM, 2, N_CLASS, N_STATE), V_INVALID, np.uint8)

    def set_(fam: int, d: int, cls: int, state: int, new: int, v: int) -> None:
        nxt[fam, d, cls, state] = new
        verdict[fam, d, cls, state] = v

    set_(FAM_TCP, 0, TCP_SYN, 0, 2 * _SS, V_CREATE)
    for d in (0, 1):
        for cls in range(5):
            for p in range(1, N_PSTATE):
                for seen in (0, 1):
                    state = 2 * p + seen
                    if cls == TCP_SYN and p in (_TW, _CL):
                        set_(FAM_TCP, d, cls, state, 2 * _SS, V_CREATE)
                        continue
                    target = _TCP_TABLE[d][cls][p]
                    if target == _IV:
                        continue
                    now_seen = seen | d
                    if target == _IG:
                        set_(FAM_TCP, d, cls, state, 2 * p + now_seen, V_OK)
                    elif cls == TCP_RST and not seen:
                        set_(FAM_TCP, d, cls, state, 0, V_OK)
                    else:
                        set_(FAM_TCP, d, cls, state, 2 * target + now_seen, V_OK)
    for fam in (FAM_UDP, FAM_OTHER):
        set_(fam, 0, 0, 0, 2, V_CREATE)
        for seen in (0, 1):
            set_(fam, 0, 0, 2 + seen, 2 + seen, V_OK)
            set_(fam, 1, 0, 2 + seen, 3, V_OK)
    set_(FAM_ICMP, 0, ICMP_REQUEST, 0, 2, V_CREATE)
    for seen in (0, 1):
        set_(FAM_ICMP, 0, ICMP_REQUEST, 2 + seen, 2 + seen, V_OK)
        set_(FAM_ICMP, 1, ICMP_REPLY, 2 + seen, 3, V_OK)
    return nxt, verdict


_NEXT, _VERDICT = _transition_tables()
# CAN_CREATE[family, class]: such a packet creates a connection in some state.
_CAN_CREATE = (_VERDICT == V_CREATE).any(axis=(1, 3))

# ICMPv6 types netfilter leaves untracked (MLD, router/neighbour discovery).
_ICMPV6_UNTRACKED = np.array([130, 131, 132, 133, 134, 135, 136, 143], np.uint8)
_ICMPV4_ERRORS = np.array([3, 4, 5, 11, 12], np.uint8)

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_V6_TAG = np.uint64(0xA5A5A5A55A5A5A5A)


def _endpoint(hi: U64, lo: U64, port: NDArray[Any]) -> U64:
    return mix64(mix64(hi ^ _V6_TAG) ^ lo) + port.astype(np.uint64) * _GOLDEN


def _conn_keys(
    v6: NDArray[np.bool_],
    src: tuple[U64, U64],
    dst: tuple[U64, U64],
    sport: NDArray[Any],
    dport: NDArray[Any],
    proto: NDArray[Any],
) -> tuple[U64, NDArray[np.uint8]]:
    """Symmetric connection keys and each packet's side (1: sent by the "higher" endpoint)."""
    a = _endpoint(src[0], src[1], sport)
    b = _endpoint(dst[0], dst[1], dport)
    low, high = np.minimum(a, b), np.maximum(a, b)
    tag = (proto.astype(np.uint64) << np.uint64(8)) | v6.astype(np.uint64)
    key = mix64(mix64(low) ^ high ^ (tag * _GOLDEN))
    return key, (a > b).astype(np.uint8)


def _addresses(h: Headers) -> tuple[NDArray[np.bool_], tuple[U64, U64], tuple[U64, U64]]:
    v6 = h.ip_version == 6
    zero = np.uint64(0)
    src = (
        np.where(v6, h.ipv6_src_hi, zero),
        np.where(v6, h.ipv6_src_lo, h.ipv4_src.astype(np.uint64)),
    )
    dst = (
        np.where(v6, h.ipv6_dst_hi, zero),
        np.where(v6, h.ipv6_dst_lo, h.ipv4_dst.astype(np.uint64)),
    )
    return v6, src, dst


def connection_keys(h: Headers) -> tuple[U64, NDArray[np.uint8]]:
    """Symmetric per-connection keys of parsed packets and the side each packet comes from.

    Both directions of a connection get the same key; `side` tells them apart. ICMP echo
    uses its identifier in place of ports (request and reply share it).
    """
    v6, src, dst = _addresses(h)
    echo = _is_echo(h)
    sport = np.where(echo, h.icmp_id, h.sport)
    dport = np.where(echo, h.icmp_id, h.dport)
    return _conn_keys(v6, src, dst, sport, dport, h.protocol)


def _is_icmp(h: Headers) -> NDArray[np.bool_]:
    v6 = h.ip_version == 6
    return (h.l4_offset >= 0) & np.where(v6, h.protocol == PROTO_ICMPV6, h.protocol == PROTO_ICMP)


def _is_echo(h: Headers) -> NDArray[np.bool_]:
    t = h.icmp_type
    v6 = h.ip_version == 6
    kinds = np.where(v6, (t == 128) | (t == 129), (t == 8) | (t == 0))
    return _is_icmp(h) & kinds


# -- connection tracking ----------------------------------------------------------------------


class ConnTrack:
    """Connection tracker: `track(batch, headers, now)` gives every packet its CtState.

    `max_connections` bounds the table; packets that would create a connection beyond it
    are INVALID (counted in `stats["table_full"]`). Entries idle past their state's timeout
    are ignored at once and removed by `expire(now)` (a `Track` operator schedules it).
    """

    def __init__(
        self,
        timeouts: Timeouts | None = None,
        *,
        max_connections: int | None = None,
        capacity: int = 4096,
    ) -> None:
        self.timeouts = timeouts or Timeouts()
        self.table = FlowState(
            {
                "state": np.uint8,  # protocol state * 2 + reply-seen bit
                "orig": np.uint8,  # side of the endpoint that opened the connection
                "family": np.uint8,
                "packets": np.uint64,
                "bytes": np.uint64,
            },
            timeout=self.timeouts.generic,
            capacity=capacity,
            max_flows=max_connections,
        )
        self._ttl = self._timeout_table()
        self.stats: dict[str, int] = {s.name.lower(): 0 for s in CtState}
        self.stats["table_full"] = 0
        self.stats["expired"] = 0

    def _timeout_table(self) -> NDArray[np.float64]:
        t = self.timeouts
        ttl = np.full((N_FAM, N_STATE), t.generic, np.float64)
        tcp = [
            t.tcp_close,
            t.tcp_syn_sent,
            t.tcp_syn_recv,
            t.tcp_established,
            t.tcp_fin_wait,
            t.tcp_close_wait,
            t.tcp_last_ack,
            t.tcp_time_wait,
            t.tcp_close,
            t.tcp_syn_sent,
        ]
        ttl[FAM_TCP] = np.repeat(tcp, 2)
        ttl[FAM_UDP, 2] = t.udp_unreplied
        ttl[FAM_UDP, 3] = t.udp_replied
        ttl[FAM_ICMP] = t.icmp
        return ttl

    def __len__(self) -> int:
        return len(self.table)

    def expire(self, now: float) -> int:
        """Remove connections idle past their timeout; returns how many."""
        keys, _ = self.table.expire(now)
        self.stats["expired"] += keys.size
        return int(keys.size)

    def tcp_state(self, key: int, now: float | None = None) -> TcpState | None:
        """The TCP state of one connection (None if not tracked)."""
        row = int(self.table.find(np.array([key], np.uint64), now)[0])
        if row < 0 or self.table.records["family"][row] != FAM_TCP:
            return None
        return TcpState(int(self.table.records["state"][row]) // 2)

    def track(
        self, batch: PacketBatch, h: Headers, now: float, *, confirm: Confirm | None = None
    ) -> Tracked:
        """Classify every packet of a parsed batch and update the connections.

        Without `confirm` every connection a packet creates is recorded. With it, only the
        ones `confirm` lets through (see the module docstring): `confirm(rows)` is asked a
        few times per batch (once per round that creates connections) about the packets
        that would create one, each packet at most once. A connection that changes state
        more than `MAX_ROUNDS` times in the batch is finished one packet at a time, and
        `confirm` is asked beforehand about all its packets that could create one, some of
        which may then create nothing.
        """
        n = len(h)
        if len(batch) != n:
            raise ValueError(f"{len(batch)} packets but {n} parsed headers")
        out = Tracked(
            np.zeros(n, np.uint8),  # CtState.INVALID
            np.zeros(n, np.bool_),
            np.zeros(n, np.uint64),
            np.zeros(n, np.bool_),
        )
        state = out.state
        valid = h.valid
        ip = valid & (h.ip_version != 0)
        state[valid & ~ip] = CtState.UNTRACKED
        state[ip & (h.l4_offset < 0)] = CtState.UNTRACKED  # non-first fragments
        icmp = ip & _is_icmp(h)
        v6 = h.ip_version == 6
        t = h.icmp_type
        echo = icmp & _is_echo(h)
        errors = icmp & np.where(v6, t < 128, np.isin(t, _ICMPV4_ERRORS))
        state[icmp & v6 & np.isin(t, _ICMPV6_UNTRACKED)] = CtState.UNTRACKED
        l4 = ip & (h.l4_offset >= 0) & ~icmp
        tracked = np.flatnonzero(l4 | echo)
        if tracked.size:
            self._track_connections(batch, h, tracked, now, out, confirm)
        err = np.flatnonzero(errors)
        if err.size:
            self._related(batch, h, err, now, out)
        _count_states(self.stats, state)
        return out

    def _track_connections(
        self,
        batch: PacketBatch,
        h: Headers,
        idx: NDArray[np.intp],
        now: float,
        out: Tracked,
        confirm: Confirm | None,
    ) -> None:
        """Packets `idx` (TCP, UDP, other L4, ICMP echo): their connections' state machines."""
        all_keys, all_sides = connection_keys(h)
        key, side = all_keys[idx], all_sides[idx]
        out.key[idx] = key
        proto = h.protocol[idx]
        echo = _is_echo(h)[idx]
        fam = np.where(
            echo,
            FAM_ICMP,
            np.where(proto == PROTO_TCP, FAM_TCP, np.where(proto == PROTO_UDP, FAM_UDP, FAM_OTHER)),
        ).astype(np.uint8)
        cls = np.where(
            fam == FAM_TCP,
            _FLAG_CLASS[h.tcp_flags[idx] & 0x37],  # PSH, ECE, CWR, NS do not matter
            np.where(echo & np.isin(h.icmp_type[idx], (0, 129)), ICMP_REPLY, ICMP_REQUEST),
        ).astype(np.uint8)
        # One stable sort groups the packets by connection, in arrival order within each.
        order = np.argsort(key, kind="stable")
        ordered = key[order]
        starts = np.concatenate(([True], ordered[1:] != ordered[:-1]))
        first = order[starts]
        uniq = ordered[starts]
        group = np.empty(key.size, np.intp)
        group[order] = np.cumsum(starts) - 1
        rows = self.table.find(uniq, now)
        present = rows >= 0
        cur_s = np.zeros(uniq.size, np.uint8)
        cur_o = np.zeros(uniq.size, np.uint8)
        cur_s[present] = self.table.records["state"][rows[present]]
        cur_o[present] = self.table.records["orig"][rows[present]]
        ask = None if confirm is None else _confirm_positions(confirm, idx)
        machine = _StateMachine(group, side, fam, cls, cur_s, cur_o, ask)
        machine.run(order)
        info, valid_pkt, created = machine.info, machine.accepted, machine.created
        touched = np.zeros(uniq.size, np.bool_)
        touched[group[valid_pkt]] = True
        # Write back: refresh/create live connections, remove killed ones.
        killed = np.flatnonzero(present & (cur_s == 0))
        if killed.size:
            self.table.remove(uniq[killed])
        keep = np.flatnonzero(touched & (cur_s != 0))
        keep = keep[np.argsort(first[keep], kind="stable")]  # a full table admits by arrival
        if keep.size:
            new_rows, _ = self.table.upsert_distinct(uniq[keep], now)
            refused = new_rows < 0
            if refused.any():
                lost = np.zeros(uniq.size, np.bool_)
                lost[keep[refused]] = True
                dead = lost[group]
                self.stats["table_full"] += int(np.count_nonzero(dead))
                info[dead] = CtState.INVALID
                created[dead] = False
                keep, new_rows = keep[~refused], new_rows[~refused]
            gfam = fam[first[keep]]
            rec = self.table.records
            rec["state"][new_rows] = cur_s[keep]
            rec["orig"][new_rows] = cur_o[keep]
            rec["family"][new_rows] = gfam
            # Count the packets of the connection as it is now: those since its last
            # (re-)creation in this batch, if any, which also starts its counts over.
            born = np.full(uniq.size, -1, np.intp)
            np.maximum.at(born, group[created], np.flatnonzero(created))
            reborn = born[keep] >= 0
            rec["packets"][new_rows[reborn]] = 0
            rec["bytes"][new_rows[reborn]] = 0
            counted = valid_pkt & (info != CtState.INVALID)
            counted &= np.arange(idx.size) >= born[group]
            pk = np.bincount(group[counted], minlength=uniq.size)
            by = np.bincount(
                group[counted], weights=batch.lengths[idx[counted]], minlength=uniq.size
            )
            rec["packets"][new_rows] += pk[keep].astype(np.uint64)
            rec["bytes"][new_rows] += by[keep].astype(np.uint64)
            self.table.set_timeout(new_rows, self._ttl[gfam, cur_s[keep]])
        out.state[idx] = info
        out.reply[idx] = machine.reply
        out.created[idx] = created

    def _related(
        self, batch: PacketBatch, h: Headers, err: NDArray[np.intp], now: float, out: Tracked
    ) -> None:
        """ICMP errors: parse the embedded packet and look up its connection."""
        sub = batch.select(err, copy=False)
        inner = parse(sub, at=h.payload_offset[err].astype(np.int64))
        # The embedded packet is cut short, so its parse usually stops at the IP length
        # check; addresses and protocol are filled in by then, the L4 ports we read here.
        early = np.isin(
            inner.error,
            [
                ParseError.NO_HEADER,
                ParseError.TRUNCATED_IP,
                ParseError.BAD_IP_VERSION,
                ParseError.BAD_IHL,
            ],
        )
        usable = (inner.ip_version != 0) & ~early
        v6 = inner.ip_version == 6
        hlen = np.where(
            inner.ip_header_length > 0, inner.ip_header_length, np.where(v6, 40, 0)
        ).astype(np.int64)
        l4 = inner.l3_offset.astype(np.int64) + hlen
        iproto = inner.protocol
        length = sub.lengths.astype(np.int64)
        ported = np.isin(iproto, (PROTO_TCP, PROTO_UDP, PROTO_SCTP))
        icmp_proto = np.where(v6, iproto == PROTO_ICMPV6, iproto == PROTO_ICMP)
        usable &= (hlen > 0) & np.where(ported, l4 + 4 <= length, True)
        usable &= np.where(icmp_proto, l4 + 8 <= length, True)
        sport = np.zeros(err.size, np.uint16)
        dport = np.zeros(err.size, np.uint16)
        r = np.flatnonzero(usable & ported)
        if r.size:
            sport[r] = sub.read_uint(l4[r], 2, r)
            dport[r] = sub.read_uint(l4[r] + 2, 2, r)
        r = np.flatnonzero(usable & icmp_proto)
        if r.size:
            itype = sub.read_uint(l4[r], 1, r)
            is_echo = np.where(v6[r], (itype == 128) | (itype == 129), (itype == 8) | (itype == 0))
            usable[r[~is_echo]] = (
                False  # an error about an error (or other ICMP) relates to nothing
            )
            r = r[is_echo]
            ident = sub.read_uint(l4[r] + 4, 2, r)
            sport[r] = ident
            dport[r] = ident
        ok = np.flatnonzero(usable)
        if ok.size == 0:
            return
        _, src, dst = _addresses(inner)
        key, side = _conn_keys(
            v6[ok],
            (src[0][ok], src[1][ok]),
            (dst[0][ok], dst[1][ok]),
            sport[ok],
            dport[ok],
            iproto[ok],
        )
        rows = self.table.find(key, now)
        found = rows >= 0
        hit = err[ok[found]]
        out.state[hit] = CtState.RELATED
        out.key[hit] = key[found]
        # The error answers the embedded packet: it travels opposite to it.
        orig = self.table.records["orig"][rows[found]]
        out.reply[hit] = side[found] == orig


def _confirm_positions(confirm: Confirm, idx: NDArray[np.intp]) -> Confirm:
    """`confirm` for positions into `idx` (the state machine's packets), checked."""

    def ask(positions: NDArray[np.intp]) -> NDArray[np.bool_]:
        answer = np.asarray(confirm(idx[positions]))
        if answer.shape != positions.shape or answer.dtype != np.bool_:
            raise ValueError(
                f"confirm must answer {positions.size} packets with booleans, "
                f"got an array of {answer.dtype} shaped {answer.shape}"
            )
        return answer

    return ask


def _count_states(into: dict[str, int], states: NDArray[np.uint8]) -> None:
    """Add how many packets got each CtState to `into`, under the state's lower-case name."""
    counts = np.bincount(states, minlength=len(CtState))
    for s in CtState:
        if counts[s]:
            into[s.name.lower()] = into.get(s.name.lower(), 0) + int(counts[s])


class _StateMachine:
    """Each connection's packets of one batch run through the state machine, in arrival order.

    Per packet: `group` (its connection), `side`, `fam`, `cls`. Per connection: `state` and
    `orig` (original side) on entry, updated in place. `confirm`, if given, is asked which
    creating packets (by position) may create their connection; a refused one leaves its
    connection with no state. `run` fills, per packet, `info` (CtState), `reply` (reply
    direction), `accepted` (the state machine took it and it left its mark: not a refused
    creation) and `created` (it created or re-opened its connection).
    """

    def __init__(
        self,
        group: NDArray[np.intp],
        side: NDArray[np.uint8],
        fam: NDArray[np.uint8],
        cls: NDArray[np.uint8],
        state: NDArray[np.uint8],
        orig: NDArray[np.uint8],
        confirm: Confirm | None = None,
    ) -> None:
        self.group, self.side, self.fam, self.cls = group, side, fam, cls
        self.state, self.orig = state, orig
        self.confirm = confirm
        m = group.shape[0]
        self.info = np.zeros(m, np.uint8)
        self.reply = np.zeros(m, np.bool_)
        self.accepted = np.zeros(m, np.bool_)
        self.created = np.zeros(m, np.bool_)

    def run(self, order: NDArray[np.intp]) -> None:
        """Resolve the packets `order` (grouped by connection, in arrival order within each)."""
        group, side, cur_s, cur_o = self.group, self.side, self.state, self.orig
        pending = order
        rounds = 0
        while pending.size:
            if rounds == MAX_ROUNDS:
                self._run_one_by_one(pending)
                break
            g = group[pending]
            s = cur_s[g]
            d = np.where(s == 0, 0, side[pending] ^ cur_o[g]).astype(np.uint8)
            f, c = self.fam[pending], self.cls[pending]
            nxt = _NEXT[f, d, c, s]
            ver = _VERDICT[f, d, c, s]
            loud = np.flatnonzero(nxt != s)
            if loud.size:
                lg = g[loud]
                firsts = loud[np.concatenate(([True], lg[1:] != lg[:-1]))]
                cutoff = np.full(cur_s.shape[0], pending.size, np.intp)
                cutoff[g[firsts]] = firsts
                done = np.arange(pending.size) <= cutoff[g]
            else:
                done = np.ones(pending.size, np.bool_)
            p = pending[done]
            vd, dd, sd = ver[done], d[done], s[done]
            self.info[p] = np.where(
                vd == V_INVALID,
                CtState.INVALID,
                np.where(
                    vd == V_CREATE,
                    CtState.NEW,
                    np.where((dd == 1) | ((sd & 1) == 1), CtState.ESTABLISHED, CtState.NEW),
                ),
            )
            self.reply[p] = (dd == 1) & (vd != V_CREATE)  # a creating packet is the new original
            self.accepted[p] = vd != V_INVALID
            if loud.size:
                self._change(g[firsts], pending[firsts], nxt[firsts], ver[firsts] == V_CREATE)
            pending = pending[~done]
            rounds += 1

    def _change(
        self,
        groups: NDArray[np.intp],
        packets: NDArray[np.intp],
        nxt: NDArray[np.uint8],
        creating: NDArray[np.bool_],
    ) -> None:
        """Apply the state changes `nxt` of `packets` (one per connection `groups`); those
        `creating` ask `confirm` first, and a refused one leaves its connection with none."""
        nxt = nxt.copy()
        if self.confirm is not None and creating.any():
            asked = np.flatnonzero(creating)
            refused = asked[~self.confirm(packets[asked])]
            nxt[refused] = 0  # nothing recorded; a re-opened connection is gone all the same
            creating = creating.copy()
            creating[refused] = False
            self.accepted[packets[refused]] = False
        self.state[groups] = nxt
        self.orig[groups[creating]] = self.side[packets[creating]]
        self.created[packets[creating]] = True

    def _run_one_by_one(self, pending: NDArray[np.intp]) -> None:
        """The same state machine, one packet at a time (for pathological connections)."""
        group, side, cur_s, cur_o = self.group, self.side, self.state, self.orig
        info, rep, accepted, created = self.info, self.reply, self.accepted, self.created
        nxt_t, ver_t = _NEXT.tolist(), _VERDICT.tolist()
        # Ask ahead, in one call, about every packet that could create a connection.
        allowed = np.ones(group.shape[0], np.bool_)
        if self.confirm is not None:
            could = pending[_CAN_CREATE[self.fam[pending], self.cls[pending]]]
            if could.size:
                allowed[could] = self.confirm(could)
        for p in pending.tolist():
            g = int(group[p])
            s = int(cur_s[g])
            d = 0 if s == 0 else int(side[p]) ^ int(cur_o[g])
            f, c = int(self.fam[p]), int(self.cls[p])
            nxt, ver = nxt_t[f][d][c][s], ver_t[f][d][c][s]
            accepted[p] = ver != V_INVALID
            if ver == V_INVALID:
                info[p] = CtState.INVALID
            elif ver == V_CREATE:
                info[p] = CtState.NEW
                if allowed[p]:
                    cur_o[g] = side[p]
                    created[p] = True
                else:
                    nxt = 0
                    accepted[p] = False
            else:
                info[p] = CtState.ESTABLISHED if d == 1 or s & 1 else CtState.NEW
            rep[p] = d == 1 and ver != V_CREATE
            cur_s[g] = nxt


# -- the operator -------------------------------------------------------------------------------


def schedule_expiry(
    op: Operator, timers: Timers, every: float | None, expire: Callable[[float], int]
) -> None:
    """Run `expire(now)` every `every` seconds on `timers` (not at all when `every` is None
    or 0), as the timer "<op name>.expire"; what it returns (entries removed) adds up in
    `op.counters.extra["expired"]`. For operators whose state forgets idle entries."""
    if not every:
        return

    def sweep(now: float) -> None:
        extra = op.counters.extra
        extra["expired"] = extra.get("expired", 0) + expire(now)

    timers.every(every, sweep, name=f"{op.name}.expire")


class Track(Operator):
    """Connection tracking as a graph operator.

    Passes every packet on, annotated with meta columns `ct_state` (CtState, uint8),
    `ct_reply` (bool) and `ct_key` (uint64); a following filter decides, e.g.
    `lambda b, h: b.meta["ct_state"] != CtState.INVALID`. Schedules `conntrack.expire` every
    `sweep_every` seconds on the graph's timers.
    """

    kind = "conntrack"
    needs = EdgeType.PARSED

    def __init__(
        self, conntrack: ConnTrack, name: str | None = None, *, sweep_every: float | None = 10.0
    ) -> None:
        super().__init__(name)
        self.conntrack = conntrack
        self.sweep_every = sweep_every

    def attach(self, timers: Timers) -> None:
        schedule_expiry(self, timers, self.sweep_every, self._expire)

    def _expire(self, now: float) -> int:
        expired = self.conntrack.expire(now)
        self.counters.extra["connections"] = len(self.conntrack)
        return expired

    def process(self, batch: PacketBatch, headers: Headers | None, now: float) -> list[Output]:
        assert headers is not None
        t = self.conntrack.track(batch, headers, now)
        _count_states(self.counters.extra, t.state)
        self.counters.extra["connections"] = len(self.conntrack)
        out = with_meta(batch, ct_state=t.state, ct_reply=t.reply, ct_key=t.key)
        return [(out, headers)]
