"""The Maglev load-balancer graph: VIP steering by MAC rewrite, affinity, health, weights."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from nfaas.nf import build as B
from nfaas.nf.batch import PacketBatch
from nfaas.nf.graph import Graph
from nfaas.nf.headers import parse
from nfaas.vnfs.lb import Backend, FlowBalancer, Steering, maglev_graph, parse_vip, steering_of

VIP, VIP6 = "198.18.1.1", "2001:2::80"
CLIENT = "198.19.0.10"
MACS = {
    "web-1": "02:00:00:00:01:01",
    "web-2": "02:00:00:00:01:02",
    "web-3": "02:00:00:00:01:03",
}
LB_MAC = "02:00:00:00:00:fe"


def mac_of(frame: bytes) -> str:
    return ":".join(f"{b:02x}" for b in frame[:6])


def client_flows(n: int, dst: str = VIP, dport: int = 80, start: int = 1024) -> PacketBatch:
    """n TCP packets of n flows (source ports start..start+n-1) from CLIENT to dst:dport."""
    template = np.frombuffer(B.tcp_frame(CLIENT, dst, 1, dport, b"GET", flags=B.TCP_ACK), np.uint8)
    batch = PacketBatch.from_array(np.tile(template, (n, 1)))
    B.set_l4_sport(batch, parse(batch), np.arange(start, start + n) % 65536)
    return batch


def steer(g: Graph, batch: PacketBatch, now: float) -> list[bytes]:
    return g.run_batch({"clients": batch}, now)["backends"].to_list()


def make(weights: dict[str, float] | None = None, **options: Any) -> tuple[Graph, Steering]:
    weights = weights or dict.fromkeys(MACS, 1.0)
    lb = FlowBalancer([Backend(name, w) for name, w in weights.items()])
    g = maglev_graph(lb, [VIP + ":80", VIP6], macs=MACS, errors="raise", **options)
    return g, steering_of(g)


def test_vip_packets_get_a_backend_mac_and_nothing_else_changes() -> None:
    g, _ = make(own_mac=LB_MAC)
    batch = client_flows(50)
    before = batch.to_list()
    after = steer(g, batch, 1.0)
    assert len(after) == 50
    for old, new in zip(before, after, strict=True):
        assert mac_of(new) in MACS.values()
        assert new[6:12] == bytes.fromhex(LB_MAC.replace(":", ""))
        assert new[12:] == old[12:]  # IP header, TCP header and payload untouched: DSR


def test_idle_flows_are_swept_on_the_graph_timers_and_counted() -> None:
    lb = FlowBalancer(list(MACS), idle_timeout=5.0)
    g = maglev_graph(lb, VIP + ":80", macs=MACS, errors="raise")
    steer(g, client_flows(20), 1.0)
    assert len(lb.flows) == 20
    g.tick(10.0)  # the first sweep (every 10 s): idle 9 s > 5 s
    assert len(lb.flows) == 0
    assert g.operator("steer").counters.extra["expired"] == 20


def test_affinity_holds_across_batches() -> None:
    g, _ = make()
    first = [mac_of(p) for p in steer(g, client_flows(400), 1.0)]
    assert len(set(first)) == 3
    order = np.random.default_rng(7).permutation(400)
    again = steer(g, client_flows(400).select(order), 2.0)
    assert [mac_of(p) for p in again] == [first[i] for i in order]


def test_a_backend_going_down_moves_only_its_flows_and_up_again_moves_none() -> None:
    g, steering = make()
    down_mac = MACS["web-2"]
    before = [mac_of(p) for p in steer(g, client_flows(600), 1.0)]
    steering.set_up("web-2", False)
    during = [mac_of(p) for p in steer(g, client_flows(600), 2.0)]
    for old, new in zip(before, during, strict=True):
        if old == down_mac:
            assert new != down_mac
        else:
            assert new == old  # flows of healthy backends keep their backend
    assert sum(m == down_mac for m in before) > 100
    fresh = [mac_of(p) for p in steer(g, client_flows(300, start=20000), 2.5)]
    assert down_mac not in fresh
    steering.set_up("web-2", True)
    after = [mac_of(p) for p in steer(g, client_flows(600), 3.0)]
    assert after == during  # existing flows stay where they are while their backend is up
    newer = [mac_of(p) for p in steer(g, client_flows(600, start=30000), 3.5)]
    assert down_mac in newer  # new flows reach it again
    status = {row["name"]: row for row in steering.status()}
    assert status["web-2"]["up"] and status["web-2"]["serving"]
    assert sum(row["packets"] for row in status.values()) == 600 * 4 + 300


def test_new_flows_spread_as_the_weights_say() -> None:
    g, steering = make({"web-1": 1, "web-2": 2, "web-3": 3})
    macs = [mac_of(p) for p in steer(g, client_flows(30000, start=2000), 1.0)]
    shares = {name: macs.count(mac) / len(macs) for name, mac in MACS.items()}
    for name, weight in (("web-1", 1), ("web-2", 2), ("web-3", 3)):
        assert abs(shares[name] - weight / 6) < 0.02, shares
    counted = {row["name"]: row["packets"] for row in steering.status()}
    assert counted == {name: macs.count(mac) for name, mac in MACS.items()}


def test_non_vip_traffic_is_dropped_or_passed_unchanged() -> None:
    other_port = client_flows(3, dport=22)
    other_host = client_flows(2, dst="198.18.1.2")
    g, _ = make()
    assert steer(g, PacketBatch.concat([other_port, other_host, client_flows(1)]), 1.0)
    assert g.operator("not_vip").counters.drops == {"not_vip": 5}
    passing, _ = make(non_vip="pass")
    unchanged = other_port.to_list()
    assert steer(passing, other_port, 1.0) == unchanged


def test_ipv6_vip_and_port_less_vip() -> None:
    g, _ = make()
    six = PacketBatch.from_bytes(
        [B.udp_frame("2001:2:0:1::5", VIP6, 5000 + i, 53) for i in range(20)]
        + [B.icmp_echo_frame("2001:2:0:1::5", VIP6, ident=9)]
    )
    out = steer(g, six, 1.0)
    assert len(out) == 21 and all(mac_of(p) in MACS.values() for p in out)


def test_every_backend_down_drops_vip_packets_as_no_backend() -> None:
    g, steering = make()
    for name in MACS:
        steering.set_up(name, False)
    assert steer(g, client_flows(4), 1.0) == []
    assert g.operator("steer").counters.drops == {"no_backend": 4}


def fragments(sport: int, client: str = CLIENT) -> list[bytes]:
    """A UDP datagram to the VIP in two IPv4 fragments (16 + 16 bytes of UDP)."""
    udp = B.udp(sport, 80, bytes(24), src=client, dst=VIP)
    first = B.ethernet(B.ipv4(client, VIP, 17, udp[:16], ident=sport, more_fragments=True))
    rest = B.ethernet(B.ipv4(client, VIP, 17, udp[16:], ident=sport, frag_offset=2))
    return [first, rest]


def test_fragments_of_one_datagram_go_to_one_backend() -> None:
    g = maglev_graph(FlowBalancer(list(MACS)), VIP, macs=MACS, errors="raise")
    chosen = set()
    for host in range(1, 41):  # fragments hash on addresses: vary the client
        out = steer(g, PacketBatch.from_bytes(fragments(3000 + host, f"198.19.0.{host}")), 1.0)
        assert len(out) == 2 and mac_of(out[0]) == mac_of(out[1])
        chosen.add(mac_of(out[0]))
    assert len(chosen) == 3  # different clients still spread
    # A VIP with a port cannot claim a later fragment: it carries no port.
    with_port, _ = make()
    assert len(steer(with_port, PacketBatch.from_bytes(fragments(3000)), 1.0)) == 1
    assert with_port.operator("not_vip").counters.drops == {"not_vip": 1}


def test_backends_can_be_added_at_run_time() -> None:
    g, steering = make()
    steering.add_backend("web-4", "02:00:00:00:01:04", weight=3)
    macs = [mac_of(p) for p in steer(g, client_flows(3000, start=5000), 1.0)]
    assert abs(macs.count("02:00:00:00:01:04") / 3000 - 0.5) < 0.05
    with pytest.raises(ValueError, match="MAC"):
        steering.add_backend("web-5", "not-a-mac")
    assert [b.name for b in steering.balancer.backends] == [*MACS, "web-4"]
    with pytest.raises(KeyError):
        steering.set_up("nope", False)


def test_configuration_errors_name_the_culprit() -> None:
    lb = FlowBalancer(list(MACS))
    with pytest.raises(ValueError, match=r"no MAC address for backend\(s\) \['web-3'\]"):
        Steering(lb, VIP, {k: v for k, v in MACS.items() if k != "web-3"})
    with pytest.raises(ValueError, match=r"'198\.18\.1\.300' is not an IP address"):
        parse_vip("198.18.1.300:80")
    with pytest.raises(ValueError, match="port 70000"):
        parse_vip("198.18.1.1:70000")
    assert str(parse_vip("[2001:2::1]:443")) == "[2001:2::1]:443"
    with pytest.raises(ValueError, match="needs macs"):
        maglev_graph(lb, VIP)
