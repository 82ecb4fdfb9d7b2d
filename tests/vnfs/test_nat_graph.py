"""The NAT graph: packets rewritten with incremental checksums, round trips, drops by reason.

The strongest check is byte equality: a translated packet must be exactly the packet one
would build from scratch with the translated addresses and ports (so every checksum is
right), and a reply translated back must be exactly the reply the inside host expects.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nfaas.nf import build as B
from nfaas.nf.batch import PacketBatch
from nfaas.nf.graph import Graph
from nfaas.nf.headers import parse
from nfaas.nf.pcap import write_pcap
from nfaas.vnfs.nat import ICMP, TCP, UDP, NatConfig, NatTable, PortForward, ipv4, nat_graph, nat_of
from tshark import requires_tshark, tshark_fields

PUBLIC = "198.18.200.1"
INSIDE = ["198.18.0.1", "198.18.0.2", "198.18.0.3"]
REMOTE = "198.19.0.9"
WEB = "198.18.0.80"


def make(**config: Any) -> tuple[Graph, NatTable]:
    config.setdefault("public_addrs", [ipv4(PUBLIC)])
    nat = NatTable(NatConfig(**config))
    return nat_graph(nat, errors="raise"), nat


def frame(kind: str, src: str, dst: str, sport: int, dport: int, payload: bytes = b"p") -> bytes:
    if kind == "tcp":
        return B.tcp_frame(src, dst, sport, dport, payload, flags=B.TCP_SYN, seq=7)
    if kind == "udp":
        return B.udp_frame(src, dst, sport, dport, payload)
    return B.icmp_echo_frame(src, dst, ident=sport, seq=3, payload=payload, reply=kind == "pong")


def send(g: Graph, port: str, frames: list[bytes], now: float) -> dict[str, list[bytes]]:
    out = g.run_batch({port: PacketBatch.from_bytes(frames)}, now)
    return {name: batch.to_list() for name, batch in out.items()}


def checksums_ok(frames: list[bytes]) -> bool:
    batch = PacketBatch.from_bytes(frames)
    h = parse(batch)
    return bool(
        h.valid.all() and B.ipv4_checksums_ok(batch, h).all() and B.l4_checksums_ok(batch, h).all()
    )


def public_port(frame_: bytes, kind: str) -> int:
    h = parse(PacketBatch.from_bytes([frame_]))
    return int(h.icmp_id[0] if kind in ("ping", "pong") else h.sport[0])


@pytest.mark.parametrize("kind", ["tcp", "udp", "ping"])
def test_round_trip_restores_addresses_and_ports(kind: str) -> None:
    g, nat = make()
    sent = [frame(kind, host, REMOTE, 40000 + i, 53) for i, host in enumerate(INSIDE)]
    out = send(g, "inside", sent, 1.0)
    assert out["inside"] == []
    translated = out["outside"]
    assert len(translated) == 3 and checksums_ok(translated)
    ports = [public_port(p, kind) for p in translated]
    assert len(set(ports)) == 3
    for i, packet in enumerate(translated):
        assert packet == frame(kind, PUBLIC, REMOTE, ports[i], 53)  # byte for byte
    reply = "pong" if kind == "ping" else kind
    replies = [frame(reply, REMOTE, PUBLIC, 53, port, b"answer") for port in ports]
    if kind == "ping":
        replies = [frame("pong", REMOTE, PUBLIC, port, port, b"answer") for port in ports]
    back = send(g, "outside", replies, 1.5)["inside"]
    expected = [
        frame(reply, REMOTE, host, 53, 40000 + i, b"answer") for i, host in enumerate(INSIDE)
    ]
    if kind == "ping":
        expected = [
            frame("pong", REMOTE, host, 40000 + i, 40000 + i, b"answer")
            for i, host in enumerate(INSIDE)
        ]
    assert back == expected
    assert len(nat) == 3 and nat.stats.translated_in == 3


def test_port_forward_in_and_its_answers_out() -> None:
    forward = PortForward(TCP, ipv4(PUBLIC), 8080, ipv4(WEB), 80)
    g, _ = make(forwards=[forward])
    request = frame("tcp", REMOTE, PUBLIC, 50000, 8080)
    assert send(g, "outside", [request], 1.0)["inside"] == [frame("tcp", REMOTE, WEB, 50000, 80)]
    answer = frame("tcp", WEB, REMOTE, 80, 50000)
    assert send(g, "inside", [answer], 1.1)["outside"] == [
        frame("tcp", PUBLIC, REMOTE, 8080, 50000)
    ]


def test_exhaustion_and_missing_mappings_are_counted_drops() -> None:
    g, nat = make(port_ranges={TCP: (2000, 2001), UDP: (2000, 2001), ICMP: (2000, 2001)})
    flows = [frame("udp", INSIDE[0], REMOTE, 1000 + i, 53) for i in range(3)]
    assert len(send(g, "inside", flows, 1.0)["outside"]) == 2
    assert g.operator("snat").counters.drops == {"exhausted": 1}
    stray = frame("udp", REMOTE, PUBLIC, 53, 9999)  # no session owns public port 9999
    sessions = nat.sessions()
    port = int(sessions["pub_port"][0])
    spoofed = frame("udp", "198.19.0.66", PUBLIC, 53, port)  # not the session's remote
    assert send(g, "outside", [stray, spoofed], 1.1)["inside"] == []
    assert g.operator("dnat").counters.drops == {"no_session": 1, "filtered": 1}


def test_what_the_table_cannot_take_is_dropped_with_its_reason() -> None:
    g, _ = make()
    arp = B.ethernet(bytes(28), ethertype=0x0806)
    six = frame("udp", "2001:2::1", "2001:2:0:1::9", 1, 2)
    gre = B.ethernet(B.ipv4(INSIDE[0], REMOTE, 47, bytes(8)))
    fragment = B.ethernet(B.ipv4(INSIDE[0], REMOTE, 17, bytes(16), ident=1, frag_offset=2))
    unreachable = B.ethernet(B.ipv4(INSIDE[0], REMOTE, 1, bytes([3, 3, 0xFC, 0xFC]) + bytes(4)))
    assert send(g, "inside", [arp, six, gre, fragment, unreachable], 1.0)["outside"] == []
    assert g.operator("snat").counters.drops == {
        "non_ip": 1,
        "not_ipv4": 1,
        "fragment": 1,
        "icmp_not_echo": 1,
        "unsupported": 1,
    }


def test_a_udp_packet_without_checksum_keeps_none() -> None:
    g, _ = make()
    segment = B.udp(4000, 53, b"q", src=INSIDE[0], dst=REMOTE, checksum=False)
    packet = B.ethernet(B.ipv4(INSIDE[0], REMOTE, 17, segment))
    (out,) = send(g, "inside", [packet], 1.0)["outside"]
    assert out[14 + 20 + 6 : 14 + 20 + 8] == b"\x00\x00"
    assert checksums_ok([out])


def test_the_control_side_sees_the_table_through_nat_of() -> None:
    g, nat = make()
    table, lock = nat_of(g)
    assert table is nat
    with lock:  # what a control API holds while it reads
        assert len(table) == 0


@requires_tshark
def test_tshark_finds_every_translated_checksum_good(tmp_path: Path) -> None:
    g, _ = make()
    sent = [frame(k, INSIDE[i % 3], REMOTE, 30000 + i, 443, bytes(i)) for i, k in
            enumerate(["tcp", "udp", "ping"] * 10)]  # fmt: skip
    out = g.run_batch({"inside": PacketBatch.from_bytes(sent)}, 1.0)["outside"]
    path = tmp_path / "nat.pcap"
    write_pcap(path, [out])
    l4 = ["tcp.checksum.status", "udp.checksum.status", "icmp.checksum.status"]
    rows = tshark_fields(path, ["ip.src", "ip.checksum.status", *l4])
    assert len(rows) == 30
    for row in rows:
        assert row["ip.src"] == [PUBLIC] and row["ip.checksum.status"] == ["1"]  # 1: good
        assert [v for field in l4 for v in row[field]] == ["1"]


@settings(max_examples=60, deadline=None)
@given(
    flows=st.lists(
        st.tuples(
            st.sampled_from(["tcp", "udp", "ping"]),
            st.sampled_from(INSIDE),
            st.integers(1, 65535),
            st.sampled_from([53, 80, 443]),
            st.binary(max_size=9),
        ),
        min_size=1,
        max_size=20,
        unique_by=lambda f: (f[0], f[1], f[2], 0 if f[0] == "ping" else f[3]),
    )
)
def test_any_round_trip_is_exact(flows: list[tuple[str, str, int, int, bytes]]) -> None:
    g, _ = make()
    sent = [frame(k, host, REMOTE, sport, sport if k == "ping" else dport, data)
            for k, host, sport, dport, data in flows]  # fmt: skip
    translated = send(g, "inside", sent, 1.0)["outside"]
    assert len(translated) == len(sent) and checksums_ok(translated)
    replies = []
    for (kind, _, _, dport, data), out in zip(flows, translated, strict=True):
        port = public_port(out, kind)
        if kind == "ping":
            replies.append(frame("pong", REMOTE, PUBLIC, port, port, data))
        else:
            replies.append(frame(kind, REMOTE, PUBLIC, dport, port, data))
    back = send(g, "outside", replies, 2.0)["inside"]
    expected = [
        frame("pong", REMOTE, host, sport, sport, data)
        if kind == "ping"
        else frame(kind, REMOTE, host, dport, sport, data)
        for kind, host, sport, dport, data in flows
    ]
    assert back == expected
