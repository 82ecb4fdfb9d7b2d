"""Header parsing and building: round trips, malformed input, rewriting, tshark agreement."""

from __future__ import annotations

import ipaddress
import random
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nfaas.nf import build as B
from nfaas.nf.batch import PacketBatch
from nfaas.nf.checksum import (
    finish,
    incremental_update,
    internet_checksum,
    segment_sums,
    word_sum,
)
from nfaas.nf.headers import (
    GTPU_PORT,
    Headers,
    ParseError,
    flow_hash,
    parse,
    parse_inner,
)
from nfaas.nf.pcap import write_pcap
from tshark import requires_tshark, tshark_fields

FUZZ = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])

u8 = st.integers(0, 0xFF)
u16 = st.integers(0, 0xFFFF)
u32 = st.integers(0, 0xFFFFFFFF)
# Ports that would make the UDP payload GTP-U are drawn on purpose elsewhere.
ports = st.integers(0, 0xFFFF).filter(lambda p: p != GTPU_PORT)
v4addr = st.builds(ipaddress.IPv4Address, u32)
v6addr = st.builds(ipaddress.IPv6Address, st.integers(0, (1 << 128) - 1))
payloads = st.binary(max_size=64)


def _v6_halves(addr: ipaddress.IPv6Address) -> tuple[int, int]:
    value = int(addr)
    return value >> 64, value & ((1 << 64) - 1)


def _ip_expect(src: Any, dst: Any) -> dict[str, Any]:
    if src.version == 4:
        return {"ip_version": 4, "ipv4_src": int(src), "ipv4_dst": int(dst)}
    (shi, slo), (dhi, dlo) = _v6_halves(src), _v6_halves(dst)
    return {
        "ip_version": 6,
        "ipv6_src_hi": shi,
        "ipv6_src_lo": slo,
        "ipv6_dst_hi": dhi,
        "ipv6_dst_lo": dlo,
    }


@st.composite
def l4_packets(draw: st.DrawFn, version: int | None = None) -> tuple[bytes, dict[str, Any]]:
    """An IP packet (no Ethernet) with random fields, and the fields a parse should find."""
    version = version or draw(st.sampled_from([4, 6]))
    addr = v4addr if version == 4 else v6addr
    src, dst = draw(addr), draw(addr)
    kind = draw(st.sampled_from(["udp", "tcp", "icmp"]))
    payload = draw(payloads)
    ttl, tos = draw(u8), draw(u8)
    exp: dict[str, Any] = {**_ip_expect(src, dst), "ttl": ttl, "ip_tos": tos}
    if kind == "udp":
        sport, dport = draw(ports), draw(ports)
        seg = B.udp(sport, dport, payload, src=src, dst=dst)
        proto = 17
        exp |= {"sport": sport, "dport": dport, "payload_length": len(payload)}
    elif kind == "tcp":
        sport, dport = draw(ports), draw(ports)
        seq, ack, flags = draw(u32), draw(u32), draw(st.integers(0, 0x1FF))
        options = draw(st.binary(max_size=40).map(lambda o: o[: len(o) // 4 * 4]))
        seg = B.tcp(
            sport, dport, payload, src=src, dst=dst, seq=seq, ack=ack, flags=flags, options=options
        )
        proto = 6
        exp |= {
            "sport": sport,
            "dport": dport,
            "tcp_seq": seq,
            "tcp_ack": ack,
            "tcp_flags": flags,
            "payload_length": len(payload),
        }
    else:
        ident, seq = draw(u16), draw(u16)
        reply = draw(st.booleans())
        if version == 4:
            seg, proto = B.icmp_echo(ident, seq, payload, reply=reply), 1
            exp["icmp_type"] = 0 if reply else 8
        else:
            seg = B.icmpv6_echo(ident, seq, payload, src=src, dst=dst, reply=reply)
            proto = 58
            exp["icmp_type"] = 129 if reply else 128
        exp |= {"icmp_id": ident, "icmp_seq": seq, "payload_length": len(payload)}
    exp["protocol"] = proto
    if version == 4:
        ident = draw(u16)
        dfrag = draw(st.booleans())
        options = draw(st.binary(max_size=40).map(lambda o: o[: len(o) // 4 * 4]))
        pkt = B.ipv4(
            src,
            dst,
            proto,
            seg,
            ttl=ttl,
            tos=tos,
            ident=ident,
            dont_fragment=dfrag,
            options=options,
        )
        exp |= {"ip_id": ident, "dont_fragment": dfrag, "ip_header_length": 20 + len(options)}
    else:
        flow = draw(st.integers(0, 0xFFFFF))
        exts = draw(
            st.lists(
                st.sampled_from([0, 43, 60]).flatmap(
                    lambda k: st.binary(max_size=20).map(lambda d: B.ipv6_options(k, d))
                ),
                max_size=3,
            )
        )
        pkt = B.ipv6(
            src, dst, proto, seg, hop_limit=ttl, traffic_class=tos, flow_label=flow, extensions=exts
        )
        exp |= {"ipv6_flow_label": flow, "ipv6_ext_count": len(exts)}
        exp["ip_header_length"] = 40 + sum(len(body) + 2 for _, body in exts)
    exp["ip_total_length"] = len(pkt)
    return pkt, exp


@st.composite
def frames(draw: st.DrawFn) -> tuple[bytes, dict[str, Any], dict[str, Any] | None]:
    """An Ethernet frame (maybe VLAN-tagged, maybe GTP-U), its fields, and its inner fields."""
    vlans = draw(st.lists(st.integers(0, 4095), max_size=2))
    dmac, smac = draw(st.integers(0, (1 << 48) - 1)), draw(st.integers(0, (1 << 48) - 1))
    inner_exp = None
    if draw(st.booleans()):
        pkt, exp = draw(l4_packets())
    else:
        inner, inner_exp = draw(l4_packets())
        teid = draw(u32)
        seq = draw(st.none() | u16)
        npdu = draw(st.none() | u8)
        exts = draw(
            st.lists(
                st.one_of(
                    st.builds(B.pdu_session_container, st.integers(0, 63), st.booleans()),
                    st.tuples(st.sampled_from([0x40, 0xC0, 0x20]), st.binary(max_size=9)),
                ),
                max_size=3,
            )
        )
        outer = draw(st.sampled_from([4, 6]))
        src, dst = draw(v4addr if outer == 4 else v6addr), draw(v4addr if outer == 4 else v6addr)
        sport = draw(st.sampled_from([GTPU_PORT, 40000]))
        g = B.gtpu(teid, inner, seq=seq, npdu=npdu, extensions=exts)
        seg = B.udp(sport, GTPU_PORT, g, src=src, dst=dst)
        pkt = B.ipv4(src, dst, 17, seg) if outer == 4 else B.ipv6(src, dst, 17, seg)
        exp = _ip_expect(src, dst) | {"sport": sport, "dport": GTPU_PORT, "is_gtpu": True}
        exp |= {"gtp_teid": teid, "gtp_msg_type": 0xFF, "gtp_ext_count": len(exts)}
        exp["gtp_seq"] = seq or 0
        exp["gtp_npdu"] = npdu or 0
        exp["gtp_e"], exp["gtp_s"], exp["gtp_pn"] = bool(exts), seq is not None, npdu is not None
        exp["gtp_version"] = 1
        pdus = [content for kind, content in exts if kind == 0x85]
        exp["has_pdu_session"] = bool(pdus)
        if pdus:
            exp["gtp_qfi"] = pdus[-1][1] & 0x3F  # the last container wins
            exp["gtp_pdu_type"] = pdus[-1][0] >> 4
        exp["gtp_payload_length"] = len(inner)
    ethertype = 0x0800 if exp["ip_version"] == 4 else 0x86DD
    frame = B.ethernet(pkt, ethertype=ethertype, dst=dmac, src=smac, vlans=vlans)
    l3 = 14 + 4 * len(vlans)
    exp |= {"eth_dst": dmac, "eth_src": smac, "ethertype": ethertype, "l3_offset": l3}
    exp |= {"vlan_count": len(vlans), "vlan_id": vlans[0] if vlans else 0}
    exp["inner_vlan_id"] = vlans[1] if len(vlans) > 1 else 0
    if inner_exp is not None:
        inner_exp["l3_offset"] = len(frame) - exp["gtp_payload_length"]
    return frame, exp, inner_exp


def _check_row(h: Headers, i: int, exp: dict[str, Any]) -> None:
    for name, want in exp.items():
        got = getattr(h, name)[i]
        assert got == want, f"packet {i}: {name} = {got}, expected {want}"


@FUZZ
@given(st.lists(frames(), min_size=1, max_size=12))
def test_build_then_parse_gives_back_the_fields(cases: list[Any]) -> None:
    batch = PacketBatch.from_bytes([c[0] for c in cases])
    h = parse(batch)
    assert h.valid.all(), h.error_counts()
    assert (h.error_offset == -1).all()
    inner = parse_inner(batch, h)
    for i, (_, exp, inner_exp) in enumerate(cases):
        _check_row(h, i, exp)
        if inner_exp is None:
            assert inner.error[i] == ParseError.NO_HEADER
        else:
            assert h.gtp_inner_offset[i] == inner_exp["l3_offset"]
            assert inner.valid[i]
            _check_row(inner, i, inner_exp)
    # Builders produce correct checksums, and the verifiers agree.
    assert B.ipv4_checksums_ok(batch, h).all()
    assert B.l4_checksums_ok(batch, h).all()
    assert B.l4_checksums_ok(batch, inner).all()


def test_ipv6_extension_headers_and_fragments() -> None:
    src, dst = "2001:2::1", "2001:2::2"
    udp = B.udp(40000, 40001, b"data", src=src, dst=dst)
    chain = [
        B.ipv6_options(0, b"\x05\x02\x00\x00"),  # router alert
        B.ipv6_options(60),
        (43, bytes([0, 0, 0, 0, 0, 0])),  # routing type 0, segments left 0
        (51, bytes(10)),  # AH with 4 bytes of ICV
        B.ipv6_fragment(0, True, 0xDEADBEEF),
    ]
    first = B.ethernet(B.ipv6(src, dst, 17, udp, extensions=chain), ethertype=0x86DD)
    later = B.ethernet(
        B.ipv6(src, dst, 17, b"more-data", extensions=[B.ipv6_fragment(3, False, 7)]),
        ethertype=0x86DD,
    )
    h = parse(PacketBatch.from_bytes([first, later]))
    assert h.valid.tolist() == [True, True]
    assert h.protocol.tolist() == [17, 17]
    assert h.ipv6_ext_count.tolist() == [5, 1]
    assert h.ip_header_length.tolist() == [40 + 8 + 8 + 8 + 12 + 8, 48]
    assert h.more_fragments.tolist() == [True, False]
    assert h.frag_offset.tolist() == [0, 3]
    assert h.ip_id.tolist() == [0xDEADBEEF, 7]
    # The first fragment has the UDP header; later ones only fragment data.
    assert h.sport[0] == 40000 and h.l4_offset[0] == 14 + 84
    assert h.l4_offset[1] == -1 and h.sport[1] == 0
    assert h.payload_offset[1] == 14 + 48 and h.payload_length[1] == len(b"more-data")
    assert h.is_fragment.tolist() == [True, True]


def test_ipv4_fragments() -> None:
    src, dst = "198.18.0.1", "198.18.0.2"
    udp = B.udp(40000, GTPU_PORT, b"x" * 16, src=src, dst=dst)
    first = B.ethernet(B.ipv4(src, dst, 17, udp[:16], more_fragments=True, ident=9))
    later = B.ethernet(B.ipv4(src, dst, 17, udp[16:], frag_offset=2, ident=9))
    h = parse(PacketBatch.from_bytes([first, later]))
    assert h.valid.all()
    assert h.dport.tolist() == [GTPU_PORT, 0]
    assert h.is_gtpu.tolist() == [False, False]  # GTP-U is not parsed from fragments
    assert h.payload_length.tolist() == [8, 8]
    assert h.l4_offset.tolist() == [34, -1]


def test_non_ip_frames_are_valid_without_l3_fields() -> None:
    arp = B.ethernet(bytes(28), ethertype=0x0806, vlans=[7], pad=True)
    h = parse(PacketBatch.from_bytes([arp]))
    assert h.valid[0] and h.ethertype[0] == 0x0806 and h.vlan_id[0] == 7
    assert h.ip_version[0] == 0 and h.l4_offset[0] == -1
    assert h.payload_offset[0] == 18 and h.payload_length[0] == 60 - 18


def test_ethernet_padding_is_not_payload() -> None:
    frame = B.udp_frame("198.18.0.1", "198.18.0.2", 40000, 40001, b"ab", eth={"pad": True})
    h = parse(PacketBatch.from_bytes([frame]))
    assert len(frame) == 60 and h.valid[0] and h.payload_length[0] == 2


def _frame_with(data: bytes, at: int, value: bytes) -> bytes:
    return data[:at] + value + data[at + len(value) :]


def test_malformed_packets_get_error_and_offset() -> None:
    src, dst = "198.18.0.1", "198.18.0.2"
    udp = B.udp_frame(src, dst, 40000, 40001, b"payload!")
    tcp = B.tcp_frame(src, dst, 40000, 80)
    inner = B.ipv4(src, dst, 17, B.udp(1, 2, src=src, dst=dst))
    gtp = B.gtpu_frame(src, dst, 5, inner)
    gtp_ext = B.gtpu_frame(src, dst, 5, inner, extensions=[B.pdu_session_container(3)])
    v6 = B.udp_frame("2001:2::1", "2001:2::2", 1, 2, b"z")
    too_many = B.ethernet(
        B.ipv6("2001:2::1", "2001:2::2", 59, extensions=[B.ipv6_options(60)] * 9),
        ethertype=0x86DD,
    )
    cases = [
        (udp[:13], ParseError.TRUNCATED_ETHERNET, 0),
        (B.ethernet(b"\x00\x05", ethertype=0x8100), ParseError.TRUNCATED_VLAN, 12),
        (udp[:30], ParseError.TRUNCATED_IP, 14),
        (_frame_with(udp, 14, b"\x65"), ParseError.BAD_IP_VERSION, 14),
        (_frame_with(udp, 14, b"\x44"), ParseError.BAD_IHL, 14),
        (_frame_with(udp, 14, b"\x4f"), ParseError.TRUNCATED_IP, 14),
        (_frame_with(udp, 16, b"\x03\x00"), ParseError.IP_LENGTH_MISMATCH, 16),
        (_frame_with(udp, 16, b"\x00\x10"), ParseError.IP_LENGTH_MISMATCH, 16),
        (v6[:-1], ParseError.IP_LENGTH_MISMATCH, 18),
        (_frame_with(v6, 14, b"\x40"), ParseError.BAD_IP_VERSION, 14),
        (too_many, ParseError.TOO_MANY_IPV6_EXT, 14 + 40 + 8 * 8),
        (_frame_with(udp, 38, b"\x00\x04"), ParseError.UDP_LENGTH_MISMATCH, 38),
        (_frame_with(udp, 38, b"\x00\x20"), ParseError.UDP_LENGTH_MISMATCH, 38),
        (_frame_with(tcp, 46, b"\x40"), ParseError.BAD_TCP_OFFSET, 46),
        (_frame_with(tcp, 46, b"\xf0"), ParseError.TRUNCATED_L4, 34),
        (_frame_with(gtp, 42, b"\x50"), ParseError.BAD_GTP, 42),
        (_frame_with(gtp, 42, b"\x20"), ParseError.BAD_GTP, 42),  # GTP' (PT = 0)
        (_frame_with(gtp, 44, b"\x7f\x00"), ParseError.GTP_LENGTH_MISMATCH, 44),
        (_frame_with(gtp_ext, 54, b"\x00"), ParseError.BAD_GTP_EXT, 54),
        (_frame_with(gtp_ext, 54, b"\x30"), ParseError.BAD_GTP_EXT, 54),
    ]
    # A GTP-U header cut inside a datagram whose lengths are consistent.
    short_gtp = B.udp_frame(src, dst, 40000, GTPU_PORT, b"\x30\xff\x00")
    cases.append((short_gtp, ParseError.TRUNCATED_GTP, 42))
    h = parse(PacketBatch.from_bytes([c[0] for c in cases]))
    for i, (_, code, offset) in enumerate(cases):
        assert (ParseError(h.error[i]), h.error_offset[i]) == (code, offset), f"case {i}"
    assert not h.valid.any()
    counts = h.error_counts()
    assert sum(counts.values()) == len(cases)
    assert counts[ParseError.BAD_GTP] == 2
    # Layers before the failure stay parsed: a firewall can still see addresses and ports.
    assert h.ipv4_src[15] == int(ipaddress.IPv4Address(src)) and h.dport[15] == GTPU_PORT


def _assert_consistent(batch: PacketBatch, h: Headers, at: Any = 0) -> None:
    """Invariants of any parse; an error offset may point past the end only to `at`."""
    length = np.maximum(batch.lengths.astype(np.int64), at)
    assert ((h.error == 0) == h.valid).all()
    assert (h.error_offset[h.valid] == -1).all()
    bad = ~h.valid & (h.error != ParseError.NO_HEADER)
    assert (h.error_offset[bad] >= 0).all() and (h.error_offset[bad] <= length[bad]).all()
    size = batch.lengths.astype(np.int64)
    ok = h.valid & (h.payload_offset >= 0)
    end = h.payload_offset[ok].astype(np.int64) + h.payload_length[ok]
    assert (h.payload_length[ok] >= 0).all() and (end <= size[ok]).all()
    inner = h.valid & (h.gtp_inner_offset >= 0)
    assert (h.gtp_inner_offset[inner] <= size[inner]).all()


@FUZZ
@given(st.lists(st.binary(max_size=120), min_size=1, max_size=30))
def test_random_bytes_never_raise(blobs: list[bytes]) -> None:
    batch = PacketBatch.from_bytes(blobs)
    h = parse(batch)
    _assert_consistent(batch, h)
    parse_inner(batch, h)
    flow_hash(h)
    # Random offsets for a raw-IP parse, some negative, some past the end.
    at = np.array([(7 * i) % 50 - 5 for i in range(len(blobs))])
    h_at = parse(batch, at=at)
    _assert_consistent(batch, h_at, at)
    assert ((h_at.error == ParseError.NO_HEADER) == (at < 0)).all()


@FUZZ
@given(frames(), st.data())
def test_mutated_frames_never_raise(case: Any, data: st.DataObject) -> None:
    frame = bytearray(case[0])
    for _ in range(data.draw(st.integers(1, 6))):
        frame[data.draw(st.integers(0, len(frame) - 1))] = data.draw(u8)
    batch = PacketBatch.from_bytes([bytes(frame)])
    h = parse(batch)
    _assert_consistent(batch, h)
    inner = parse_inner(batch, h)
    assert inner.valid[0] == (h.gtp_inner_offset[0] >= 0 and inner.error[0] == 0)


@settings(max_examples=40, deadline=None)
@given(frames())
def test_every_truncation_is_flagged(case: Any) -> None:
    frame, exp, _ = case
    cuts = list(range(len(frame)))
    batch = PacketBatch.from_bytes([frame[:k] for k in cuts])
    h = parse(batch)
    _assert_consistent(batch, h)
    assert not h.valid.any()
    l3 = exp["l3_offset"]
    errors = [ParseError(e) for e in h.error]
    for k, err, off in zip(cuts, errors, h.error_offset.tolist(), strict=True):
        if k < 14:
            assert (err, off) == (ParseError.TRUNCATED_ETHERNET, 0)
        elif k < l3:
            assert err == ParseError.TRUNCATED_VLAN
        elif k < l3 + (20 if exp["ip_version"] == 4 else 40):
            assert (err, off) == (ParseError.TRUNCATED_IP, l3)
        elif exp["ip_version"] == 4 and k < l3 + exp.get("ip_header_length", 20):
            assert (err, off) == (ParseError.TRUNCATED_IP, l3)  # cut inside the options
        else:  # the header is whole, the packet is shorter than the IP length says
            length_field = l3 + (2 if exp["ip_version"] == 4 else 4)
            assert (err, off) == (ParseError.IP_LENGTH_MISMATCH, length_field)


def test_flow_hash_symmetry_and_seed() -> None:
    rng = random.Random(5)
    fwd, rev = [], []
    for i in range(200):
        a, b = f"198.18.{i % 256}.{rng.randrange(256)}", f"198.19.{rng.randrange(256)}.1"
        if i % 2:
            a, b = f"2001:2::{i:x}", f"2001:2::{rng.randrange(1 << 16):x}"
        sp, dp = rng.randrange(1024, 65536), rng.randrange(1, 1024)
        fwd.append(B.tcp_frame(a, b, sp, dp))
        rev.append(B.tcp_frame(b, a, dp, sp))
    hf = parse(PacketBatch.from_bytes(fwd))
    hr = parse(PacketBatch.from_bytes(rev))
    sym_f, sym_r = flow_hash(hf, symmetric=True), flow_hash(hr, symmetric=True)
    assert (sym_f == sym_r).all()
    assert len(set(sym_f.tolist())) == 200
    asym_f, asym_r = flow_hash(hf), flow_hash(hr)
    assert (asym_f != asym_r).all()
    assert (flow_hash(hf, seed=1) != asym_f).all()
    assert (flow_hash(hf) == asym_f).all()
    # Spread: the low bits balance over 8 buckets.
    buckets = np.bincount((asym_f % np.uint64(8)).astype(np.int64), minlength=8)
    assert buckets.min() > 10


def _nat_batch() -> tuple[PacketBatch, list[dict[str, Any]]]:
    rng = random.Random(11)
    specs = []
    for i in range(60):
        spec = {
            "kind": ["udp", "tcp", "icmp", "udp0"][i % 4],
            "src": f"198.18.{rng.randrange(256)}.{rng.randrange(256)}",
            "dst": f"198.19.{rng.randrange(256)}.{rng.randrange(256)}",
            "sport": rng.randrange(1024, 65536),
            "dport": rng.randrange(1, 65536),
            "ttl": rng.choice([1, 2, 64, 255]),
            "payload": rng.randbytes(rng.randrange(0, 40)),
        }
        specs.append(spec)
    return PacketBatch.from_bytes([_frame_of(s) for s in specs]), specs


def _frame_of(s: dict[str, Any]) -> bytes:
    src, dst, ttl = s["src"], s["dst"], s["ttl"]
    if s["kind"] == "tcp":
        seg = B.tcp(s["sport"], s["dport"], s["payload"], src=src, dst=dst, seq=1, flags=0x18)
        proto = 6
    elif s["kind"] == "icmp":
        seg, proto = B.icmp_echo(s["sport"], 3, s["payload"]), 1
    else:
        seg = B.udp(s["sport"], s["dport"], s["payload"], src=src, dst=dst)
        if s["kind"] == "udp0":
            seg = seg[:6] + b"\0\0" + seg[8:]  # IPv4 UDP without checksum
        proto = 17
    return B.ethernet(B.ipv4(src, dst, proto, seg, ttl=ttl))


def test_nat_rewrites_match_freshly_built_packets() -> None:
    batch, specs = _nat_batch()
    h = parse(batch)
    n = len(batch)
    new_src = np.array([int(ipaddress.IPv4Address(f"198.18.255.{i}")) for i in range(n)])
    new_port = np.arange(n, dtype=np.uint16) + 20000
    B.set_ipv4_src(batch, h, new_src)
    B.set_ipv4_dst(batch, h, int(ipaddress.IPv4Address("198.19.0.9")), mask=np.arange(n) < 30)
    B.set_l4_sport(batch, h, new_port)
    B.set_l4_dport(batch, h, 53, mask=np.arange(n) % 3 == 0)
    B.set_icmp_id(batch, h, new_port)
    expired = B.decrement_ttl(batch, h)
    for i, s in enumerate(specs):
        s["src"] = f"198.18.255.{i}"
        if i < 30:
            s["dst"] = "198.19.0.9"
        s["sport"] = 20000 + i
        if i % 3 == 0 and s["kind"] != "icmp":
            s["dport"] = 53
        assert expired[i] == (s["ttl"] <= 1)
        if s["ttl"] > 1:
            s["ttl"] -= 1
        assert batch.packet(i) == _frame_of(s), f"packet {i} ({s['kind']})"
    again = parse(batch)
    for name in ("ipv4_src", "ipv4_dst", "sport", "dport", "icmp_id", "ttl"):
        assert (getattr(again, name) == getattr(h, name)).all(), name
    assert B.ipv4_checksums_ok(batch, again).all()
    assert B.l4_checksums_ok(batch, again).all()


def test_full_checksum_recompute_restores_built_bytes() -> None:
    src6, dst6 = "2001:2::a", "2001:2::b"
    frames_ = [
        B.udp_frame("198.18.0.1", "198.18.0.2", 40000, 40001, b"odd"),
        B.tcp_frame("198.18.0.1", "198.18.0.2", 40000, 80, b"x" * 33, options=b"\x01" * 4),
        B.icmp_echo_frame("198.18.0.1", "198.18.0.2", 1, 2, b"ping!"),
        B.udp_frame(src6, dst6, 40000, 40001, b"abcde", vlans=[3]),
        B.tcp_frame(src6, dst6, 1, 2, b"q"),
        B.icmp_echo_frame(src6, dst6, 9, 9, b"v6 ping"),
        B.ethernet(
            B.ipv6(
                src6,
                dst6,
                17,
                B.udp(5, 6, b"e", src=src6, dst=dst6),
                extensions=[B.ipv6_options(0)],
            ),
            ethertype=0x86DD,
        ),
    ]
    batch = PacketBatch.from_bytes(frames_)
    h = parse(batch)
    ip4 = h.ip_version == 4
    batch.write_uint(h.l3_offset[ip4] + 10, 0x1234, 2, idx=np.flatnonzero(ip4))
    rows = np.flatnonzero(h.l4_offset >= 0)
    csum_at = np.where(h.protocol[rows] == 6, 16, np.where(h.protocol[rows] == 17, 6, 2))
    batch.write_uint(h.l4_offset[rows] + csum_at, 0xBEEF, 2, idx=rows)
    assert not B.l4_checksums_ok(batch, h).any()
    assert not B.ipv4_checksums_ok(batch, h)[ip4].any()
    B.fix_ipv4_checksums(batch, h)
    B.fix_l4_checksums(batch, h)
    assert batch.to_list() == frames_


def test_gtp_encap_and_decap_with_rebuild() -> None:
    """Decapsulate G-PDUs with one rebuild, encapsulate them back with a header template."""
    src, dst = "198.18.0.1", "198.18.0.2"
    inners = [
        B.ipv4(
            "198.18.1.1",
            "198.18.2.2",
            17,
            B.udp(1, 2, b"x" * i, src="198.18.1.1", dst="198.18.2.2"),
        )
        for i in range(5)
    ]
    frames_ = [B.gtpu_frame(src, dst, 100 + i, p, seq=i) for i, p in enumerate(inners)]
    batch = PacketBatch.from_bytes(frames_)
    h = parse(batch)
    inner = batch.rebuild(start=h.gtp_inner_offset)
    assert inner.to_list() == inners
    # Encapsulate: a template outer header, per-packet lengths/TEIDs written in, checksums fixed.
    template = np.frombuffer(B.gtpu_frame(src, dst, 0, b"", seq=0), np.uint8)
    outer = np.tile(template, (len(inner), 1))
    encap = inner.rebuild(prefix=outer)
    lengths = inner.lengths.astype(np.int64)
    encap.write_uint(16, lengths + 20 + 8 + 12, 2)  # IPv4 total length
    encap.write_uint(38, lengths + 8 + 12, 2)  # UDP length
    encap.write_uint(44, lengths + 4, 2)  # GTP length (optional fields + payload)
    encap.write_uint(46, 100 + np.arange(5), 4)  # TEID
    encap.write_uint(50, np.arange(5), 2)  # sequence number
    eh = parse(encap)
    B.fix_ipv4_checksums(encap, eh)
    B.fix_l4_checksums(encap, eh)
    assert encap.to_list() == frames_


@given(st.binary(min_size=0, max_size=300), st.lists(st.tuples(u16, u16), max_size=20))
def test_segment_sums_match_scalar_sums(raw: bytes, bounds: list[tuple[int, int]]) -> None:
    data = np.frombuffer(raw, np.uint8)
    starts = np.array([min(a, b) % (len(raw) + 1) for a, b in bounds], np.int64)
    ends = np.array([max(a, b) % (len(raw) + 1) for a, b in bounds], np.int64)
    ends = np.maximum(starts, ends)
    got = segment_sums(data, starts, ends)
    want = [word_sum(raw[s:e]) for s, e in zip(starts.tolist(), ends.tolist(), strict=True)]
    assert [finish(int(g)) for g in got] == [finish(w) for w in want]


@given(st.binary(min_size=2, max_size=64).filter(lambda b: len(b) % 2 == 0), st.data())
def test_incremental_update_equals_recompute(raw: bytes, data: st.DataObject) -> None:
    """RFC 1624 eqn. 3 gives the same field value as recomputing from scratch."""
    words = list(np.frombuffer(raw, ">u2").astype(int))
    csum = internet_checksum(raw)
    k = data.draw(st.integers(0, len(words) - 1))
    new = data.draw(u16)
    changed = words.copy()
    changed[k] = new
    fresh = internet_checksum(np.array(changed, ">u2").tobytes())
    updated = int(incremental_update(np.array([csum]), np.array([words[k]]), np.array([new]))[0])
    # 0x0000 and 0xFFFF are the same one's-complement number; a sum of all-zero data is
    # the only case where the two computations may pick different representations.
    assert updated == fresh or {updated, fresh} == {0, 0xFFFF}


# -- agreement with tshark ------------------------------------------------------------------

TSHARK_FIELDS = [
    "vlan.id",
    "ip.src",
    "ip.dst",
    "ip.proto",
    "ip.ttl",
    "ipv6.src",
    "ipv6.dst",
    "ipv6.hlim",
    "tcp.srcport",
    "tcp.dstport",
    "tcp.seq_raw",
    "tcp.ack_raw",
    "tcp.flags",
    "udp.srcport",
    "udp.dstport",
    "icmp.type",
    "icmpv6.type",
    "gtp.teid",
    "gtp.seq_number",
    "gtp.ext_hdr.pdu_ses_con.qos_flow_id",
    "ip.checksum.status",
    "udp.checksum.status",
    "tcp.checksum.status",
    "icmp.checksum.status",
    "icmpv6.checksum.status",
]


def _mixed_frames(count: int) -> list[bytes]:
    """Deterministic mix of IPv4/IPv6 TCP/UDP/ICMP and GTP-U frames (benchmarking addresses)."""
    rng = random.Random(2152)
    out = []
    for i in range(count):
        v6 = i % 2 == 1
        src = (
            f"2001:2::{rng.randrange(1, 1 << 16):x}" if v6 else f"198.18.0.{rng.randrange(1, 255)}"
        )
        dst = (
            f"2001:2::{rng.randrange(1, 1 << 16):x}" if v6 else f"198.19.0.{rng.randrange(1, 255)}"
        )
        sport, dport = 40000 + rng.randrange(1000), 41000 + rng.randrange(1000)
        vlans = [rng.randrange(1, 4095)] if i % 5 == 0 else []
        ttl = rng.randrange(1, 256)
        kind = i % 4
        if kind == 0:
            f = B.udp_frame(
                src, dst, sport, dport, rng.randbytes(rng.randrange(30)), vlans=vlans, ttl=ttl
            )
        elif kind == 1:
            f = B.tcp_frame(
                src,
                dst,
                sport,
                dport,
                rng.randbytes(rng.randrange(30)),
                seq=rng.randrange(1 << 32),
                ack=rng.randrange(1 << 32),
                flags=rng.randrange(0x200),
                vlans=vlans,
                ttl=ttl,
            )
        elif kind == 2:
            f = B.icmp_echo_frame(
                src, dst, rng.randrange(1 << 16), i, b"ping", vlans=vlans, ttl=ttl
            )
        else:
            isrc, idst = "198.18.7.1", "198.18.8.1"
            inner = B.ipv4(isrc, idst, 17, B.udp(sport, dport, b"u", src=isrc, dst=idst))
            exts = [B.pdu_session_container(rng.randrange(64), uplink=bool(i % 3))] if i % 2 else []
            f = B.gtpu_frame(
                src, dst, rng.randrange(1 << 32), inner, seq=i, extensions=exts, ttl=ttl
            )
        out.append(f)
    return out


def _num(text: str) -> int:
    return int(text, 16) if text.startswith("0x") else int(text)


def _first(cells: list[str]) -> int | None:
    return _num(cells[0]) if cells else None


@requires_tshark
def test_parser_agrees_with_tshark(tmp_path: Path) -> None:
    frames_ = _mixed_frames(120)
    batch = PacketBatch.from_bytes(frames_)
    h = parse(batch)
    inner = parse_inner(batch, h)
    assert h.valid.all()
    path = tmp_path / "mixed.pcap"
    write_pcap(path, batch)
    rows = tshark_fields(path, TSHARK_FIELDS)
    assert len(rows) == len(frames_)
    for i, row in enumerate(rows):
        v = int(h.ip_version[i])
        assert _first(row["vlan.id"]) == (int(h.vlan_id[i]) if h.vlan_count[i] else None)
        if v == 4:
            assert row["ip.src"][0] == str(ipaddress.IPv4Address(int(h.ipv4_src[i])))
            assert row["ip.dst"][0] == str(ipaddress.IPv4Address(int(h.ipv4_dst[i])))
            assert int(row["ip.ttl"][0]) == h.ttl[i]
            assert int(row["ip.proto"][0]) == h.protocol[i]
        else:
            src = (int(h.ipv6_src_hi[i]) << 64) | int(h.ipv6_src_lo[i])
            dst = (int(h.ipv6_dst_hi[i]) << 64) | int(h.ipv6_dst_lo[i])
            assert ipaddress.IPv6Address(row["ipv6.src"][0]) == ipaddress.IPv6Address(src)
            assert ipaddress.IPv6Address(row["ipv6.dst"][0]) == ipaddress.IPv6Address(dst)
            assert int(row["ipv6.hlim"][0]) == h.ttl[i]
        proto = int(h.protocol[i])
        if proto == 6:
            assert _first(row["tcp.srcport"]) == h.sport[i]
            assert _first(row["tcp.dstport"]) == h.dport[i]
            assert _first(row["tcp.seq_raw"]) == h.tcp_seq[i]
            assert _first(row["tcp.ack_raw"]) == h.tcp_ack[i]
            assert int(row["tcp.flags"][0], 16) == h.tcp_flags[i]
            assert row["tcp.checksum.status"] == ["1"]
        elif proto == 17:
            assert _first(row["udp.srcport"]) == h.sport[i]
            assert _first(row["udp.dstport"]) == h.dport[i]
            assert row["udp.checksum.status"][0] == "1"
        elif proto == 1:
            assert _first(row["icmp.type"]) == h.icmp_type[i]
            assert row["icmp.checksum.status"] == ["1"]
        elif proto == 58:
            assert _first(row["icmpv6.type"]) == h.icmp_type[i]
            assert row["icmpv6.checksum.status"] == ["1"]
        if v == 4:
            assert row["ip.checksum.status"][0] == "1"
        if h.is_gtpu[i]:
            assert _first(row["gtp.teid"]) == h.gtp_teid[i]
            assert _first(row["gtp.seq_number"]) == h.gtp_seq[i]
            qfi = row["gtp.ext_hdr.pdu_ses_con.qos_flow_id"]
            assert _first(qfi) == (int(h.gtp_qfi[i]) if h.has_pdu_session[i] else None)
            # tshark dissects the inner packet too: its addresses come after the outer ones.
            inner_src = str(ipaddress.IPv4Address(int(inner.ipv4_src[i])))
            assert row["ip.src"][-1] == inner_src
            assert int(row["udp.srcport"][-1]) == inner.sport[i]
        else:
            assert row["gtp.teid"] == []


def test_gtpu_is_recognised_by_destination_port_only() -> None:
    """A plain UDP flow *from* port 2152 is not GTP-U (TS 29.281 §4.4.2.3), found by the NAT's
    round-trip property test; a datagram *to* 2152 is."""
    from_2152 = B.udp_frame("198.18.0.1", "198.19.0.9", 2152, 53, b"\x11")
    to_2152 = B.gtpu_frame(
        "198.18.0.1", "198.19.0.9", 7, B.udp_frame("198.19.1.1", "198.19.1.2", 1, 2)[14:]
    )
    h = parse(PacketBatch.from_bytes([from_2152, to_2152]))
    assert h.valid.tolist() == [True, True]
    assert h.is_gtpu.tolist() == [False, True]
