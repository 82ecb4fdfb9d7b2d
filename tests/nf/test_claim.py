"""Ports claimed in one place and attached in another (how an NF instance gets its ports)."""

from __future__ import annotations

import os
import secrets
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from nfaas.nf import build as B
from nfaas.nf.batch import PacketBatch
from nfaas.nf.pcap import read_capture_all, write_pcap
from nfaas.nf.ports import PortError, netns
from nfaas.nf.ports.claim import attach_port, claim_port

root_only = pytest.mark.skipif(os.getuid() != 0, reason="AF_PACKET needs root")


def frames(count: int, base: int = 1000) -> list[bytes]:
    return [B.udp_frame("198.18.30.1", "198.18.30.2", base + i, 9, b"x" * 20) for i in range(count)]


@pytest.fixture
def pair() -> Iterator[str]:
    """A namespace holding a veth pair v0 <-> v1, both up, no addresses, no route out."""
    ns = f"nfc-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        run = ["ip", "-n", ns]
        subprocess.run(
            [*run, "link", "add", "v0", "type", "veth", "peer", "name", "v1"], check=True
        )
        for dev in ("v0", "v1"):
            subprocess.run([*run, "link", "set", dev, "up"], check=True)
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def send_raw(ns: str, dev: str, packets: list[bytes]) -> None:
    with netns(ns):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    with sock:
        sock.bind((dev, 0))
        for frame in packets:
            sock.send(frame)


def test_capture_ports_claimed_then_attached(tmp_path: Path) -> None:
    sent = frames(4)
    write_pcap(tmp_path / "in.pcap", PacketBatch.from_bytes(sent, np.arange(1, 5) * 10**9))
    inbound = claim_port("in", "pcap:in.pcap", capture_dir=tmp_path)
    outbound = claim_port("out", "pcapng-out:sub/out.pcapng", capture_dir=tmp_path)
    assert not inbound.watchable and not outbound.watchable
    reader, writer = attach_port(inbound), attach_port(outbound)
    try:
        batch = reader.recv_batch(16)
        assert batch.to_list() == sent
        assert writer.send_batch(batch) == 4
    finally:
        reader.close()
        writer.close()
    assert read_capture_all(tmp_path / "sub" / "out.pcapng").to_list() == sent


def test_claim_errors_name_the_port_and_target(tmp_path: Path) -> None:
    with pytest.raises(PortError, match=r"port trace \(pcap:missing.pcap\): cannot open .*missing"):
        claim_port("trace", "pcap:missing.pcap", capture_dir=tmp_path)


@root_only
def test_claim_error_names_interface_and_namespace(pair: str) -> None:
    with pytest.raises(PortError, match=rf"no interface 'nope' in network namespace '{pair}'"):
        claim_port("wan", f"afpacket:nope?netns={pair}")


@root_only
@pytest.mark.parametrize("ring", ["v3", "v2"])
def test_frames_queued_before_attach_come_first(pair: str, ring: str) -> None:
    """A claimed socket is bound: what arrives while the instance starts is not lost."""
    claim = claim_port("lan", f"afpacket:v1?netns={pair}&rx={ring}")
    early, late = frames(5, 1000), frames(3, 2000)
    send_raw(pair, "v0", early)
    port = attach_port(claim, port_id=7)
    try:
        send_raw(pair, "v0", late)
        got: list[bytes] = []
        for _ in range(50):
            batch = port.recv_batch(64, 0.1)
            assert (batch.port == 7).all()
            got += [f for f in batch.to_list() if f in early + late]
            if len(got) >= 8:
                break
        assert got == early + late
        assert port.stats().rx_packets >= 8
    finally:
        port.close()
