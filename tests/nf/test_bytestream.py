"""TCP reassembly: whatever the segmentation, order, duplication and batching, each direction
of a connection comes out as exactly the bytes that were sent."""

from __future__ import annotations

import itertools
from collections import defaultdict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nfaas.nf import build as B
from nfaas.nf.batch import PacketBatch
from nfaas.nf.bytestream import Reassemble, Reassembler, Stream
from nfaas.nf.graph import Graph
from nfaas.nf.headers import parse

C, S = "198.18.0.1", "198.18.0.2"
SYN, ACK, FIN, RST, PSH = B.TCP_SYN, B.TCP_ACK, B.TCP_FIN, B.TCP_RST, B.TCP_PSH
MOD = 1 << 32


class Collector:
    """Gathers delivered bytes and close reasons per (src, sport) direction."""

    def __init__(self) -> None:
        self.data: dict[tuple[str, int], bytearray] = defaultdict(bytearray)
        self.calls: dict[tuple[str, int], int] = defaultdict(int)
        self.closed: dict[tuple[str, int], str] = {}
        self.finished: set[int] = set()

    def on_data(self, stream: Stream, data: bytes) -> None:
        key = (str(stream.src), stream.sport)
        assert id(stream) not in self.finished, "data after close"
        self.data[key] += data
        self.calls[key] += 1

    def on_close(self, stream: Stream, reason: str) -> None:
        self.closed[(str(stream.src), stream.sport)] = reason
        self.finished.add(id(stream))


def segment(src: str, dst: str, sport: int, dport: int, seq: int, data: bytes = b"",
            flags: int = ACK | PSH) -> bytes:  # fmt: skip
    return B.tcp_frame(src, dst, sport, dport, data, seq=seq % MOD, flags=flags)


def feed(r: Reassembler, frames: list[bytes], now: float = 0.0) -> None:
    if frames:
        batch = PacketBatch.from_bytes(frames)
        r.feed(batch, parse(batch), now)


def stream_frames(
    data: bytes, isn: int, pieces: list[tuple[int, int]], fin: bool, src: str = C,
    dst: str = S, sport: int = 40000, dport: int = 80,
) -> tuple[bytes, list[bytes]]:  # fmt: skip
    """The SYN, and one data segment per (offset, length) piece (the last carries FIN)."""
    syn = segment(src, dst, sport, dport, isn, flags=SYN)
    out = []
    for offset, length in pieces:
        out.append(
            segment(src, dst, sport, dport, isn + 1 + offset, data[offset : offset + length])
        )
    if fin:
        out.append(segment(src, dst, sport, dport, isn + 1 + len(data), flags=FIN | ACK))
    return syn, out


@st.composite
def deliveries(draw: st.DrawFn) -> tuple[bytes, int, list[tuple[int, int]], list[int], bool]:
    data = draw(st.binary(min_size=1, max_size=600))
    isn = draw(st.sampled_from([0, 1000, MOD - 1, MOD - 5, MOD - 300, 2**31]))
    # A covering segmentation, plus retransmissions of arbitrary (overlapping) ranges.
    cuts = (
        sorted(set(draw(st.lists(st.integers(1, len(data) - 1), max_size=12))))
        if len(data) > 1
        else []
    )
    bounds = [0, *cuts, len(data)]
    pieces = [(a, b - a) for a, b in itertools.pairwise(bounds)]
    for _ in range(draw(st.integers(0, 6))):
        a = draw(st.integers(0, len(data) - 1))
        pieces.append((a, draw(st.integers(1, len(data) - a))))
    order = draw(st.permutations(range(len(pieces))))
    pieces = [pieces[i] for i in order]
    sizes = draw(st.lists(st.integers(1, 8), min_size=1, max_size=20))
    return data, isn, pieces, sizes, draw(st.booleans())


@settings(max_examples=120, deadline=None)
@given(deliveries())
def test_any_segmentation_order_and_duplication_yields_the_stream(
    case: tuple[bytes, int, list[tuple[int, int]], list[int], bool],
) -> None:
    data, isn, pieces, sizes, fin = case
    got = Collector()
    r = Reassembler(got.on_data, got.on_close)
    syn, frames = stream_frames(data, isn, pieces, fin)
    feed(r, [syn])
    k = 0
    while frames:
        size = sizes[k % len(sizes)]
        feed(r, frames[:size], now=float(k))
        frames, k = frames[size:], k + 1
    assert bytes(got.data[(C, 40000)]) == data
    assert got.closed.get((C, 40000)) == ("fin" if fin else None)
    assert r.stats["bytes_delivered"] == len(data)
    # Every byte sent was either delivered once or recognised as a duplicate.
    assert r.stats["duplicate_bytes"] == sum(n for _, n in pieces) - len(data)
    assert r.stats["out_of_window"] == r.stats["buffer_overflow"] == 0
    stream = r.streams[next(iter(r.streams))]
    assert stream.buffered == 0 and not stream.pending


def test_both_directions_and_several_flows_interleaved() -> None:
    got = Collector()
    r = Reassembler(got.on_data, got.on_close)
    request, response = b"GET / HTTP/1.1\r\n\r\n", b"HTTP/1.1 200 OK\r\n\r\nhello"
    frames = [
        segment(C, S, 1, 80, 100, flags=SYN),
        segment(S, C, 80, 1, 900, flags=SYN | ACK),
        segment(C, S, 2, 80, 5000, flags=SYN),
        segment(C, S, 1, 80, 101, request[:5]),
        segment(C, S, 2, 80, 5001, b"other"),
        segment(S, C, 80, 1, 901 + 9, response[9:]),  # out of order
        segment(C, S, 1, 80, 106, request[5:]),
        segment(S, C, 80, 1, 901, response[:9]),
        segment(S, C, 80, 1, 901 + len(response), flags=FIN | ACK),
    ]
    feed(r, frames[:4])
    feed(r, frames[4:])
    assert got.data[(C, 1)] == request
    assert got.data[(S, 80)] == response
    assert got.data[(C, 2)] == b"other"
    assert got.closed == {(S, 80): "fin"}
    assert r.open_streams == 2 and r.stats["streams_opened"] == 3
    s = next(s for s in r.streams.values() if s.sport == 1)
    assert (str(s.src), str(s.dst), s.dport, s.delivered) == (C, S, 80, len(request))


def test_in_order_segments_of_a_batch_arrive_in_one_call() -> None:
    got = Collector()
    r = Reassembler(got.on_data)
    feed(r, [segment(C, S, 1, 80, 10, flags=SYN)])
    body = bytes(range(256)) * 8
    frames = [segment(C, S, 1, 80, 11 + i, body[i : i + 100]) for i in range(0, len(body), 100)]
    feed(r, frames)
    assert got.data[(C, 1)] == body and got.calls[(C, 1)] == 1


def test_ipv6_and_wraparound() -> None:
    got = Collector()
    r = Reassembler(got.on_data)
    a, z = "2001:db8::1", "2001:db8::2"
    feed(r, [segment(a, z, 7, 443, MOD - 3, flags=SYN)])
    feed(r, [segment(a, z, 7, 443, MOD - 2, b"ab"), segment(a, z, 7, 443, 0, b"cd")])
    assert got.data[(a, 7)] == b"abcd"
    assert next(iter(r.streams.values())).next_seq == 2


def test_mid_stream_pickup_or_require_syn() -> None:
    got = Collector()
    r = Reassembler(got.on_data)
    feed(r, [segment(C, S, 1, 80, 500, b"late"), segment(C, S, 1, 80, 504, b"r")])
    assert got.data[(C, 1)] == b"later"
    strict = Reassembler(got.on_data, require_syn=True)
    feed(strict, [segment(C, S, 2, 80, 500, b"late"), segment(C, S, 2, 80, 499, b"x")])
    assert (C, 2) not in got.data and strict.stats["no_syn"] == 2


def test_out_of_order_buffer_is_bounded() -> None:
    got = Collector()
    r = Reassembler(got.on_data, max_buffer=10)
    feed(r, [segment(C, S, 1, 80, 0, flags=SYN)])
    feed(r, [segment(C, S, 1, 80, 11, b"x" * 8), segment(C, S, 1, 80, 21, b"y" * 8)])
    assert r.stats["out_of_order"] == 1 and r.stats["buffer_overflow"] == 1
    feed(r, [segment(C, S, 1, 80, 1, b"0123456789")])
    assert got.data[(C, 1)] == b"0123456789" + b"x" * 8  # stalls at the dropped segment


def test_rst_closes_and_later_data_is_ignored() -> None:
    got = Collector()
    r = Reassembler(got.on_data, got.on_close)
    feed(r, [segment(C, S, 1, 80, 0, flags=SYN), segment(C, S, 1, 80, 1, b"ab")])
    feed(r, [segment(C, S, 1, 80, 3, flags=RST), segment(C, S, 1, 80, 3, b"cd")])
    assert got.data[(C, 1)] == b"ab" and got.closed[(C, 1)] == "rst"
    feed(r, [segment(C, S, 1, 80, 3, b"ef")])  # still closed
    assert got.data[(C, 1)] == b"ab"
    feed(r, [segment(C, S, 1, 80, 7000, flags=SYN), segment(C, S, 1, 80, 7001, b"new")])
    assert got.data[(C, 1)] == b"abnew"  # a fresh SYN starts a new stream


def test_idle_streams_time_out() -> None:
    got = Collector()
    r = Reassembler(got.on_data, got.on_close, timeout=30.0)
    feed(r, [segment(C, S, 1, 80, 0, flags=SYN)], now=0.0)
    feed(r, [segment(C, S, 2, 80, 0, flags=SYN)], now=20.0)
    assert r.expire(35.0) == 1
    assert got.closed == {(C, 1): "timeout"} and len(r.streams) == 1
    r.close_all()
    assert got.closed[(C, 2)] == "shutdown" and not r.streams


def test_stream_limit() -> None:
    r = Reassembler(lambda s, d: None, max_streams=2)
    feed(r, [segment(C, S, p, 80, 0, flags=SYN) for p in (1, 2, 3)])
    assert len(r.streams) == 2 and r.stats["streams_refused"] == 1


def test_reassemble_operator_in_a_graph_passes_packets_on() -> None:
    got = Collector()
    g = Graph("ids", errors="raise")
    g.source("in").parse().reassemble(
        got.on_data, name="streams", on_close=got.on_close
    ).deparse().to("out")
    g.sink("out")
    frames = [
        segment(C, S, 1, 80, 0, flags=SYN),
        segment(C, S, 1, 80, 1, b"hello "),
        B.udp_frame(C, S, 5, 53, b"dns"),
        segment(C, S, 1, 80, 7, b"world", flags=FIN | ACK | PSH),
    ]
    out = g.run_batch({"in": PacketBatch.from_bytes(frames)}, now=0.0)["out"]
    assert out.to_list() == frames
    assert got.data[(C, 1)] == b"hello world" and got.closed[(C, 1)] == "fin"
    row = next(r for r in g.counters() if r["operator"] == "streams")
    assert row["extra"]["bytes_delivered"] == 11 and row["extra"]["streams"] == 1
    with pytest.raises(ValueError, match="options go to the Reassembler"):
        Reassemble(Reassembler(got.on_data), max_buffer=5)
