"""Connection tracking and the flow-state table.

Scenarios check netfilter's semantics packet by packet, including confirmation (a connection
is recorded only if its first packet passes); a hypothesis test runs random packet
sequences, cut into random batches, with and without refused packets, against a plain
per-packet reference model.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.typing import NDArray

from nfaas.nf import build as B
from nfaas.nf import state as state_module
from nfaas.nf.batch import PacketBatch
from nfaas.nf.checksum import internet_checksum
from nfaas.nf.headers import parse
from nfaas.nf.state import Confirm, ConnTrack, CtState, FlowState, TcpState, Timeouts, Tracked

A, Z, R = "198.18.0.1", "198.18.0.2", "198.18.0.254"
A6, Z6 = "2001:db8::1", "2001:db8::2"
SYN, ACK, FIN, RST, PSH, URG = B.TCP_SYN, B.TCP_ACK, B.TCP_FIN, B.TCP_RST, B.TCP_PSH, B.TCP_URG

INV, NEW, EST, REL, UNT = (
    CtState.INVALID,
    CtState.NEW,
    CtState.ESTABLISHED,
    CtState.RELATED,
    CtState.UNTRACKED,
)


@dataclass(frozen=True)
class P:
    """A test packet, described; `frame()` builds it."""

    kind: str  # "tcp", "udp", "echo", "echo_reply", "error"
    src: str
    dst: str
    sport: int = 0
    dport: int = 0
    flags: int = 0
    inner: P | None = None  # the packet an ICMP error is about

    def ip_packet(self) -> bytes:
        return B._ip_packet(self.src, self.dst, *self.l4())

    def l4(self) -> tuple[int, bytes]:
        v6 = ":" in self.src
        if self.kind == "tcp":
            return 6, B.tcp(self.sport, self.dport, src=self.src, dst=self.dst, flags=self.flags)
        if self.kind == "udp":
            return 17, B.udp(self.sport, self.dport, b"d", src=self.src, dst=self.dst)
        if self.kind in ("echo", "echo_reply"):
            reply = self.kind == "echo_reply"
            if v6:
                msg = B.icmpv6_echo(self.sport, 1, src=self.src, dst=self.dst, reply=reply)
                return 58, msg
            return 1, B.icmp_echo(self.sport, 1, reply=reply)
        assert self.kind == "error" and self.inner is not None
        quoted = self.inner.ip_packet()[: (48 if v6 else 28)]
        kind = 1 if v6 else 3  # destination unreachable
        body = struct.pack("!BBHI", kind, 3 if not v6 else 4, 0, 0) + quoted
        return (58 if v6 else 1), body[:2] + struct.pack("!H", internet_checksum(body)) + body[4:]

    def frame(self) -> bytes:
        proto, seg = self.l4()
        return B._frame(B._ip_packet(self.src, self.dst, proto, seg), 6 if ":" in self.src else 4,
                        (), {})  # fmt: skip


def tcp(src: str, dst: str, sport: int, dport: int, flags: int) -> P:
    return P("tcp", src, dst, sport, dport, flags)


def track(
    ct: ConnTrack, packets: list[P], now: float = 0.0, confirm: Confirm | None = None
) -> Tracked:
    batch = PacketBatch.from_bytes([p.frame() for p in packets])
    return ct.track(batch, parse(batch), now, confirm=confirm)


def asking(packets: list[P], passes: Callable[[P], bool]) -> tuple[Confirm, list[int]]:
    """A `confirm` that lets through the packets `passes` approves, and the list it fills
    with the rows it was asked about."""
    asked: list[int] = []

    def confirm(rows: NDArray[np.intp]) -> NDArray[np.bool_]:
        asked.extend(rows.tolist())
        return np.array([passes(packets[r]) for r in rows.tolist()], np.bool_)

    return confirm, asked


def states(t: Tracked) -> list[CtState]:
    return [CtState(int(s)) for s in t.state]


# -- scenarios ---------------------------------------------------------------------------------


HANDSHAKE_AND_CLOSE = [
    (tcp(A, Z, 1000, 80, SYN), NEW, False, TcpState.SYN_SENT),
    (tcp(Z, A, 80, 1000, SYN | ACK), EST, True, TcpState.SYN_RECV),
    (tcp(A, Z, 1000, 80, ACK), EST, False, TcpState.ESTABLISHED),
    (tcp(A, Z, 1000, 80, ACK | PSH), EST, False, TcpState.ESTABLISHED),
    (tcp(Z, A, 80, 1000, ACK), EST, True, TcpState.ESTABLISHED),
    (tcp(A, Z, 1000, 80, FIN | ACK), EST, False, TcpState.FIN_WAIT),
    (tcp(Z, A, 80, 1000, ACK), EST, True, TcpState.CLOSE_WAIT),
    (tcp(Z, A, 80, 1000, FIN | ACK), EST, True, TcpState.LAST_ACK),
    (tcp(A, Z, 1000, 80, ACK), EST, False, TcpState.TIME_WAIT),
]


def test_tcp_lifecycle_packet_by_packet() -> None:
    ct = ConnTrack()
    for i, (pkt, want, reply, tcp_state) in enumerate(HANDSHAKE_AND_CLOSE):
        t = track(ct, [pkt], now=float(i))
        assert states(t) == [want], f"packet {i}"
        assert t.reply.tolist() == [reply]
        assert ct.tcp_state(int(t.key[0])) is tcp_state


def test_tcp_lifecycle_in_one_batch_gives_the_same_verdicts() -> None:
    ct = ConnTrack()
    t = track(ct, [p for p, *_ in HANDSHAKE_AND_CLOSE])
    assert states(t) == [w for _, w, _, _ in HANDSHAKE_AND_CLOSE]
    assert t.reply.tolist() == [r for _, _, r, _ in HANDSHAKE_AND_CLOSE]
    assert len(set(t.key.tolist())) == 1
    assert ct.tcp_state(int(t.key[0])) is TcpState.TIME_WAIT


def test_tcp_that_does_not_start_with_a_syn_is_invalid() -> None:
    ct = ConnTrack()
    t = track(ct, [tcp(A, Z, 1, 80, ACK), tcp(A, Z, 1, 80, ACK | PSH), tcp(Z, A, 80, 2, SYN | ACK)])
    assert states(t) == [INV, INV, INV]
    assert len(ct) == 0


def test_invalid_flag_combinations() -> None:
    ct = ConnTrack()
    track(ct, [tcp(A, Z, 1, 80, SYN)])
    t = track(ct, [tcp(A, Z, 1, 80, SYN | FIN), tcp(A, Z, 1, 80, FIN), tcp(A, Z, 1, 80, 0)])
    assert states(t) == [INV, INV, INV]
    t = track(ct, [tcp(A, Z, 1, 80, SYN | URG)])  # a valid (if odd) retransmitted SYN
    assert states(t) == [NEW]


def test_rst_before_any_reply_removes_the_connection() -> None:
    ct = ConnTrack()
    t = track(ct, [tcp(A, Z, 1, 81, SYN), tcp(Z, A, 81, 1, RST | ACK)])
    assert states(t) == [NEW, EST] and t.reply.tolist() == [False, True]
    assert len(ct) == 0
    assert states(track(ct, [tcp(A, Z, 1, 81, ACK)])) == [INV]


def test_rst_after_establishment_closes() -> None:
    ct = ConnTrack()
    t = track(ct, [tcp(A, Z, 1, 80, SYN), tcp(Z, A, 80, 1, SYN | ACK), tcp(A, Z, 1, 80, RST)])
    assert states(t) == [NEW, EST, EST]
    assert ct.tcp_state(int(t.key[0])) is TcpState.CLOSE


def test_a_syn_after_time_wait_reopens_from_its_sender() -> None:
    ct = ConnTrack()
    track(ct, [p for p, *_ in HANDSHAKE_AND_CLOSE])
    t = track(ct, [tcp(Z, A, 80, 1000, SYN), tcp(A, Z, 1000, 80, SYN | ACK)])
    assert states(t) == [NEW, EST]
    assert t.reply.tolist() == [False, True]  # Z is now the original side
    assert ct.tcp_state(int(t.key[0])) is TcpState.SYN_RECV


def test_ipv6_tcp_handshake() -> None:
    ct = ConnTrack()
    t = track(
        ct, [tcp(A6, Z6, 5, 443, SYN), tcp(Z6, A6, 443, 5, SYN | ACK), tcp(A6, Z6, 5, 443, ACK)]
    )
    assert states(t) == [NEW, EST, EST]


def test_udp_is_new_until_a_reply_then_established() -> None:
    ct = ConnTrack()
    out, back = P("udp", A, Z, 5000, 53), P("udp", Z, A, 53, 5000)
    assert states(track(ct, [out, out], 0.0)) == [NEW, NEW]
    t = track(ct, [back, out], 1.0)
    assert states(t) == [EST, EST] and t.reply.tolist() == [True, False]


def test_udp_timeouts_depend_on_whether_a_reply_was_seen() -> None:
    ct = ConnTrack(Timeouts(udp_unreplied=30.0, udp_replied=120.0))
    one, two = P("udp", A, Z, 1, 2), P("udp", A, Z, 3, 4)
    track(ct, [one, two, P("udp", Z, A, 4, 3)], 0.0)
    assert states(track(ct, [one, two], 30.0)) == [NEW, EST]  # 30 s idle: still alive
    assert states(track(ct, [one, two], 60.5)) == [NEW, EST]  # one started over, two lives
    assert ct.expire(200.0) == 2 and len(ct) == 0
    assert ct.stats["expired"] == 2


def test_tcp_established_timeout_is_configurable() -> None:
    ct = ConnTrack(Timeouts(tcp_established=50.0))
    track(ct, [tcp(A, Z, 1, 80, SYN), tcp(Z, A, 80, 1, SYN | ACK), tcp(A, Z, 1, 80, ACK)], 0.0)
    assert states(track(ct, [tcp(A, Z, 1, 80, ACK)], 50.0)) == [EST]
    assert states(track(ct, [tcp(A, Z, 1, 80, ACK)], 100.5)) == [INV]  # gone: mid-stream ACK


def test_icmp_echo_request_and_reply() -> None:
    ct = ConnTrack()
    for src, dst in ((A, Z), (A6, Z6)):
        req, rep = P("echo", src, dst, 77), P("echo_reply", dst, src, 77)
        t = track(ct, [req, rep, req])
        assert states(t) == [NEW, EST, EST]
        assert t.reply.tolist() == [False, True, False]
        assert states(track(ct, [P("echo_reply", dst, src, 78)])) == [INV]  # nobody asked
        assert states(track(ct, [P("echo_reply", src, dst, 77)])) == [INV]  # wrong way


def test_icmp_errors_about_tracked_connections_are_related() -> None:
    ct = ConnTrack()
    udp_out = P("udp", A, Z, 4000, 9)
    tcp_syn = tcp(A, Z, 4001, 80, SYN)
    v6_out = P("udp", A6, Z6, 4002, 9)
    echo = P("echo", A, Z, 99)
    track(ct, [udp_out, tcp_syn, v6_out, echo])
    errors = [
        P("error", R, A, inner=udp_out),
        P("error", R, A, inner=tcp_syn),
        P("error", "2001:db8::fe", A6, inner=v6_out),
        P("error", R, A, inner=echo),
        P("error", R, A, inner=P("udp", A, Z, 4999, 9)),  # about nothing we track
    ]
    t = track(ct, errors)
    assert states(t) == [REL, REL, REL, REL, INV]
    assert t.reply.tolist() == [True, True, True, True, False]  # they answer the sender
    # An error about a packet of the reply direction travels in the original direction.
    t = track(ct, [P("error", R, Z, inner=P("udp", Z, A, 9, 4000))])
    assert states(t) == [REL] and t.reply.tolist() == [False]
    assert len(ct) == 4  # errors create nothing


def test_untracked_and_malformed_packets() -> None:
    ct = ConnTrack()
    arp = B.ethernet(b"\x00" * 28, ethertype=0x0806)
    ns = B.ethernet(B.ipv6(A6, Z6, 58, bytes([135, 0, 0, 0]) + bytes(20)), ethertype=B.ETH_IPV6)
    frag = B.ethernet(B.ipv4(A, Z, 17, b"tail of a datagram", frag_offset=3))
    truncated = P("udp", A, Z, 1, 2).frame()[:30]
    timestamp = B.ethernet(B.ipv4(A, Z, 1, bytes([13, 0, 0, 0]) + bytes(16)))
    batch = PacketBatch.from_bytes([arp, ns, frag, truncated, timestamp])
    h = parse(batch)
    assert not h.valid[3]
    t = ct.track(batch, h, 0.0)
    assert states(t) == [UNT, UNT, UNT, INV, INV]
    assert t.key.tolist() == [0, 0, 0, 0, 0] and len(ct) == 0


def test_table_full_makes_new_connections_invalid() -> None:
    ct = ConnTrack(max_connections=2)
    t = track(ct, [P("udp", A, Z, p, 9) for p in (1, 2, 3, 1)])
    assert states(t) == [NEW, NEW, INV, NEW]
    assert t.created.tolist() == [True, True, False, False]
    assert ct.stats["table_full"] == 1 and len(ct) == 2


def test_counts_and_bytes_per_connection() -> None:
    ct = ConnTrack()
    pkts = [P("udp", A, Z, 1, 2), P("udp", Z, A, 2, 1), P("udp", A, Z, 1, 2)]
    batch = PacketBatch.from_bytes([p.frame() for p in pkts])
    t = ct.track(batch, parse(batch), 0.0)
    row = int(ct.table.find(t.key[:1])[0])
    assert int(ct.table.records["packets"][row]) == 3
    assert int(ct.table.records["bytes"][row]) == batch.total_bytes


def test_state_storms_beyond_the_round_limit_match_packet_by_packet() -> None:
    storm = [
        tcp(A, Z, 7, 80, SYN if i % 2 == 0 else RST) for i in range(3 * state_module.MAX_ROUNDS)
    ]
    storm += [tcp(A, Z, 7, 80, SYN), tcp(Z, A, 80, 7, SYN | ACK), tcp(A, Z, 7, 80, ACK)]
    batched = track(ConnTrack(), storm)
    single = ConnTrack()
    one_by_one = [states(track(single, [p]))[0] for p in storm]
    assert states(batched) == one_by_one
    assert one_by_one[-3:] == [NEW, EST, EST]


def test_created_flags_the_packets_that_opened_a_connection() -> None:
    ct = ConnTrack()
    t = track(ct, [tcp(A, Z, 1, 80, SYN), tcp(A, Z, 1, 80, SYN), tcp(Z, A, 80, 1, SYN | ACK),
                   P("udp", A, Z, 5, 53), P("echo", A, Z, 7), P("echo_reply", Z, A, 7),
                   tcp(A, Z, 2, 80, ACK)])  # fmt: skip
    assert t.created.tolist() == [True, False, False, True, True, False, False]
    track(ct, [tcp(A, Z, 1, 80, ACK), tcp(A, Z, 1, 80, FIN | ACK), tcp(Z, A, 80, 1, FIN | ACK),
               tcp(A, Z, 1, 80, ACK)])  # fmt: skip
    reopen = track(ct, [tcp(Z, A, 80, 1, SYN)])  # TIME_WAIT: the SYN starts over
    assert reopen.created.tolist() == [True]


def test_a_reopened_connection_counts_only_its_own_packets() -> None:
    ct = ConnTrack()
    again = [tcp(Z, A, 80, 1000, SYN), tcp(A, Z, 1000, 80, SYN | ACK)]
    packets = [p for p, *_ in HANDSHAKE_AND_CLOSE] + again
    batch = PacketBatch.from_bytes([p.frame() for p in packets])
    t = ct.track(batch, parse(batch), 0.0)
    row = int(ct.table.find(t.key[:1])[0])
    assert ct.tcp_state(int(t.key[0])) is TcpState.SYN_RECV
    assert int(ct.table.records["packets"][row]) == 2
    assert int(ct.table.records["bytes"][row]) == sum(len(q.frame()) for q in again)


# -- confirmation: a connection is recorded only if its first packet passes -----------------


def test_a_refused_syn_records_nothing_and_its_answer_is_invalid() -> None:
    ct = ConnTrack()
    syn, synack = tcp(A, Z, 1, 22, SYN), tcp(Z, A, 22, 1, SYN | ACK)
    packets = [syn, synack, syn]
    confirm, asked = asking(packets, lambda p: False)
    t = track(ct, packets, confirm=confirm)
    assert states(t) == [NEW, INV, NEW]  # the refused SYNs stay NEW: the caller drops them
    assert t.created.tolist() == [False, False, False]
    assert sorted(asked) == [0, 2]  # each SYN is asked about, the SYN-ACK creates nothing
    assert len(ct) == 0


def test_after_a_refused_packet_the_other_side_opens_a_connection_of_its_own() -> None:
    ct = ConnTrack()
    probe, answer = P("udp", A, Z, 53, 6000), P("udp", Z, A, 6000, 53)
    packets = [probe, answer, probe]
    confirm, asked = asking(packets, lambda p: p.src == Z)
    t = track(ct, packets, confirm=confirm)
    assert states(t) == [NEW, NEW, EST]  # Z opened the connection: A's packet answers it
    assert t.reply.tolist() == [False, False, True]
    assert t.created.tolist() == [False, True, False]
    assert sorted(asked) == [0, 1] and len(ct) == 1


def test_a_reset_to_a_refused_syn_is_invalid_and_a_syn_back_opens_from_its_sender() -> None:
    ct = ConnTrack()
    packets = [tcp(A, Z, 1000, 53, SYN), tcp(Z, A, 53, 1000, RST), tcp(Z, A, 53, 1000, SYN)]
    confirm, _ = asking(packets, lambda p: p.src == Z)
    t = track(ct, packets, confirm=confirm)
    assert states(t) == [NEW, INV, NEW]
    assert ct.tcp_state(int(t.key[0])) is TcpState.SYN_SENT
    assert states(track(ct, [tcp(A, Z, 1000, 53, SYN | ACK)])) == [EST]  # Z is the original


def test_a_refused_syn_after_a_reset_leaves_nothing() -> None:
    ct = ConnTrack()
    packets = [tcp(A, Z, 1000, 53, SYN), tcp(Z, A, 53, 1000, RST), tcp(Z, A, 53, 1000, SYN)]
    confirm, _ = asking(packets, lambda p: p.src == A)
    t = track(ct, packets, confirm=confirm)
    assert states(t) == [NEW, EST, NEW] and t.created.tolist() == [True, False, False]
    assert len(ct) == 0


def test_a_refused_syn_in_time_wait_ends_the_old_connection() -> None:
    ct = ConnTrack()
    track(ct, [p for p, *_ in HANDSHAKE_AND_CLOSE])
    packets = [tcp(Z, A, 80, 1000, SYN), tcp(A, Z, 1000, 80, ACK)]
    confirm, asked = asking(packets, lambda p: False)
    t = track(ct, packets, confirm=confirm)
    assert states(t) == [NEW, INV] and asked == [0]  # netfilter kills it when the SYN comes
    assert len(ct) == 0


def test_the_per_packet_fallback_confirms_the_same_way() -> None:
    storm = [tcp(A, Z, 7, 80, SYN if i % 2 == 0 else RST) for i in range(8)]
    storm += [tcp(Z, A, 80, 7, SYN), tcp(A, Z, 7, 80, SYN | ACK), tcp(A, Z, 7, 80, ACK)]
    results = []
    for max_rounds in (state_module.MAX_ROUNDS, 0):
        saved, state_module.MAX_ROUNDS = state_module.MAX_ROUNDS, max_rounds
        try:
            ct = ConnTrack()
            confirm, asked = asking(storm, lambda p: p.src == Z)
            t = track(ct, storm, confirm=confirm)
        finally:
            state_module.MAX_ROUNDS = saved
        results.append((states(t), t.created.tolist(), ct.tcp_state(int(t.key[0]))))
        assert set(asked) >= {0, 2, 4, 6, 8}  # every SYN (the fallback asks ahead)
    assert results[0] == results[1]
    assert results[0][0] == [NEW, INV] * 4 + [NEW, EST, EST]
    assert results[0][2] is TcpState.SYN_RECV


def test_confirm_must_answer_each_packet_with_a_boolean() -> None:
    ct = ConnTrack()
    batch = PacketBatch.from_bytes([P("udp", A, Z, 1, 2).frame()])
    with pytest.raises(ValueError, match="confirm must answer 1 packets with booleans"):
        ct.track(batch, parse(batch), 0.0, confirm=lambda rows: np.ones(2, np.bool_))
    with pytest.raises(ValueError, match="got an array of int64"):
        ct.track(batch, parse(batch), 0.0, confirm=lambda rows: np.ones(1, np.int64))


# -- random sequences against a per-packet reference model -----------------------------------

TABLE = {  # netfilter's tcp_conntracks, rows by packet class, columns by state
    "orig": {
        "syn": "SS SS IG IG IG IG IG SS SS S2",
        "synack": "IV IV IG IG IG IG IG IG IG SR",
        "fin": "IV IV FW FW LA LA LA TW CL IV",
        "ack": "IV IV ES ES CW CW TW TW CL IV",
        "rst": "IV CL CL CL CL CL CL CL CL CL",
    },
    "reply": {
        "syn": "IV S2 IV IV IV IV IV SS SS S2",
        "synack": "IV SR IG IG IG IG IG IG IG SR",
        "fin": "IV IV FW FW LA LA LA TW CL IV",
        "ack": "IV IG SR ES CW CW TW TW CL IG",
        "rst": "IV CL CL CL CL CL CL CL CL CL",
    },
}
COLUMNS = ["NO", "SS", "SR", "ES", "FW", "CW", "LA", "TW", "CL", "S2"]
TCP_TIMEOUT = {"SS": "tcp_syn_sent", "S2": "tcp_syn_sent", "SR": "tcp_syn_recv",
               "ES": "tcp_established", "FW": "tcp_fin_wait", "CW": "tcp_close_wait",
               "LA": "tcp_last_ack", "TW": "tcp_time_wait", "CL": "tcp_close"}  # fmt: skip
TCP_NAMES = {"SS": "SYN_SENT", "SR": "SYN_RECV", "ES": "ESTABLISHED", "FW": "FIN_WAIT",
             "CW": "CLOSE_WAIT", "LA": "LAST_ACK", "TW": "TIME_WAIT", "CL": "CLOSE",
             "S2": "SYN_SENT2"}  # fmt: skip
VALID_FLAGS = {
    SYN,
    SYN | URG,
    SYN | ACK,
    RST,
    RST | ACK,
    FIN | ACK,
    FIN | ACK | URG,
    ACK,
    ACK | URG,
}


def tcp_class(flags: int) -> str | None:
    f = flags & (FIN | SYN | RST | ACK | URG)
    if f not in VALID_FLAGS:
        return None
    if f & RST:
        return "rst"
    if f & SYN:
        return "synack" if f & ACK else "syn"
    return "fin" if f & FIN else "ack"


@dataclass
class Conn:
    proto: str
    orig: tuple[str, int]
    state: str
    seen_reply: bool
    last: float


class Reference:
    """One packet at a time, a dict of connections keyed by protocol and endpoint pair."""

    def __init__(self, timeouts: Timeouts) -> None:
        self.t = timeouts
        self.conns: dict[tuple[str, frozenset[tuple[str, int]]], Conn] = {}

    @staticmethod
    def key(p: P) -> tuple[str, frozenset[tuple[str, int]]]:
        proto = "icmp" if p.kind.startswith("echo") else p.kind
        dport = p.sport if proto == "icmp" else p.dport
        return proto, frozenset({(p.src, p.sport), (p.dst, dport)})

    def timeout(self, c: Conn) -> float:
        if c.proto == "tcp":
            return float(getattr(self.t, TCP_TIMEOUT[c.state]))
        if c.proto == "udp":
            return self.t.udp_replied if c.seen_reply else self.t.udp_unreplied
        return self.t.icmp

    def live(self, key: tuple[str, frozenset[tuple[str, int]]], now: float) -> Conn | None:
        c = self.conns.get(key)
        if c is not None and now - c.last > self.timeout(c):
            del self.conns[key]
            return None
        return c

    def step(self, p: P, now: float, passes: bool = True) -> tuple[CtState, bool, bool]:
        """(state, reply, created) of `p`; a connection it would open is kept if `passes`
        (netfilter confirms a new connection only when its first packet leaves)."""
        key = self.key(p)
        c = self.live(key, now)
        if c is None:
            if (p.kind == "tcp" and tcp_class(p.flags) == "syn") or p.kind in ("udp", "echo"):
                init = "SS" if p.kind == "tcp" else "open"
                if passes:
                    self.conns[key] = Conn(key[0], (p.src, p.sport), init, False, now)
                return NEW, False, passes
            return INV, False, False
        reply = (p.src, p.sport) != c.orig
        info = EST if reply or c.seen_reply else NEW
        if p.kind == "tcp":
            cls = tcp_class(p.flags)
            if cls is None:
                return INV, reply, False
            if cls == "syn" and c.state in ("TW", "CL"):
                del self.conns[key]  # the old one ends even if the new one is refused
                if passes:
                    self.conns[key] = Conn("tcp", (p.src, p.sport), "SS", False, now)
                return NEW, False, passes
            target = TABLE["reply" if reply else "orig"][cls].split()[COLUMNS.index(c.state)]
            if target == "IV":
                return INV, reply, False
            if cls == "rst" and not c.seen_reply:
                del self.conns[key]
                return info, reply, False
            if target != "IG":
                c.state = target
        elif p.kind in ("echo", "echo_reply") and (p.kind == "echo_reply") != reply:
            return INV, reply, False
        c.seen_reply |= reply
        c.last = now
        return info, reply, False

    def related(self, p: P, now: float) -> tuple[CtState, bool, bool]:
        assert p.inner is not None
        c = self.live(self.key(p.inner), now)
        if c is None:
            return INV, False, False
        return REL, (p.inner.src, p.inner.sport) == c.orig, False


HOSTS = [(A, Z), (A6, Z6)]
FLAGS = [SYN, SYN | ACK, ACK, ACK | PSH, FIN | ACK, RST, RST | ACK, FIN, SYN | FIN, 0]
# Conversations: a TCP script per connection (handshake, data, close by either side or a
# reset), randomly perturbed (flags replaced, direction flipped, packets duplicated or lost),
# interleaved with UDP, ICMP echo and ICMP errors, cut into batches with random time gaps.
ENDPOINTS = st.tuples(st.sampled_from(HOSTS), st.sampled_from([1000, 80]), st.sampled_from([80, 9]))
ORIG, OTHER = False, True  # sent by the opening side / by the other side


def tcp_script(first_closer: bool, reset: bool) -> list[tuple[bool, int]]:
    script = [(ORIG, SYN), (OTHER, SYN | ACK), (ORIG, ACK), (ORIG, ACK | PSH), (OTHER, ACK | PSH)]
    if reset:
        return [*script, (first_closer, RST | ACK), (not first_closer, ACK)]
    other = not first_closer
    return [*script, (first_closer, FIN | ACK), (other, ACK), (other, FIN | ACK),
            (first_closer, ACK), (ORIG, SYN)]  # fmt: skip


@st.composite
def packet_batches(draw: st.DrawFn) -> list[tuple[float, list[P]]]:
    conns = draw(st.lists(ENDPOINTS, min_size=1, max_size=3))
    streams: list[list[P]] = []
    for (a, z), sport, dport in conns:
        stream: list[P] = []
        script = tcp_script(draw(st.booleans()), draw(st.booleans()))
        for reply, flags in script:
            if draw(st.integers(0, 9)) == 0:
                flags = draw(st.sampled_from(FLAGS))
            if draw(st.integers(0, 9)) == 0:
                reply = not reply
            src, dst, sp, dp = (z, a, dport, sport) if reply else (a, z, sport, dport)
            copies = draw(st.sampled_from([1] * 8 + [0, 2]))
            stream += [P("tcp", src, dst, sp, dp, flags)] * copies
        for _ in range(draw(st.integers(0, 4))):
            kind = draw(st.sampled_from(["udp", "echo", "echo_reply", "error"]))
            src, dst, sp, dp = draw(st.sampled_from([(a, z, sport, dport), (z, a, dport, sport)]))
            if kind == "error":
                about = P(draw(st.sampled_from(["tcp", "udp", "echo"])), dst, src, dp, sp, SYN)
                router = "198.18.9.9" if ":" not in src else "2001:db8::99"
                pkt = P("error", router, dst, inner=about)
            else:
                pkt = P(kind, src, dst, sp, dp)
            stream.insert(draw(st.integers(0, len(stream))), pkt)
        streams.append(stream)
    # Interleave the conversations, each keeping its own order.
    stream = []
    while any(streams):
        stream.append(draw(st.sampled_from([s for s in streams if s])).pop(0))
    batches = []
    while stream:
        size = draw(st.integers(1, 12))
        gap = draw(st.sampled_from([0.0, 0.0, 0.25, 0.75, 1.25, 2.25, 7.0]))
        batches.append((gap, stream[:size]))
        stream = stream[size:]
    return batches


@settings(max_examples=100, deadline=None)
@given(
    batches=packet_batches(),
    max_rounds=st.sampled_from([state_module.MAX_ROUNDS, 1, 0]),
    refused_ports=st.none() | st.frozensets(st.sampled_from([80, 9, 1000]), min_size=1),
)
def test_matches_the_reference_on_random_sequences(
    batches: list[tuple[float, list[P]]], max_rounds: int, refused_ports: frozenset[int] | None
) -> None:
    """With `refused_ports`, `confirm` refuses the new connections of packets to those
    ports (a filter dropping them): the tracker must record exactly what the reference,
    one packet at a time, keeps."""
    timeouts = Timeouts(2.0, 1.5, 6.0, 2.5, 3.0, 1.0, 2.0, 0.5, 1.0, 4.0, 2.0, 5.0)
    ct, ref = ConnTrack(timeouts), Reference(timeouts)
    keys: dict[tuple[str, frozenset[tuple[str, int]]], int] = {}
    saved = state_module.MAX_ROUNDS
    state_module.MAX_ROUNDS = max_rounds  # 0 and 1 force the per-packet fallback
    try:
        now = 0.0
        for gap, pkts in batches:
            now += gap
            if not pkts:
                continue
            confirm = None
            if refused_ports is not None:
                confirm, _ = asking(pkts, lambda p: p.dport not in refused_ports)
            t = track(ct, pkts, now, confirm)
            want = [
                ref.step(p, now, refused_ports is None or p.dport not in refused_ports)
                for p in pkts
                if p.kind != "error"
            ]
            want_errors = [ref.related(p, now) for p in pkts if p.kind == "error"]
            got = [
                (CtState(int(s)), bool(r), bool(c))
                for s, r, c in zip(t.state, t.reply, t.created, strict=True)
            ]
            assert [g for g, p in zip(got, pkts, strict=True) if p.kind != "error"] == want
            assert [g for g, p in zip(got, pkts, strict=True) if p.kind == "error"] == want_errors
            for p, k in zip(pkts, t.key.tolist(), strict=True):
                if p.kind != "error":
                    assert keys.setdefault(ref.key(p), k) == k  # one key per connection
            for rkey in list(ref.conns):
                conn = ref.live(rkey, now)
                if conn is not None and conn.proto == "tcp":
                    assert ct.tcp_state(keys[rkey], now) is TcpState[TCP_NAMES[conn.state]]
            assert len(set(keys.values())) == len(keys)
            assert len(ct) >= len(ref.conns)  # the tracker may hold idle entries until swept
            ct.expire(now)
            for key in list(ref.conns):
                ref.live(key, now)
            assert len(ct) == len(ref.conns)
    finally:
        state_module.MAX_ROUNDS = saved


# -- the flow-state table ------------------------------------------------------------------------


def test_flow_state_upsert_find_expire() -> None:
    st_ = FlowState({"count": np.int64}, timeout=10.0, capacity=8)
    rows, created = st_.upsert(np.array([5, 6, 5], np.uint64), now=0.0)
    assert created.tolist() == [True, True, True] and rows[0] == rows[2] != rows[1]
    np.add.at(st_.records["count"], rows, 1)
    assert st_.records["count"][rows].tolist() == [2, 1, 2]
    assert st_.find([5, 6, 7], now=5.0).tolist() == [rows[0], rows[1], -1]
    st_.upsert(np.array([5], np.uint64), now=8.0)  # refreshes 5 only
    assert st_.find([5, 6], now=15.0).tolist() == [rows[0], -1]  # 6 idle for 15 s
    rows2, created2 = st_.upsert(np.array([6], np.uint64), now=15.0)
    assert created2.tolist() == [True] and st_.records["count"][rows2[0]] == 0  # started over
    keys, recs = st_.expire(now=30.0)
    assert sorted(keys.tolist()) == [5, 6] and len(st_) == 0 and recs.shape == (2,)


def test_flow_state_grows_reuses_rows_and_bounds_flows() -> None:
    st_ = FlowState({"v": np.uint32}, timeout=100.0, capacity=8, max_flows=1000)
    keys = np.arange(1, 701, dtype=np.uint64)
    rows, _ = st_.upsert(keys, now=0.0)
    st_.records["v"][rows] = keys.astype(np.uint32)
    assert st_.capacity >= 700 and len(st_) == 700
    assert (st_.records["v"][st_.find(keys)] == keys).all()  # survived growth
    assert st_.remove(np.array([1, 2, 2, 9999], np.uint64)).tolist() == [True, True, False, False]
    more, created = st_.upsert(np.arange(1000, 1400, dtype=np.uint64), now=1.0)
    assert int(created.sum()) == 302 and int((more < 0).sum()) == 98  # 698 + 302 = 1000
    st_.set_timeout(st_.find([3]), 0.5)
    assert st_.find([3], now=1.0).tolist() == [-1]
    assert st_.find([4], now=1.0).tolist() != [-1]
