"""Operators: each one on real packets (built with nfaas.nf.build), with its counters."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nfaas.nf import build as B
from nfaas.nf.batch import PacketBatch
from nfaas.nf.headers import Headers, parse
from nfaas.nf.operators import (
    PARSE_DROP_REASONS,
    Branch,
    Compose,
    Deparse,
    EdgeType,
    EdgeTypeError,
    Emit,
    Filter,
    Map,
    Merge,
    Parse,
    Transform,
    merge_outputs,
    with_meta,
)
from nfaas.nf.pcap import read_capture_all, write_pcap

A, Z = "198.18.0.1", "198.18.0.2"


def ip(addr: str) -> int:
    return int(ipaddress.ip_address(addr))


def mixed_frames() -> list[bytes]:
    return [
        B.tcp_frame(A, Z, 1000, 80, b"GET /"),
        B.udp_frame(A, Z, 5000, 53, b"query"),
        B.icmp_echo_frame(A, Z, 7, 1),
        B.udp_frame("2001:db8::1", "2001:db8::2", 6000, 443, b"quic"),
        B.tcp_frame(Z, A, 80, 1000, b"200 OK", flags=B.TCP_ACK | B.TCP_PSH),
    ]


def malformed_frames() -> list[bytes]:
    good = B.udp_frame(A, Z, 1, 2, b"x" * 20)
    return [
        good[:10],  # truncated Ethernet
        good[:20],  # truncated IPv4 header
        good[:14] + b"\x35" + good[15:],  # IP version 3
        B.ethernet(B.ipv4(A, Z, 17, B.udp(1, 2, b"abc", src=A, dst=Z), total_length=200)),
    ]


def parsed(frames: list[bytes]) -> tuple[PacketBatch, Headers]:
    batch = PacketBatch.from_bytes(frames)
    return batch, parse(batch)


# -- parse / deparse ------------------------------------------------------------------------------


def test_parse_drops_malformed_packets_and_counts_them_by_error(tmp_path: Path) -> None:
    # Through a pcap file, as a capture would arrive.
    path = tmp_path / "mixed.pcap"
    write_pcap(path, PacketBatch.from_bytes(mixed_frames() + malformed_frames()))
    batch = read_capture_all(path)
    op = Parse()
    [(out, h)] = op.run(batch, None, 0.0)
    assert h is not None and len(out) == len(h) == 5 and h.valid.all()
    assert out.to_list() == mixed_frames()
    drops = op.counters.drops
    assert drops == {
        "truncated_ethernet": 1,
        "truncated_ip": 1,
        "bad_ip_version": 1,
        "ip_length_mismatch": 1,
    }
    assert set(drops) <= set(PARSE_DROP_REASONS)
    c = op.counters
    assert (c.packets_in, c.packets_out, c.dropped) == (9, 5, 4)
    assert c.bytes_in == batch.total_bytes and c.bytes_out == out.total_bytes


def test_parse_can_keep_invalid_packets() -> None:
    batch = PacketBatch.from_bytes(malformed_frames())
    [(out, h)] = Parse(drop_invalid=False).run(batch, None, 0.0)
    assert h is not None and len(out) == 4 and not h.valid.any()


def test_deparse_forgets_headers_and_can_fix_checksums() -> None:
    batch, h = parsed(mixed_frames())
    # Rewrite the destination without incremental checksum updates: checksums break.
    rel = h.l3_offset.astype(np.int64) + 16
    v4 = np.flatnonzero(h.ip_version == 4)
    batch.write_uint(rel[v4], ip("198.18.9.9"), 4, v4)
    h = parse(batch)
    assert not B.ipv4_checksums_ok(batch, h).all()
    [(out, none)] = Deparse(checksums=True, compact=True).run(batch, h, 0.0)
    assert none is None and out.is_compact()
    h2 = parse(out)
    assert B.ipv4_checksums_ok(out, h2).all() and B.l4_checksums_ok(out, h2).all()


def test_emit_takes_raw_or_parsed_packets() -> None:
    batch, h = parsed(mixed_frames())
    assert Emit().output_type(EdgeType.RAW) is EdgeType.RAW
    assert Emit().output_type(EdgeType.PARSED) is EdgeType.RAW
    [(out, none)] = Emit().run(batch, h, 0.0)
    assert out is batch and none is None


# -- map / filter / transform ---------------------------------------------------------------------


def test_map_rewrites_in_place() -> None:
    batch, h = parsed(mixed_frames())
    op = Map(lambda b, hh: B.set_ipv4_dst(b, hh, ip("198.18.7.7")), name="dnat")
    [(out, h2)] = op.run(batch, h, 0.0)
    assert out is batch and h2 is h
    again = parse(out)
    v4 = again.ip_version == 4
    assert (again.ipv4_dst[v4] == ip("198.18.7.7")).all()
    assert B.l4_checksums_ok(out, again).all() and B.ipv4_checksums_ok(out, again).all()
    assert op.counters.packets_out == len(batch)


def test_map_returning_packets_is_an_error_pointing_to_transform() -> None:
    batch, h = parsed(mixed_frames())
    op = Map(lambda b, hh: b, name="oops")
    with pytest.raises(TypeError, match=r"map 'oops' returned a PacketBatch.*use a transform"):
        op.run(batch, h, 0.0)
    assert op.counters.errors == 1 and "TypeError" in (op.counters.last_error or "")


def test_filter_keeps_matching_packets_in_order_and_counts_the_rest() -> None:
    batch, h = parsed(mixed_frames())
    op = Filter(lambda b, hh: hh.protocol == 6, reason="not_tcp")
    [(out, h2)] = op.run(batch, h, 0.0)
    assert h2 is not None
    assert out.to_list() == [mixed_frames()[0], mixed_frames()[4]]
    assert (h2.sport == [1000, 80]).all()
    assert op.counters.drops == {"not_tcp": 3}


def test_filter_with_a_wrong_shape_names_the_operator() -> None:
    batch, h = parsed(mixed_frames())
    with pytest.raises(ValueError, match=r"filter 'short' returned an array of shape \(2,\)"):
        Filter(lambda b, hh: np.ones(2, bool), name="short").run(batch, h, 0.0)


def test_filter_on_raw_packets_when_headers_are_not_needed() -> None:
    batch = PacketBatch.from_bytes(mixed_frames())
    op = Filter(lambda b, hh: b.lengths > 60, headers=False)
    assert op.output_type(EdgeType.RAW) is EdgeType.RAW
    [(out, h)] = op.run(batch, None, 0.0)
    assert h is None and (out.lengths > 60).all()


def test_transform_encapsulates_with_reparse() -> None:
    """GTP-U encapsulation of inner IP packets: outer Eth/IP/UDP/GTP prefix, inner IP body."""
    batch, h = parsed(mixed_frames()[:3])
    outer = B.gtpu_frame("198.18.1.1", "198.18.1.2", 0x1234, b"")

    def encap(b: PacketBatch, hh: Headers) -> PacketBatch:
        inner = b.rebuild(start=hh.l3_offset)
        # Per-packet outer headers: lengths and checksums depend on the inner size.
        frames = [B.gtpu_frame("198.18.1.1", "198.18.1.2", 0x1234, p) for p in inner.to_list()]
        prefixes = PacketBatch.from_bytes([f[: len(outer)] for f in frames])
        return inner.rebuild(prefix=prefixes)

    op = Transform(encap, reparse=True)
    assert op.output_type(EdgeType.PARSED) is EdgeType.PARSED
    [(out, h2)] = op.run(batch, h, 0.0)
    assert h2 is not None and h2.valid.all() and h2.is_gtpu.all()
    assert (h2.gtp_teid == 0x1234).all()
    inner = parse(out, at=h2.gtp_inner_offset)
    assert (inner.ipv4_src == ip(A)).all() and inner.valid.all()


def test_transform_that_drops_packets_counts_them() -> None:
    batch, h = parsed(mixed_frames())
    op = Transform(lambda b, hh: b.select(hh.protocol == 17))
    assert op.output_type(EdgeType.PARSED) is EdgeType.RAW
    [(out, none)] = op.run(batch, h, 0.0)
    assert none is None and len(out) == 2
    assert op.counters.drops == {"transform": 3}


def test_operators_needing_headers_refuse_raw_edges_by_name() -> None:
    for op in (Filter(lambda b, h: h.valid, name="f1"), Map(print, name="m1"), Deparse()):
        with pytest.raises(EdgeTypeError, match=f"{op.kind} '{op.name}' needs parsed packets"):
            op.output_type(EdgeType.RAW)


# -- branch / merge / compose ---------------------------------------------------------------------


def test_branch_by_predicate() -> None:
    batch, h = parsed(mixed_frames())
    op = Branch(lambda b, hh: hh.ip_version == 6, ("v6", "v4"))
    (v6, _), (v4, _) = op.run(batch, h, 0.0)
    assert v6.to_list() == [mixed_frames()[3]]
    assert len(v4) == 4


def test_branch_by_classifier_drops_unclassified() -> None:
    batch, h = parsed(mixed_frames())
    proto_to_out = {6: 0, 17: 1}

    def classify(b: PacketBatch, hh: Headers) -> np.ndarray:
        return np.array([proto_to_out.get(int(p), -1) for p in hh.protocol])

    op = Branch(classify, ("tcp", "udp"))
    (tcp, th), (udp, uh) = op.run(batch, h, 0.0)
    assert th is not None and uh is not None
    assert (th.protocol == 6).all() and len(tcp) == 2
    assert (uh.protocol == 17).all() and len(udp) == 2
    assert op.counters.drops == {"unclassified": 1}


def test_branch_mask_needs_two_outputs_and_integers_otherwise() -> None:
    batch, h = parsed(mixed_frames())
    with pytest.raises(ValueError, match="boolean mask but has 3 outputs"):
        Branch(lambda b, hh: hh.valid, 3, name="b3").run(batch, h, 0.0)
    with pytest.raises(ValueError, match="float64 values"):
        Branch(lambda b, hh: np.zeros(len(b)), 2).run(batch, h, 0.0)


@settings(max_examples=60, deadline=None)
@given(
    classes=st.lists(st.integers(-2, 12), min_size=1, max_size=40),
    outputs=st.integers(1, 11),
)
def test_branch_partitions_packets_in_order(classes: list[int], outputs: int) -> None:
    frames = [B.udp_frame(A, Z, 1000 + i, 9) for i in range(len(classes))]
    batch, h = parsed(frames)
    op = Branch(lambda b, hh: np.array(classes), outputs, headers=False)
    outs = op.run(batch, h, 0.0)
    assert len(outs) == outputs
    for k, (out, hh) in enumerate(outs):
        want = [i for i, c in enumerate(classes) if c == k]
        assert out.to_list() == [frames[i] for i in want]
        assert hh is not None and (hh.sport == [1000 + i for i in want]).all()
    unclassified = sum(1 for c in classes if not 0 <= c < outputs)
    assert op.counters.dropped == unclassified
    assert op.counters.packets_out + unclassified == len(classes)


def test_merge_outputs_shares_the_buffer_of_one_batch() -> None:
    batch, h = parsed(mixed_frames())
    a, b = (batch.select(np.array(r), copy=False) for r in ([0, 2], [1, 3, 4]))
    merged, mh = merge_outputs(
        [(a, h.select(np.array([0, 2]))), (b, h.select(np.array([1, 3, 4])))]
    )
    assert merged.data is batch.data  # no bytes copied
    assert mh is not None and (mh.sport == h.sport[[0, 2, 1, 3, 4]]).all()
    other = PacketBatch.from_bytes([B.udp_frame(A, Z)])
    mixed, mh2 = merge_outputs([(a, None), (other, None)])
    assert mh2 is None and mixed.to_list() == a.to_list() + other.to_list()


def test_merge_by_arrival_restores_timestamp_order() -> None:
    frames = mixed_frames()
    batch = PacketBatch.from_bytes(frames, timestamps_ns=[5, 1, 4, 2, 3])
    [(out, _)] = Merge(order="arrival").run(batch, None, 0.0)
    assert out.to_list() == [frames[i] for i in (1, 3, 4, 2, 0)]
    with pytest.raises(ValueError, match="'input' or 'arrival'"):
        Merge(order="random")


def test_compose_chains_members_and_keeps_their_counters() -> None:
    batch = PacketBatch.from_bytes(mixed_frames() + malformed_frames())
    chain = Compose(
        Parse(),
        Filter(lambda b, h: h.ip_version == 4, name="v4"),
        Map(lambda b, h: B.decrement_ttl(b, h), name="ttl"),
        Deparse(),
        name="router",
    )
    assert chain.output_type(EdgeType.RAW) is EdgeType.RAW
    [(out, h)] = chain.run(batch, None, 0.0)
    assert h is None and len(out) == 4
    assert (parse(out).ttl == 63).all()
    parse_op, v4 = chain.members[0], chain.members[1]
    assert parse_op.counters.dropped == 4 and v4.counters.drops == {"filtered": 1}
    assert chain.counters.packets_in == 9 and chain.counters.packets_out == 4


def test_compose_type_errors_name_the_member() -> None:
    chain = Compose(Deparse(), Filter(lambda b, h: h.valid, name="late"), name="bad")
    with pytest.raises(EdgeTypeError, match="in compose 'bad': filter 'late' needs parsed"):
        chain.output_type(EdgeType.PARSED)
    with pytest.raises(ValueError, match="single-input, single-output"):
        Compose(Branch(lambda b, h: h.valid))


def test_with_meta_adds_columns_without_copying() -> None:
    batch = PacketBatch.from_bytes(mixed_frames())
    tagged = with_meta(batch, color=np.arange(5))
    assert tagged.data is batch.data and "color" not in batch.meta
    assert tagged.select(np.array([4, 0])).meta["color"].tolist() == [4, 0]
    with pytest.raises(ValueError, match="meta column 'x' has"):
        with_meta(batch, x=np.arange(3))
