"""Batch GTP-U encapsulation / decapsulation (nfaas.nf.gtpu), used by the TOF.

Every encapsulated packet must equal the scalar builder's `gtpu_frame` byte for byte, except
the outer UDP checksum (0 here); mixed layouts in one batch go through the ragged path.
"""

from __future__ import annotations

import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nfaas.nf import build as B
from nfaas.nf.batch import PacketBatch
from nfaas.nf.gtpu import MAX_INNER_LENGTH, decapsulate, encapsulate
from nfaas.nf.headers import parse, parse_inner

A, Z = "198.18.0.1", "198.19.0.1"
ENB, SGW = "198.18.1.1", "198.18.2.1"
MAC_A, MAC_B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"


def ip(addr: str) -> int:
    return int.from_bytes(bytes(int(x) for x in addr.split(".")), "big")


def without_udp_checksum(frame: bytes, l2: int) -> bytes:
    at = l2 + 20 + 6
    return frame[:at] + b"\0\0" + frame[at + 2 :]


packet_spec = st.tuples(
    st.binary(max_size=40),  # UDP payload of the inner packet
    st.sampled_from([(), (5,), (5, 6)]),  # VLAN tags
    st.one_of(st.none(), st.integers(0, 63)),  # QFI
    st.integers(0, (1 << 32) - 1),  # TEID
    st.integers(0, 255),  # TOS
)


@settings(max_examples=150, deadline=None)
@given(specs=st.lists(packet_spec, min_size=1, max_size=12), uplink=st.booleans())
def test_encapsulate_equals_the_scalar_builder(specs: list[tuple], uplink: bool) -> None:
    inner = [
        B.ipv4(A, Z, 17, B.udp(1, 2, p, src=A, dst=Z), ident=k) for k, (p, *_) in enumerate(specs)
    ]
    l2 = np.zeros((len(specs), 22), np.uint8)
    l2_len = []
    for k, (_, vlans, *_) in enumerate(specs):
        eth = B.ethernet(b"", dst=MAC_A, src=MAC_B, vlans=vlans)
        l2[k, : len(eth)] = np.frombuffer(eth, np.uint8)
        l2[k, len(eth) - 2 : len(eth)] = 0xAB  # the ethertype is ours to set
        l2_len.append(len(eth))
    out = encapsulate(
        PacketBatch.from_bytes(inner),
        teid=[s[3] for s in specs],
        src=ip(ENB),
        dst=ip(SGW),
        l2=l2,
        l2_length=l2_len,
        tos=[s[4] for s in specs],
        ident=np.arange(len(specs)) + 7,
        qfi=[-1 if s[2] is None else s[2] for s in specs],
        uplink=uplink,
    )
    for k, (_, vlans, qfi, teid, tos) in enumerate(specs):
        exts = [] if qfi is None else [B.pdu_session_container(qfi, uplink=uplink)]
        want = B.gtpu_frame(
            ENB, SGW, teid, inner[k], extensions=exts, vlans=vlans, tos=tos, ident=k + 7,
            eth={"dst": MAC_A, "src": MAC_B},
        )  # fmt: skip
        assert out.packet(k) == without_udp_checksum(want, l2_len[k])
    h = parse(out)
    assert h.valid.all() and B.ipv4_checksums_ok(out, h).all() and B.l4_checksums_ok(out, h).all()
    assert parse_inner(out, h).valid.all()


def test_encapsulate_a_slice_of_each_packet_and_keep_metadata() -> None:
    frames = [B.udp_frame(A, Z, 1, 2, b"abc"), B.tcp_frame(A, Z, 3, 4, b"defg", vlans=[9])]
    batch = PacketBatch.from_bytes(frames, timestamps_ns=[5, 6], port=3)
    h = parse(batch)
    start = h.l3_offset.astype(np.int64)
    out = encapsulate(
        batch, start=start, end=start + h.ip_total_length, teid=1, src=ip(ENB), dst=ip(SGW),
        l2=B.ethernet(b""),
    )  # fmt: skip
    inner = parse_inner(out, parse(out))
    assert (
        inner.valid.all() and out.timestamps_ns.tolist() == [5, 6] and out.port.tolist() == [3, 3]
    )
    assert out.packet(1)[-4:] == b"defg"


def test_decapsulate_is_the_inverse() -> None:
    inner = [B.ipv4(A, Z, 17, B.udp(1, 2, b"x" * k, src=A, dst=Z)) for k in range(5)]
    inner.append(B.ipv6("2001:2::1", "2001:2::2", 59, b"six"))
    tunnelled = PacketBatch.from_bytes(
        [B.gtpu_frame(ENB, SGW, k, p, vlans=[3]) for k, p in enumerate(inner)]
    )
    h = parse(tunnelled)
    ih = parse_inner(tunnelled, h)
    out = decapsulate(tunnelled, ih, dst_mac=b"\x02" * 6, src_mac=b"\x04" * 6)
    assert [p[14:] for p in out.to_list()] == inner
    assert [struct.unpack("!H", p[12:14])[0] for p in out.to_list()] == [0x0800] * 5 + [0x86DD]
    some = decapsulate(
        tunnelled, ih, dst_mac=b"\x02" * 6, src_mac=b"\x04" * 6, rows=np.array([4, 1])
    )
    assert [p[14:] for p in some.to_list()] == [inner[4], inner[1]]


def test_bad_arguments_name_the_problem() -> None:
    big = PacketBatch.from_bytes([b"\0" * 10, b"\0" * (MAX_INNER_LENGTH + 1)])
    with pytest.raises(ValueError, match="packet 1 is 65492 bytes"):
        encapsulate(big, teid=1, src=1, dst=2, l2=bytes(14))
    small = PacketBatch.from_bytes([b"\0" * 10])
    with pytest.raises(ValueError, match="l2_length"):
        encapsulate(small, teid=1, src=1, dst=2, l2=bytes(12))
    with pytest.raises(ValueError, match="teid"):
        encapsulate(small, teid=[1, 2], src=1, dst=2, l2=bytes(14))
    with pytest.raises(ValueError, match="start"):
        encapsulate(small, teid=1, src=1, dst=2, l2=bytes(14), start=11)
