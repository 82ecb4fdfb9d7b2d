"""TOF data path: tunnel learning, divert to edge apps, re-encapsulation, purge, malformed input.

Traffic is generated as GTP-U captures (pcap files), run through `tof_graph`, and the
outputs are written back to pcap and read with our parser and with the real tshark.
"""

from __future__ import annotations

import ipaddress
import random
import threading
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nfaas.nf import build as B
from nfaas.nf.batch import PacketBatch
from nfaas.nf.graph import Graph
from nfaas.nf.headers import Headers, parse, parse_inner
from nfaas.nf.pcap import read_capture_all, write_pcap
from nfaas.vnfs.tof import (
    Service,
    ServiceApi,
    ServiceRegistry,
    Tof,
    TofConfig,
    tof_graph,
)
from tshark import requires_tshark, tshark_fields

ENB1, ENB2, SGW = "198.18.1.1", "198.18.1.2", "198.18.2.1"
ENB_MAC, SGW_MAC = "02:00:00:00:01:01", "02:00:00:00:02:01"
SVC, APP = "198.19.50.1", "198.18.200.10"
SVC2, APP2 = "198.19.50.2", "198.18.200.20"
INTERNET, PINGER = "198.19.7.7", "198.19.99.1"
UES = [f"198.18.100.{i}" for i in range(1, 9)]


def ip(addr: str) -> int:
    return int(ipaddress.IPv4Address(addr))


def up_frame(
    ue: str,
    dst: str,
    teid: int,
    *,
    enb: str = ENB1,
    payload: bytes = b"up",
    tcp: bool = False,
    **gtp: object,
) -> bytes:
    """UE → dst inside an uplink G-PDU (eNodeB → SGW)."""
    seg = (
        B.tcp(40000, 80, payload, src=ue, dst=dst, seq=7, flags=B.TCP_ACK)
        if tcp
        else B.udp(40000, 80, payload, src=ue, dst=dst)
    )
    inner = B.ipv4(ue, dst, 6 if tcp else 17, seg, ident=0x1234)
    eth = {"src": ENB_MAC, "dst": SGW_MAC}
    return B.gtpu_frame(enb, SGW, teid, inner, eth=eth, **gtp)  # type: ignore[arg-type]


def down_frame(ue: str, src: str, teid: int, *, enb: str = ENB1, **gtp: object) -> bytes:
    """src → UE inside a downlink G-PDU (SGW → eNodeB)."""
    inner = B.ipv4(src, ue, 17, B.udp(80, 40000, b"down", src=src, dst=ue))
    eth = {"src": SGW_MAC, "dst": ENB_MAC}
    return B.gtpu_frame(SGW, enb, teid, inner, eth=eth, **gtp)  # type: ignore[arg-type]


def reply_frame(ue: str, app: str = APP, payload: bytes = b"reply", tcp: bool = False) -> bytes:
    """An edge application's reply to a UE (plain Ethernet / IPv4)."""
    if tcp:
        return B.tcp_frame(app, ue, 80, 40000, payload, seq=9, flags=B.TCP_ACK)
    return B.udp_frame(app, ue, 80, 40000, payload)


def batch(frames: list[bytes], t: float = 0.0) -> PacketBatch:
    return PacketBatch.from_bytes(frames, timestamps_ns=int(t * 1e9))


def through_captures(
    g: Graph, tmp_path: Path, now: float, **ports: list[bytes]
) -> dict[str, PacketBatch]:
    """Each port's frames written to a capture and read back, then one batch per port into
    the graph at `now`: its outputs by port."""
    inputs = {}
    for port, frames in ports.items():
        path = tmp_path / f"{port}-in.pcap"
        write_pcap(path, batch(frames))
        inputs[port] = read_capture_all(path)
    return g.run_batch(inputs, now)


def make(
    services: list[Service] | None = None, **config: object
) -> tuple[Tof, Graph, ServiceRegistry]:
    registry = ServiceRegistry(
        services if services is not None else [Service.of("cache", SVC, APP)]
    )
    tof = Tof(registry, TofConfig(**config))  # type: ignore[arg-type]
    return tof, tof_graph(tof, errors="raise"), registry


def drops(g: Graph, operator: str) -> dict[str, int]:
    return dict(g.operator(operator).counters.drops)


def tunnels(tof: Tof, direction: str) -> dict[str, tuple[int, str, str]]:
    return {t.ue: (t.teid, t.src, t.dst) for t in tof.tunnels() if t.direction == direction}


# -- learning -------------------------------------------------------------------------------


def test_both_directions_are_learned_from_a_capture(tmp_path: Path) -> None:
    tof, g, _ = make()
    up = [
        up_frame(ue, INTERNET, 0x100 + k, enb=ENB1 if k < 4 else ENB2) for k, ue in enumerate(UES)
    ]
    down = [
        down_frame(ue, INTERNET, 0x900 + k, enb=ENB1 if k < 4 else ENB2) for k, ue in enumerate(UES)
    ]
    out = through_captures(g, tmp_path, 1.0, ran=up, core=down)
    assert out["core"].to_list() == up and out["ran"].to_list() == down
    assert len(out["edge"]) == 0
    enb = [ENB1] * 4 + [ENB2] * 4
    assert tunnels(tof, "uplink") == {ue: (0x100 + k, enb[k], SGW) for k, ue in enumerate(UES)}
    assert tunnels(tof, "downlink") == {ue: (0x900 + k, SGW, enb[k]) for k, ue in enumerate(UES)}
    assert tof.stats.uplink_learned == tof.stats.downlink_learned == len(UES)


def test_a_new_teid_for_a_known_ue_replaces_the_old_one() -> None:
    tof, g, _ = make()
    g.run_batch({"ran": batch([up_frame(UES[0], INTERNET, 1), up_frame(UES[0], INTERNET, 2)])}, 1.0)
    assert tunnels(tof, "uplink")[UES[0]][0] == 2  # last packet of the batch wins
    g.run_batch({"ran": batch([up_frame(UES[0], INTERNET, 3)])}, 2.0)
    assert tunnels(tof, "uplink")[UES[0]][0] == 3
    assert tof.stats.uplink_learned == 1 and tof.stats.uplink_changed == 1


def test_uplink_from_another_enodeb_forgets_the_old_downlink_tunnel() -> None:
    tof, g, _ = make()
    g.run_batch(
        {
            "ran": batch([up_frame(UES[0], INTERNET, 1)]),
            "core": batch([down_frame(UES[0], INTERNET, 9)]),
        },
        1.0,
    )
    assert UES[0] in tunnels(tof, "downlink")
    g.run_batch({"ran": batch([up_frame(UES[0], INTERNET, 1, enb=ENB2)])}, 2.0)  # handover
    assert UES[0] not in tunnels(tof, "downlink")
    assert tof.stats.downlink_invalidated == 1
    out = g.run_batch({"edge": batch([reply_frame(UES[0])])}, 2.1)
    assert len(out["ran"]) == 0 and drops(g, "tof_edge") == {"no_downlink_tunnel": 1}


def test_a_full_tunnel_table_learns_no_more_but_still_forwards() -> None:
    tof, g, _ = make(max_tunnels=2)
    frames = [up_frame(ue, INTERNET, k + 1) for k, ue in enumerate(UES[:3])]
    out = g.run_batch({"ran": batch(frames)}, 1.0)
    assert out["core"].to_list() == frames
    assert len(tunnels(tof, "uplink")) == 2 and tof.stats.not_learned_table_full == 1


# -- divert to the edge -------------------------------------------------------------------------


def test_service_traffic_is_decapsulated_with_the_application_address() -> None:
    tof, g, _ = make()
    frames = [
        up_frame(UES[0], SVC, 0x11, payload=b"GET /a"),
        up_frame(UES[1], INTERNET, 0x12),
        up_frame(UES[2], SVC, 0x13, payload=b"x" * 300, tcp=True),
    ]
    out = g.run_batch({"ran": batch(frames, 5.0)}, 5.0)
    assert out["core"].to_list() == [frames[1]]
    edge = out["edge"]
    assert len(edge) == 2 and (edge.timestamps_ns == int(5e9)).all()
    h = parse(edge)
    assert h.valid.all()
    assert h.ipv4_dst.tolist() == [ip(APP)] * 2
    assert h.ipv4_src.tolist() == [ip(UES[0]), ip(UES[2])]
    assert B.ipv4_checksums_ok(edge, h).all() and B.l4_checksums_ok(edge, h).all()
    # Apart from the destination and the checksums, the inner packet is untouched.
    first = edge.packet(0)
    expect = B.ipv4(UES[0], APP, 17, B.udp(40000, 80, b"GET /a", src=UES[0], dst=APP), ident=0x1234)
    assert first[14:] == expect
    assert first[:6] == B.mac_bytes(TofConfig().edge_mac) and first[6:12] == B.mac_bytes(
        TofConfig().tof_mac
    )
    assert tof.stats.decapsulated == 2


@requires_tshark
def test_tshark_agrees_on_decapsulated_and_reencapsulated_packets(tmp_path: Path) -> None:
    _tof, g, _ = make()
    ups = [
        up_frame(ue, SVC, 0x500 + k, tcp=k % 2 == 1, payload=bytes(k * 10))
        for k, ue in enumerate(UES)
    ]
    downs = [down_frame(ue, INTERNET, 0x700 + k) for k, ue in enumerate(UES)]
    out = through_captures(g, tmp_path, 1.0, ran=ups, core=downs)
    write_pcap(tmp_path / "edge-out.pcap", out["edge"])
    fields = [
        "ip.src",
        "ip.dst",
        "ip.checksum.status",
        "udp.checksum.status",
        "tcp.checksum.status",
    ]
    rows = tshark_fields(tmp_path / "edge-out.pcap", fields)
    assert len(rows) == len(UES)
    for k, row in enumerate(rows):
        assert row["ip.src"] == [UES[k]] and row["ip.dst"] == [APP]
        assert row["ip.checksum.status"] == ["1"]
        assert row["tcp.checksum.status" if k % 2 else "udp.checksum.status"] == ["1"]

    replies = [reply_frame(ue, tcp=k % 2 == 1, payload=bytes(k)) for k, ue in enumerate(UES)]
    out = through_captures(g, tmp_path, 1.5, edge=replies)
    write_pcap(tmp_path / "ran-out.pcap", out["ran"])
    fields = [
        "gtp.teid",
        "ip.src",
        "ip.dst",
        "ip.checksum.status",
        "udp.checksum.status",
        "tcp.checksum.status",
        "eth.dst",
    ]
    rows = tshark_fields(tmp_path / "ran-out.pcap", fields)
    assert len(rows) == len(UES)
    for k, row in enumerate(rows):
        assert [int(t, 16) for t in row["gtp.teid"]] == [0x700 + k]
        assert row["ip.src"] == [SGW, SVC] and row["ip.dst"] == [ENB1, UES[k]]  # outer, inner
        assert row["ip.checksum.status"] == ["1", "1"]
        assert row["eth.dst"] == [ENB_MAC]
        if k % 2:
            assert row["tcp.checksum.status"] == ["1"]
        else:  # the outer UDP checksum is 0 (none), the inner one verifies
            assert row["udp.checksum.status"][-1] == "1"


def test_replies_are_tunnelled_into_the_learned_downlink_teid() -> None:
    tof, g, _ = make()
    g.run_batch(
        {
            "ran": batch([up_frame(UES[0], SVC, 0x21), up_frame(UES[1], SVC, 0x22, enb=ENB2)]),
            "core": batch(
                [down_frame(UES[0], INTERNET, 0xA1), down_frame(UES[1], INTERNET, 0xA2, enb=ENB2)]
            ),
        },
        1.0,
    )
    replies = [reply_frame(UES[1], payload=b"one"), reply_frame(UES[0], payload=b"two", tcp=True)]
    out = g.run_batch({"edge": batch(replies, 1.2)}, 1.2)["ran"]
    h = parse(out)
    inner = parse_inner(out, h)
    assert h.valid.all() and inner.valid.all()
    assert h.gtp_teid.tolist() == [0xA2, 0xA1]
    assert h.ipv4_src.tolist() == [ip(SGW)] * 2
    assert h.ipv4_dst.tolist() == [ip(ENB2), ip(ENB1)]
    assert inner.ipv4_src.tolist() == [ip(SVC)] * 2  # rewritten back from the application
    assert inner.ipv4_dst.tolist() == [ip(UES[1]), ip(UES[0])]
    assert B.ipv4_checksums_ok(out, h).all() and B.ipv4_checksums_ok(out, inner).all()
    assert B.l4_checksums_ok(out, inner).all()
    # The outer frame reuses the learned downlink frame's MACs.
    assert out.packet(0)[:12] == B.mac_bytes(ENB_MAC) + B.mac_bytes(SGW_MAC)
    # The payload made it through unchanged.
    p = out.packet(0)
    start = int(inner.payload_offset[0])
    assert p[start : start + int(inner.payload_length[0])] == b"one"
    assert tof.stats.encapsulated == 2


def test_vlan_tags_and_pdu_session_qfi_of_the_learned_tunnel_are_reused() -> None:
    _tof, g, _ = make()
    qfi = B.pdu_session_container(9)
    g.run_batch(
        {"core": batch([down_frame(UES[0], INTERNET, 0xB1, vlans=[42], extensions=[qfi])])}, 1.0
    )
    out = g.run_batch({"edge": batch([reply_frame(UES[0])])}, 1.1)["ran"]
    h = parse(out)
    assert h.valid.all() and h.vlan_id.tolist() == [42]
    assert h.has_pdu_session.tolist() == [True] and h.gtp_qfi.tolist() == [9]
    assert h.gtp_pdu_type.tolist() == [0]  # downlink
    assert parse_inner(out, h).ipv4_src.tolist() == [ip(SVC)]


def test_replies_for_ues_without_a_downlink_tunnel_are_dropped_and_counted() -> None:
    _tof, g, _ = make()
    out = g.run_batch(
        {
            "edge": batch(
                [
                    reply_frame(UES[0]),  # no tunnel learned for this UE
                    reply_frame(UES[0], app="198.18.200.99"),  # not a registered application
                    B.ethernet(bytes(28), ethertype=0x0806),  # ARP
                    B.udp_frame("2001:2::1", "2001:2::2"),  # IPv6
                ]
            )
        },
        1.0,
    )
    assert len(out["ran"]) == 0
    assert drops(g, "tof_edge") == {"no_downlink_tunnel": 1, "not_from_service": 1, "not_ipv4": 2}


# -- forwarding -------------------------------------------------------------------------------


def other_traffic(rng: random.Random, n: int, downlink: bool) -> list[bytes]:
    """Traffic a TOF must pass unchanged: GTP-U to non-services, GTP-U signalling, non-GTP,
    IPv6 outer and inner, ARP, VLANs."""
    frames = []
    for i in range(n):
        ue = rng.choice(UES)
        kind = i % 7
        teid = rng.randrange(1, 1 << 32)
        if kind == 0:
            f = down_frame(ue, INTERNET, teid) if downlink else up_frame(ue, INTERNET, teid)
        elif kind == 1:  # echo request: GTP-U, but not a G-PDU
            f = B.udp_frame(
                ENB1, SGW, 2152, 2152, B.gtpu(0, b"", msg_type=1, seq=rng.randrange(1 << 16))
            )
        elif kind == 2:
            f = B.tcp_frame(ENB1, SGW, 179, 40000, b"bgp")
        elif kind == 3:
            inner = B.ipv6(
                "2001:2::1", "2001:2::2", 17, B.udp(1, 2, b"v6", src="2001:2::1", dst="2001:2::2")
            )
            f = B.gtpu_frame(ENB1, SGW, teid, inner)  # IPv6 UE traffic: not offloaded
        elif kind == 4:
            f = B.ethernet(bytes(28), ethertype=0x0806)
        elif kind == 5:
            f = B.gtpu_frame(
                "2001:2::10", "2001:2::20", teid, B.ipv4(ue, SVC, 17, B.udp(1, 2, src=ue, dst=SVC))
            )
        else:
            f = up_frame(ue, INTERNET, teid, vlans=[7], seq=3)
        frames.append(f)
    return frames


def test_non_service_traffic_is_forwarded_byte_identical(tmp_path: Path) -> None:
    _tof, g, _ = make()
    rng = random.Random(4)
    up, down = other_traffic(rng, 200, False), other_traffic(rng, 200, True)
    out = through_captures(g, tmp_path, 1.0, ran=up, core=down)
    write_pcap(tmp_path / "core-out.pcap", out["core"])
    write_pcap(tmp_path / "ran-out.pcap", out["ran"])
    assert read_capture_all(tmp_path / "core-out.pcap").to_list() == up
    assert read_capture_all(tmp_path / "ran-out.pcap").to_list() == down
    assert len(out["edge"]) == 0
    assert all(not row["drops"] for row in g.counters())


# -- purge --------------------------------------------------------------------------------------


def test_idle_tunnels_are_purged_by_the_timer() -> None:
    tof, g, _ = make(tunnel_timeout=30.0, sweep_every=5.0)
    g.run_batch(
        {
            "ran": batch([up_frame(UES[0], SVC, 1)]),
            "core": batch([down_frame(UES[0], INTERNET, 2), down_frame(UES[1], INTERNET, 3)]),
        },
        100.0,
    )
    # UE 0 keeps its downlink tunnel busy with edge replies; UE 1 goes quiet.
    for t in (110.0, 120.0, 129.0):
        out = g.run_batch({"edge": batch([reply_frame(UES[0])])}, t)
        assert len(out["ran"]) == 1
    g.tick(129.9)  # the next sweep is due at 130 (every 5 s on the timers' grid)
    assert set(tunnels(tof, "downlink")) == {UES[0], UES[1]}
    g.tick(130.5)  # the sweep runs with now = 130.5: idle for 30.5 s > 30 s
    assert set(tunnels(tof, "downlink")) == {UES[0]}
    assert tunnels(tof, "uplink") == {}
    assert tof.stats.downlink_purged == 1 and tof.stats.uplink_purged == 1
    g.tick(170.0)
    assert tof.tunnels() == []
    out = g.run_batch({"edge": batch([reply_frame(UES[0])])}, 171.0)
    assert len(out["ran"]) == 0 and drops(g, "tof_edge") == {"no_downlink_tunnel": 1}
    assert g.operator("tof_edge").counters.extra["downlink_purged"] == 2


def test_an_idle_tunnel_is_unusable_before_the_sweep_removes_it() -> None:
    tof, g, _ = make(tunnel_timeout=10.0, sweep_every=1000.0)
    g.run_batch({"core": batch([down_frame(UES[0], INTERNET, 2)])}, 0.0)
    assert len(g.run_batch({"edge": batch([reply_frame(UES[0])])}, 10.0)["ran"]) == 1  # 10 s: alive
    assert len(g.run_batch({"edge": batch([reply_frame(UES[0])])}, 20.5)["ran"]) == 0
    assert len(tof.downlink_tunnels) == 1  # still held until swept


# -- services changing under traffic ------------------------------------------------------------


def test_service_changes_between_batches_change_routing() -> None:
    _tof, g, registry = make(services=[])
    api = ServiceApi(registry)
    frames = [up_frame(UES[0], SVC, 1), up_frame(UES[0], SVC2, 1)]

    def where(t: float) -> tuple[int, list[int]]:
        out = g.run_batch({"ran": batch(frames)}, t)
        return len(out["core"]), parse(out["edge"]).ipv4_dst.tolist()

    assert where(1.0) == (2, [])
    body = b'{"name": "cache", "serviceIP": "%s", "applicationIP": "%s"}'
    assert api.handle("POST", "/service", body % (SVC.encode(), APP.encode()))[0] == 200
    assert where(2.0) == (1, [ip(APP)])
    assert api.handle("PUT", "/service/cache", body % (SVC2.encode(), APP2.encode()))[0] == 200
    assert where(3.0) == (1, [ip(APP2)])
    # Replies from the old application address are no longer a service's.
    g.run_batch({"core": batch([down_frame(UES[0], INTERNET, 5)])}, 3.0)
    out = g.run_batch({"edge": batch([reply_frame(UES[0], APP), reply_frame(UES[0], APP2)])}, 3.1)
    assert parse_inner(out["ran"], parse(out["ran"])).ipv4_src.tolist() == [ip(SVC2)]
    assert api.handle("DELETE", f"/service/{SVC2}")[0] == 200  # by service IP
    assert where(4.0) == (2, [])


def test_api_and_data_path_in_different_threads() -> None:
    _tof, g, registry = make(services=[])
    api = ServiceApi(registry)
    stop = threading.Event()
    errors: list[BaseException] = []

    def churn() -> None:
        body = b'{"name": "s", "serviceIP": "%s", "applicationIP": "%s"}' % (
            SVC.encode(),
            APP.encode(),
        )
        try:
            while not stop.is_set():
                assert api.handle("POST", "/service", body)[0] == 200
                assert api.handle("DELETE", "/service/s")[0] == 200
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    worker = threading.Thread(target=churn)
    worker.start()
    try:
        frames = [up_frame(UES[k % 8], SVC, k + 1) for k in range(64)]
        for t in range(200):
            out = g.run_batch({"ran": batch(frames)}, float(t))
            # A batch sees one registry version: all of it diverted or none.
            assert (len(out["edge"]), len(out["core"])) in ((64, 0), (0, 64))
    finally:
        stop.set()
        worker.join()
    assert not errors


# -- the Pinger ---------------------------------------------------------------------------------


def test_pinger_opens_the_downlink_tunnel_of_a_ue_that_only_uses_the_edge() -> None:
    tof, g, _ = make(pinger_target=PINGER, pinger_interval=2.0)
    up = up_frame(UES[0], SVC, 0x33, extensions=[B.pdu_session_container(5, uplink=True)])
    out = g.run_batch({"ran": batch([up, up])}, 10.0)
    assert len(out["edge"]) == 2
    probes = out["core"]
    assert len(probes) == 1  # one per UE, not per packet
    h = parse(probes)
    inner = parse_inner(probes, h)
    assert h.valid.all() and inner.valid.all()
    assert (
        h.gtp_teid.tolist() == [0x33]
        and h.ipv4_src.tolist() == [ip(ENB1)]
        and h.ipv4_dst.tolist() == [ip(SGW)]
    )
    assert h.gtp_qfi.tolist() == [5] and h.gtp_pdu_type.tolist() == [1]  # uplink PDU type
    assert probes.packet(0)[:12] == B.mac_bytes(SGW_MAC) + B.mac_bytes(ENB_MAC)
    assert inner.ipv4_src.tolist() == [ip(UES[0])] and inner.ipv4_dst.tolist() == [ip(PINGER)]
    assert inner.icmp_type.tolist() == [8] and inner.icmp_id.tolist() == [TofConfig().pinger_ident]
    assert B.l4_checksums_ok(probes, inner).all() and B.ipv4_checksums_ok(probes, h).all()
    # Not again within the interval; again after it while still no downlink tunnel.
    assert len(g.run_batch({"ran": batch([up])}, 11.0)["core"]) == 0
    assert len(g.run_batch({"ran": batch([up])}, 12.0)["core"]) == 1
    # The SGW answers in the downlink tunnel: learned, and the echo reply is consumed.
    echo = B.ipv4(
        PINGER, UES[0], 1, B.icmp_echo(TofConfig().pinger_ident, 1, b"nfaas-tof", reply=True)
    )
    answer = B.gtpu_frame(SGW, ENB1, 0x44, echo, eth={"src": SGW_MAC, "dst": ENB_MAC})
    out = g.run_batch({"core": batch([answer, down_frame(UES[1], INTERNET, 0x45)])}, 12.1)
    assert out["ran"].to_list() == [down_frame(UES[1], INTERNET, 0x45)]
    assert drops(g, "tof_downlink") == {"pinger_reply": 1}
    assert tunnels(tof, "downlink")[UES[0]][0] == 0x44
    # From now on no probes, and the application's replies reach the UE.
    assert len(g.run_batch({"ran": batch([up])}, 20.0)["core"]) == 0
    assert len(g.run_batch({"edge": batch([reply_frame(UES[0])])}, 20.1)["ran"]) == 1
    assert tof.stats.probes_sent == 2 and tof.stats.probe_replies == 1


# -- malformed input ----------------------------------------------------------------------------


def test_malformed_packets_are_counted_and_dropped() -> None:
    _tof, g, _ = make()
    good = up_frame(UES[0], SVC, 1)
    inner_short = B.gtpu_frame(ENB1, SGW, 5, B.ipv4(UES[0], SVC, 17, b"")[:12])  # inner IP cut
    bad_inner_version = B.gtpu_frame(ENB1, SGW, 5, b"\x10" + bytes(27))
    frames = [good[:30], good[:50], inner_short, bad_inner_version, good]
    out = g.run_batch({"ran": batch(frames)}, 1.0)
    assert len(out["edge"]) == 1 and len(out["core"]) == 0
    assert sum(drops(g, "ran_parse").values()) == 2
    assert drops(g, "tof_uplink") == {"inner_truncated_ip": 1, "inner_bad_ip_version": 1}
    out = g.run_batch({"core": batch([down_frame(UES[0], INTERNET, 3)[:-3], inner_short])}, 1.0)
    assert len(out["ran"]) == 0


def mutate(frame: bytes, data: st.DataObject) -> bytes:
    raw = bytearray(frame)
    for _ in range(data.draw(st.integers(0, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    return bytes(raw[: data.draw(st.integers(0, len(raw)))])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_packet_mixes_never_raise_and_every_packet_is_accounted_for(
    data: st.DataObject,
) -> None:
    tof, g, registry = make(pinger_target=PINGER, tunnel_timeout=5.0, sweep_every=1.0)
    registry.create(Service.of("other", SVC2, APP2))
    templates = [
        up_frame(UES[0], SVC, 7),
        up_frame(UES[1], SVC2, 8, tcp=True, vlans=[3]),
        up_frame(UES[2], INTERNET, 9, extensions=[B.pdu_session_container(3, uplink=True)]),
        down_frame(UES[0], INTERNET, 10),
        down_frame(UES[1], INTERNET, 11, vlans=[3, 4]),
        reply_frame(UES[0]),
        reply_frame(UES[1], APP2, tcp=True),
    ]

    def frame() -> bytes:
        kind = data.draw(st.sampled_from(["random", "template", "mutated"]))
        if kind == "random":
            return data.draw(st.binary(max_size=120))
        template = data.draw(st.sampled_from(templates))
        return template if kind == "template" else mutate(template, data)

    for step in range(data.draw(st.integers(1, 4))):
        ports = {
            port: [frame() for _ in range(data.draw(st.integers(0, 12)))]
            for port in ("ran", "core", "edge")
        }
        now = float(step * data.draw(st.sampled_from([0.5, 3.0, 7.0])))
        before = tof.stats.probes_sent
        out = g.run_batch({p: batch(f) for p, f in ports.items()}, now)
        probes = tof.stats.probes_sent - before
        dropped = {row["operator"]: row["dropped"] for row in g.counters()}
        g.reset_counters()
        up_drops = dropped["ran_parse"] + dropped["tof_uplink"]
        assert len(out["core"]) + len(out["edge"]) - probes + up_drops == len(ports["ran"])
        # "ran" receives from the core and from the edge.
        down_drops = (
            dropped["core_parse"]
            + dropped["tof_downlink"]
            + dropped["edge_parse"]
            + dropped["tof_edge"]
        )
        assert len(out["ran"]) + down_drops == len(ports["core"]) + len(ports["edge"])
        for port in ("ran", "core", "edge"):
            h: Headers = parse(out[port])
            assert h.valid.all()  # whatever leaves was well-formed when it came in, or built by us
