"""Graphs: the fluent API, validation before running, running batches, counters, timers."""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nfaas.nf import build as B
from nfaas.nf.batch import PacketBatch
from nfaas.nf.graph import Graph, GraphError, Pipe
from nfaas.nf.headers import Headers, parse
from nfaas.nf.operators import Compose, Filter, Map, Parse
from nfaas.nf.pcap import read_capture_all, write_pcap
from nfaas.nf.state import ConnTrack, CtState, Timeouts

A, Z, NAT = "198.18.0.1", "198.18.0.2", "198.18.100.1"


def ip(addr: str) -> int:
    return int(ipaddress.ip_address(addr))


def is_ip(b: PacketBatch, h: Headers) -> np.ndarray:
    return h.ip_version != 0


def is_tcp(b: PacketBatch, h: Headers) -> np.ndarray:
    return h.protocol == 6


def snat(b: PacketBatch, h: Headers) -> None:
    B.set_ipv4_src(b, h, ip(NAT))


def traffic() -> list[bytes]:
    return [
        B.tcp_frame(A, Z, 1000, 80, b"GET /"),
        B.udp_frame(A, Z, 5000, 53, b"q"),
        B.ethernet(b"\x00" * 28, ethertype=0x0806),  # ARP: not IP
        B.tcp_frame(A, Z, 1001, 80, b"x")[:30],  # truncated
        B.icmp_echo_frame(A, Z),
    ]


def example_graph(**kw: Any) -> Graph:
    g = Graph("fw", **kw)
    tcp, other = g.source("in").parse().filter(is_ip).branch(is_tcp, ("tcp", "other"))
    tcp.map(snat).to("join")
    other.to("join")
    g.merge(name="join").deparse().to("out")
    g.sink("out")
    return g


def test_fluent_example_runs_and_counts(tmp_path: Path) -> None:
    g = example_graph(errors="raise")
    src = tmp_path / "in.pcap"
    write_pcap(src, PacketBatch.from_bytes(traffic()))
    out = g.run_batch({"in": read_capture_all(src)}, now=1.0)
    assert set(out) == {"out"}
    dst = tmp_path / "out.pcap"
    write_pcap(dst, out["out"])
    result = read_capture_all(dst)
    h = parse(result)
    assert len(result) == 3 and h.valid.all()
    # TCP was source-NATed, UDP and ICMP were not; checksums still verify.
    assert h.ipv4_src.tolist() == [ip(NAT), ip(A), ip(A)]
    assert B.l4_checksums_ok(result, h).all() and B.ipv4_checksums_ok(result, h).all()
    rows = {r["operator"]: r for r in g.counters()}
    assert list(rows) == ["in", "parse", "is_ip", "is_tcp", "snat", "join", "deparse", "out"]
    assert rows["parse"]["drops"] == {"truncated_ip": 1}
    assert rows["is_ip"]["drops"] == {"filtered": 1}
    assert rows["snat"]["packets_in"] == 1
    assert rows["join"]["packets_in"] == 3
    assert rows["out"]["packets_in"] == 3
    assert all(r["graph"] == "fw" for r in rows.values())
    assert "branch 'is_tcp'[tcp] -> map 'snat'" in g.describe()


def test_every_sink_is_in_the_result_even_when_empty() -> None:
    g = Graph("two")
    a, b = g.source("in").parse().branch(is_tcp, ("a", "b"))
    a.deparse().to("tcp")
    b.deparse().to("rest")
    g.sink("tcp")
    g.sink("rest")
    out = g.run_batch({"in": PacketBatch.from_bytes([B.udp_frame(A, Z)])}, 0.0)
    assert len(out["tcp"]) == 0 and len(out["rest"]) == 1
    out = g.run_batch({}, 0.0)
    assert len(out["tcp"]) == len(out["rest"]) == 0


def test_several_sources_feed_one_operator() -> None:
    g = Graph("join")
    g.source("a").to("parse")
    g.source("b").to("parse")
    g.source("c").parse(name="parse").emit("out")
    g.sink("out")
    one = PacketBatch.from_bytes([B.udp_frame(A, Z, 1, 1)])
    two = PacketBatch.from_bytes([B.udp_frame(A, Z, 2, 2), B.udp_frame(A, Z, 3, 3)])
    out = g.run_batch({"a": one, "c": two}, 0.0)["out"]
    assert parse(out).sport.tolist() == [1, 2, 3]


def problems_of(g: Graph) -> list[str]:
    with pytest.raises(GraphError) as info:
        g.validate()
    assert info.value.graph == g.name
    return info.value.problems


def test_unconnected_output_is_named() -> None:
    g = Graph("g")
    g.source("in").parse().branch(is_tcp, ("tcp", "other"))[0].deparse().to("out")
    g.sink("out")
    [problem] = problems_of(g)
    assert "output 'other' of branch 'is_tcp' is not connected" in problem


def test_output_connected_twice_is_refused() -> None:
    g = Graph("g")
    p = g.source("in").parse()
    p.deparse().to("out")
    p.filter(is_ip).deparse().to("out")
    g.sink("out")
    [problem] = problems_of(g)
    assert "output 'out' of parse 'parse' is connected 2 times" in problem
    assert "deparse 'deparse'" in problem and "filter 'is_ip'" in problem


def test_unknown_target_and_duplicate_names() -> None:
    g = Graph("g")
    g.source("in").parse(name="p").filter(is_ip, name="p").to("outt")
    g.sink("out")
    problems = problems_of(g)
    assert any("2 operators are named 'p'" in p for p in problems)
    assert any("connected to 'outt', which is neither a sink port nor an operator" in p
               for p in problems)  # fmt: skip
    assert any("sink 'out' has no input" in p for p in problems)


def test_a_port_can_be_both_source_and_sink() -> None:
    """A bump in the wire: what enters on "a" leaves on "b" and the other way round."""
    g = Graph("wire")
    g.source("a").emit("b")
    g.source("b").emit("a")
    g.sink("a")
    g.sink("b")
    one, two = B.udp_frame(A, Z, 1, 2, b"ab"), B.udp_frame(Z, A, 2, 1, b"ba")
    out = g.run_batch({"a": PacketBatch.from_bytes([one]), "b": PacketBatch.from_bytes([two])}, 0)
    assert out["b"].to_list() == [one]
    assert out["a"].to_list() == [two]
    kinds = {(row["operator"], row["kind"]) for row in g.counters()}
    assert {("a", "source"), ("a", "sink"), ("b", "source"), ("b", "sink")} <= kinds


def test_connecting_to_an_input_port_is_an_error() -> None:
    g = Graph("g")
    g.source("in").emit("in")
    problems = problems_of(g)
    assert any("connected to 'in', which is an input port" in p for p in problems)


def test_cycle_is_detected() -> None:
    g = Graph("loop")
    m = g.merge(g.source("in").parse(), name="m")
    again, done = m.branch(is_tcp, ("again", "done"))
    again.map(snat, name="rewrite").to("m")
    done.deparse().to("out")
    g.sink("out")
    [problem] = problems_of(g)
    assert problem.startswith("the graph has a cycle through")
    assert "merge 'm'" in problem and "map 'rewrite'" in problem


def test_edge_types_are_checked() -> None:
    g = Graph("types")
    g.source("in").filter(is_ip, name="early").parse().to("out")
    g.sink("out")
    [problem] = problems_of(g)
    assert "filter 'early' needs parsed packets but its input carries raw packets" in problem
    assert "add .parse() before it" in problem


def test_mixed_edge_types_into_one_operator_are_refused() -> None:
    g = Graph("mixed")
    a, b = g.source("in").parse().branch(is_tcp, ("a", "b"))
    a.deparse().to("m")
    b.to("m")
    g.merge(name="m").to("out")
    g.sink("out")
    [problem] = problems_of(g)
    assert "merge 'm' receives" in problem and "raw packets from deparse" in problem


def test_run_batch_refuses_an_unknown_port() -> None:
    g = example_graph()
    with pytest.raises(KeyError, match="no source port 'eth0'"):
        g.run_batch({"eth0": PacketBatch.empty()}, 0.0)


def test_operators_get_unique_default_names() -> None:
    g = Graph("names")
    p = g.source("in").parse().filter(lambda b, h: h.valid).filter(lambda b, h: h.valid)
    p.filter(is_ip).filter(is_ip).deparse().to("out")
    g.sink("out")
    g.validate()
    assert [op.name for op in g.operators] == [
        "in", "parse", "filter", "filter2", "is_ip", "is_ip2", "deparse", "out",
    ]  # fmt: skip
    with pytest.raises(ValueError, match="already in graph"):
        op = g.operator("parse")
        g.source("x").then(op)


def test_user_errors_drop_the_batch_and_the_nf_goes_on() -> None:
    calls = [0]

    def flaky(b: PacketBatch, h: Headers) -> np.ndarray:
        calls[0] += 1
        if calls[0] == 1:
            raise RuntimeError("first batch is cursed")
        return h.valid

    g = Graph("robust")
    g.source("in").parse().filter(flaky).deparse().to("out")
    g.sink("out")
    batch = PacketBatch.from_bytes([B.udp_frame(A, Z)] * 3)
    assert len(g.run_batch({"in": batch}, 0.0)["out"]) == 0
    assert len(g.run_batch({"in": batch}, 1.0)["out"]) == 3
    row = next(r for r in g.counters() if r["operator"] == "flaky")
    assert row["errors"] == 1 and row["drops"] == {"error": 3}
    assert row["last_error"] == "RuntimeError: first batch is cursed"

    strict = Graph("strict", errors="raise")
    strict.source("in").parse().filter(lambda b, h: 1 / 0).deparse().to("out")  # type: ignore[arg-type,return-value]
    strict.sink("out")
    with pytest.raises(ZeroDivisionError):
        strict.run_batch({"in": batch}, 0.0)


def test_compose_inside_a_graph_reports_member_counters() -> None:
    router = Compose(Parse(), Filter(is_ip), Map(B.decrement_ttl, name="ttl"), name="router")
    g = Graph("c")
    g.source("in").then(router).deparse().to("out")
    g.sink("out")
    out = g.run_batch({"in": PacketBatch.from_bytes(traffic())}, 0.0)["out"]
    assert (parse(out).ttl == 63).all()
    names = [r["operator"] for r in g.counters()]
    assert names[:5] == ["in", "router", "router/parse", "router/is_ip", "router/ttl"]
    g.reset_counters()
    assert all(r["packets_in"] == 0 for r in g.counters())


def test_fragments_compose_with_apply() -> None:
    def ip_only(p: Pipe) -> Pipe:
        return p.parse().filter(is_ip)

    g = Graph("frag")
    g.source("in").apply(ip_only).deparse().to("out")
    g.sink("out")
    assert len(g.run_batch({"in": PacketBatch.from_bytes(traffic())}, 0.0)["out"]) == 3


def test_conntrack_timers_run_with_the_graph() -> None:
    ct = ConnTrack(Timeouts(udp_unreplied=5.0))
    g = Graph("stateful", errors="raise")
    (
        g.source("in")
        .parse()
        .track(ct)
        .filter(lambda b, h: b.meta["ct_state"] != CtState.INVALID, name="valid")
        .deparse()
        .to("out")
    )
    g.sink("out")
    g.run_batch({"in": PacketBatch.from_bytes([B.udp_frame(A, Z, 1, 2)])}, now=0.0)
    assert len(ct) == 1
    g.tick(9.0)  # the sweep (every 10 s) has not run yet
    assert len(ct) == 1
    g.tick(10.0)
    assert len(ct) == 0
    row = next(r for r in g.counters() if r["kind"] == "conntrack")
    assert row["extra"]["expired"] == 1 and row["extra"]["new"] == 1


def test_timer_errors_are_counted_in_drop_mode() -> None:
    g = example_graph()
    g.timers.once(lambda now: 1 / 0, at=1.0)  # type: ignore[func-returns-value]
    g.run_batch({"in": PacketBatch.from_bytes(traffic())}, now=2.0)
    assert g.timer_errors == 1 and "ZeroDivisionError" in (g.last_timer_error or "")


# -- property: random pipelines conserve packets; dangling outputs are always reported -----------

STEP = st.sampled_from(["filter_tcp", "filter_v4", "map", "branch_keep", "branch_drop"])


def build_random(g: Graph, steps: list[str], dangle: int | None) -> None:
    pipe = g.source("in").parse()
    for i, step in enumerate(steps):
        if step == "filter_tcp":
            pipe = pipe.filter(is_tcp)
        elif step == "filter_v4":
            pipe = pipe.filter(lambda b, h: h.ip_version == 4)
        elif step == "map":
            pipe = pipe.map(lambda b, h: B.decrement_ttl(b, h))
        else:
            keep, side = pipe.branch(lambda b, h: h.sport % 2 == 0, ("even", "odd"))
            if i != dangle:
                if step == "branch_keep":
                    side.deparse().to("out")
                else:
                    side.drop("odd")
            pipe = keep
    pipe.deparse().to("out")
    g.sink("out")


@settings(max_examples=40, deadline=None)
@given(steps=st.lists(STEP, max_size=6), data=st.data())
def test_random_pipelines_conserve_packets(steps: list[str], data: st.DataObject) -> None:
    branches = [i for i, s in enumerate(steps) if s.startswith("branch")]
    dangle = data.draw(st.sampled_from([None, *branches]))
    g = Graph("random", errors="raise")
    build_random(g, steps, dangle)
    if dangle is not None:
        problems = problems_of(g)
        assert any("output 'odd' of branch" in p and "not connected" in p for p in problems)
        return
    sports = data.draw(st.lists(st.integers(1, 2000), min_size=1, max_size=30))
    frames = [
        B.tcp_frame(A, Z, s, 80) if s % 3 else B.udp_frame("2001:db8::1", "2001:db8::2", s, 9)
        for s in sports
    ]
    frames.append(b"\x01\x02")  # malformed: dropped by parse, counted
    out = g.run_batch({"in": PacketBatch.from_bytes(frames)}, 0.0)["out"]
    dropped = sum(r["dropped"] for r in g.counters())
    assert len(out) + dropped == len(frames)
