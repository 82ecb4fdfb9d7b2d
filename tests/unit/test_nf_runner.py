"""The packet loop of an NF instance, run in this process on capture ports."""

from __future__ import annotations

import types
from pathlib import Path

import numpy as np
import pytest

from nfaas.nf import build as B
from nfaas.nf.batch import PacketBatch
from nfaas.nf.graph import Graph
from nfaas.nf.pcap import read_capture_all, write_pcap
from nfaas.nf.ports.claim import claim_port
from nfaas.worker.nf_runner import NfLoadError, NfRunner, attach_ports, build_graph, check_ports
from nfaas.worker.protocol import PortBinding, Report, decode, encode


def udp_only(context: object) -> Graph:
    g = Graph("udp-only")
    keep_udp = g.source("trace").parse().filter(lambda b, h: h.protocol == 17, reason="not_udp")
    keep_udp.deparse().to("kept")
    g.sink("kept")
    return g


def test_runner_moves_batches_and_reports(tmp_path: Path) -> None:
    udp = [B.udp_frame("198.18.0.1", "198.18.0.2", 5000 + i, 53, b"q") for i in range(3)]
    tcp = [B.tcp_frame("198.18.0.1", "198.18.0.2", 6000, 80, b"x")]
    write_pcap(tmp_path / "t.pcap", PacketBatch.from_bytes(udp + tcp, np.full(4, 10**18)))
    bindings = [PortBinding("trace", "pcap:t.pcap"), PortBinding("kept", "pcap-out:k.pcap")]
    fds = [claim_port(b.name, b.url, capture_dir=tmp_path).fds[0] for b in bindings]
    graph = build_graph(types.SimpleNamespace(graph=udp_only), None)
    reports: list[Report] = []
    runner = NfRunner(graph, attach_ports(bindings, fds), reports.append)
    assert runner.step() == 4
    assert runner.step() == 0  # the capture is exhausted; timers still tick
    runner.close()
    assert read_capture_all(tmp_path / "k.pcap").to_list() == udp
    (report,) = reports
    assert decode(encode(report)[4:]) == report  # it travels as a frame
    rows = {(r["operator"], r["kind"]): r for r in report.operators}
    assert rows["filter", "filter"]["drops"] == {"not_udp": 1}
    assert report.ports["trace"]["rx_packets"] == 4 and report.ports["kept"]["tx_packets"] == 3


def test_graph_must_fit_the_manifest() -> None:
    graph = udp_only(None)
    check_ports(graph, ["trace", "kept"])
    with pytest.raises(NfLoadError, match=r"uses ports \['kept'\] that the manifest does not bind"):
        check_ports(graph, ["trace"])
    with pytest.raises(NfLoadError, match=r"binds ports \['extra'\] that graph 'udp-only' never"):
        check_ports(graph, ["trace", "kept", "extra"])


def test_handler_must_build_a_graph() -> None:
    with pytest.raises(NfLoadError, match=r"must define graph\(context\)"):
        build_graph(types.SimpleNamespace(), None)
    with pytest.raises(NfLoadError, match="returned dict, not a Graph"):
        build_graph(types.SimpleNamespace(graph=lambda c: {}), None)


def test_descriptor_count_must_match() -> None:
    with pytest.raises(NfLoadError, match="got 0 port descriptors for 1 ports"):
        attach_ports([PortBinding("a", "pcap:x")], [])
