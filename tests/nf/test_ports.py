"""Ports with real traffic: AF_PACKET rings and TAP devices in throw-away network namespaces,
capture-file ports, and port URLs.

Topology (made per test, removed in `finally`): namespaces A, M, B; veth a0 (A) -- m1 (M)
and m2 (M) -- b0 (B). A and B share 198.18.0.0/24; M has no addresses and no forwarding,
so only a forwarding loop on ports m1 and m2 connects A and B. IPv6 is off everywhere to
keep the links quiet.
"""

from __future__ import annotations

import os
import re
import select
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from netchain import Chain, chain, ip
from nfaas.nf import build as B
from nfaas.nf.batch import PacketBatch
from nfaas.nf.build import l4_checksums_ok
from nfaas.nf.headers import parse
from nfaas.nf.pcap import read_capture_all
from nfaas.nf.ports import (
    CaptureInPort,
    CaptureOutPort,
    Port,
    PortError,
    PortSpecError,
    netns,
    open_port,
    parse_port_url,
)
from nfaas.nf.ports.afpacket import AfPacketPort, get_offloads, interface_info, set_offloads
from nfaas.nf.ports.tap import TapPort

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root for network namespaces")

A_IP, B_IP = "198.18.0.1", "198.18.0.2"
WAIT = 5.0  # generous: nothing here measures speed
PEER_MAC = "02:00:00:00:07:02"  # a host that exists only as a static neighbour entry


Net = Chain


@pytest.fixture
def net() -> Iterator[Net]:
    with chain("nfp", A_IP, B_IP) as names:
        yield names


def raw_socket(ns: str, dev: str) -> socket.socket:
    with netns(ns):
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    s.bind((dev, 0))
    return s


def udp_socket(ns: str, addr: str, port: int) -> socket.socket:
    with netns(ns):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((addr, port))
    s.settimeout(WAIT)
    return s


def receive(port: Port, count: int, keep: Callable[[bytes], bool] = lambda f: True) -> list[bytes]:
    """Frames from `port` (those `keep` accepts) until `count` or WAIT seconds."""
    frames: list[bytes] = []
    deadline = time.monotonic() + WAIT
    while len(frames) < count and time.monotonic() < deadline:
        frames += [f for f in port.recv_batch(64, 0.2).to_list() if keep(f)]
    return frames


def sample_frames(n: int) -> list[bytes]:
    """UDP frames of many sizes (up to a full 1514-byte frame) and a VLAN-tagged one."""
    frames = [
        B.udp_frame("198.18.1.1", "198.18.1.2", 1000 + i, 2000, bytes([i % 256]) * (i * 37 % 1473))
        for i in range(n - 2)
    ]
    frames.append(B.udp_frame("198.18.1.1", "198.18.1.2", 7, 8, bytes(1472)))
    frames.append(B.udp_frame("198.18.1.1", "198.18.1.2", 5, 6, b"tagged", vlans=[42]))
    return frames


def is_ours(frame: bytes) -> bool:
    h = parse(PacketBatch.from_bytes([frame]))
    return bool(h.valid[0] and h.ipv4_src[0] >> 16 == 0xC612)  # 198.18.x.x


# -- URLs and capture ports -----------------------------------------------------------------


def test_port_urls() -> None:
    assert parse_port_url("afpacket:veth0") == ("afpacket", "veth0", {})
    assert parse_port_url("afpacket:m1?netns=x&qdisc_bypass=1&blocks=8&tx=sendmmsg") == (
        "afpacket",
        "m1",
        {"netns": "x", "qdisc_bypass": True, "block_count": 8, "tx_mode": "sendmmsg"},
    )
    assert parse_port_url("tap:nfaas-tap0?address=198.18.5.1/24&multi_queue=yes") == (
        "tap",
        "nfaas-tap0",
        {"address": "198.18.5.1/24", "multi_queue": True},
    )
    assert parse_port_url("pcapng-out:/tmp/x.pcapng") == ("pcapng-out", "/tmp/x.pcapng", {})
    bad = {
        "veth0": "expected KIND:TARGET",
        "xdp:veth0": "unknown port kind 'xdp'",
        "afpacket:": "missing interface name",
        "afpacket:averyveryverylongname": "bad interface name",
        "afpacket:v0?promisc=maybe": "option promisc: expected a boolean",
        "afpacket:v0?blocks=-2": "option blocks: expected a positive integer",
        "afpacket:v0?colour=red": "unknown option 'colour' for afpacket ports",
        "tap:t0?blocks=4": "unknown option 'blocks' for tap ports",
        "pcap:": "missing file path",
        "pcap:/x?y=1": "unknown option 'y' for pcap ports (known: none)",
        "afpacket:v0?promisc": "malformed options 'promisc'",
    }
    for url, message in bad.items():
        with pytest.raises(PortSpecError, match=re.escape(message)) as info:
            open_port(url)
        assert repr(url) in str(info.value)


@given(st.text(max_size=40))
def test_port_url_parser_only_raises_spec_errors(url: str) -> None:
    try:
        kind, _, _ = parse_port_url(url)
    except PortSpecError:
        return
    assert url.startswith(kind + ":")


@pytest.mark.parametrize("kind", ["pcap", "pcapng"])
def test_capture_ports_round_trip(tmp_path: Path, kind: str) -> None:
    frames = sample_frames(40)
    path = tmp_path / f"x.{kind}"
    out = open_port(f"{kind}-out:{path}")
    assert out.send_batch(PacketBatch.from_bytes(frames[:25])) == 25
    assert out.send_batch(PacketBatch.from_bytes(frames[25:])) == 15
    assert out.stats().tx_packets == 40
    out.close()
    assert read_capture_all(path).to_list() == frames
    assert (read_capture_all(path).timestamps_ns > 0).all()  # stamped when written
    port = open_port(f"pcap:{path}")
    assert isinstance(port, CaptureInPort)
    got = [port.recv_batch(16) for _ in range(4)]
    assert [len(b) for b in got] == [16, 16, 8, 0]
    assert port.exhausted
    assert PacketBatch.concat(got).to_list() == frames
    assert port.stats().rx_packets == 40
    with pytest.raises(PortError, match="cannot send"):
        port.send_batch(got[0])
    port.close()
    with pytest.raises(PortError, match="cannot open capture"):
        open_port(f"pcap:{tmp_path / 'missing.pcap'}")


def test_capture_ports_close_with_the_block(tmp_path: Path) -> None:
    path = tmp_path / "x.pcapng"
    with CaptureOutPort(path) as out:
        assert isinstance(out, CaptureOutPort)
        out.send_batch(PacketBatch.from_bytes(sample_frames(3)))
        before = out.stats()
        out.send_batch(PacketBatch.from_bytes(sample_frames(2)))
    assert before.tx_packets == 3  # a snapshot, not the live counters
    with pytest.raises(ValueError):
        out.fileno()  # closed
    with CaptureInPort(path) as port:
        assert len(port.recv_batch(10)) == 5
    with pytest.raises(ValueError):
        port.fileno()
    with pytest.raises(PortError, match="cannot create capture"):
        CaptureOutPort(tmp_path / "no-such-dir" / "x.pcap")


# -- AF_PACKET ------------------------------------------------------------------------------


def test_afpacket_errors_name_the_interface(net: Net) -> None:
    with pytest.raises(PortError, match=r"no interface 'nope' in network namespace"):
        AfPacketPort("nope", netns=net.m)
    with pytest.raises(PortError, match="network namespace 'nfp-none' not found"):
        open_port("afpacket:m1?netns=nfp-none")


@pytest.mark.parametrize("rx_ring", ["v3", "v2"])
def test_afpacket_rx_ring_receives_identical_frames(net: Net, rx_ring: str) -> None:
    frames = sample_frames(300)
    # small blocks: the frames span several blocks, and batches of 64 end inside blocks;
    # the v2 ring (512 slots) wraps around
    with AfPacketPort("m1", netns=net.m, rx_ring=rx_ring, block_size=16384, block_count=64) as port:
        sender = raw_socket(net.a, "a0")
        for frame in frames:
            sender.send(frame)
        sender.close()
        got = receive(port, len(frames), is_ours)
        stats = port.stats()
    assert got == frames  # the VLAN tag the kernel took off is back in place
    assert stats.rx_packets >= len(frames)
    assert stats.rx_dropped == 0


@pytest.mark.parametrize("rx_ring", ["v3", "v2"])
def test_a_full_ring_is_read_once(net: Net, rx_ring: str) -> None:
    """With every block (slot) ready, one big recv takes each frame once, not a lap more."""
    frames = sample_frames(400)
    with AfPacketPort("m1", netns=net.m, rx_ring=rx_ring, block_size=4096, block_count=2) as port:
        sender = raw_socket(net.a, "a0")
        for frame in frames:
            sender.send(frame)  # far more than 2 blocks hold: the ring fills, the rest drop
        sender.close()
        time.sleep(0.05)  # let the block timeout hand over the last block
        got = [f for f in port.recv_batch(4096).to_list() if is_ours(f)]
    assert got and len(got) < len(frames)
    assert got == frames[: len(got)]  # in order, none twice


def test_afpacket_completes_partial_checksums(net: Net) -> None:
    # A's UDP socket leaves the checksum to "hardware" (veth): M sees a partial sum
    ip("-n", net.a, "neigh", "replace", "198.18.0.9", "lladdr", PEER_MAC, "dev", "a0")
    a = udp_socket(net.a, A_IP, 4000)
    with (
        AfPacketPort("m1", netns=net.m) as fixed,
        AfPacketPort("m1", netns=net.m, fix_checksums=False) as raw,
    ):
        for i in range(5):
            a.sendto(b"payload %d" % i, ("198.18.0.9", 4001))
        udp = lambda f: is_ours(f) and f[23] == 17  # noqa: E731
        good, partial = receive(fixed, 5, udp), receive(raw, 5, udp)
    a.close()
    assert len(good) == len(partial) == 5
    batch = PacketBatch.from_bytes(good)
    assert l4_checksums_ok(batch, parse(batch)).all()
    batch = PacketBatch.from_bytes(partial)
    assert not l4_checksums_ok(batch, parse(batch)).any()
    assert [f[:40] for f in good] == [f[:40] for f in partial]  # only the checksum differs


@pytest.mark.parametrize(
    ("rx_ring", "tx_mode"), [("v3", "ring"), ("v3", "sendmmsg"), ("v2", "ring")]
)
def test_afpacket_tx_sends_identical_frames(net: Net, rx_ring: str, tx_mode: str) -> None:
    frames = sample_frames(200)
    too_long = B.udp_frame("198.18.1.1", "198.18.1.2", 1, 2, bytes(1600))
    with (
        AfPacketPort("m1", netns=net.m, rx_ring=rx_ring, tx_mode=tx_mode, tx_frames=64) as tx,
        AfPacketPort("a0", netns=net.a) as rx,
    ):
        batch = PacketBatch.from_bytes([*frames[:100], too_long, *frames[100:]])
        # more frames than TX slots: the port waits for free slots and goes on
        assert tx.send_batch(batch) == len(frames)
        got = receive(rx, len(frames), is_ours)
        stats = tx.stats()
        echoed = tx.recv_batch(64, 0.3)  # PACKET_IGNORE_OUTGOING: not our own frames
    assert got == frames
    assert (stats.tx_packets, stats.tx_dropped) == (len(frames), 1)
    assert stats.tx_bytes == sum(map(len, frames))
    assert len(echoed) == 0


def forward(ports: tuple[Port, Port], stop: threading.Event) -> None:
    """The forwarding loop under test: poll both ports, pass each batch to the other."""
    poller = select.poll()
    for port in ports:
        poller.register(port.fileno(), select.POLLIN)
    while not stop.is_set():
        poller.poll(20)
        for src, dst in (ports, ports[::-1]):
            batch = src.recv_batch(256, 0)
            if len(batch):
                dst.send_batch(batch)


@contextmanager
def forwarding(net: Net, options: str = "") -> Iterator[tuple[Port, Port]]:
    """Ports on m1 and m2 with the forwarding loop running in a thread."""
    ports = (
        open_port(f"afpacket:m1?netns={net.m}{options}"),
        open_port(f"afpacket:m2?netns={net.m}{options}"),
    )
    stop = threading.Event()
    loop = threading.Thread(target=forward, args=(ports, stop), daemon=True)
    loop.start()
    try:
        yield ports
    finally:
        stop.set()
        loop.join(WAIT)
        for port in ports:
            port.close()


@pytest.mark.parametrize("options", ["", "&tx=ring", "&rx=v2&tx=ring"])
def test_forwarding_loop_between_namespaces(net: Net, options: str) -> None:
    a, b = udp_socket(net.a, A_IP, 5000), udp_socket(net.b, B_IP, 5001)
    # M neither routes nor bridges: without the loop nothing gets through (a raw frame to
    # B's MAC, so that no half-done ARP lookup delivers it later)
    early = udp_socket(net.b, B_IP, 5002)
    early.settimeout(0.3)
    b_mac = interface_info(early, "b0")[2]
    sender = raw_socket(net.a, "a0")
    sender.send(B.udp_frame(A_IP, B_IP, 5000, 5002, b"too early", eth={"dst": b_mac}))
    sender.close()
    with pytest.raises(TimeoutError):
        early.recv(2048)
    early.close()
    with forwarding(net, options) as ports:
        payloads = [bytes([i]) * (i * 13 % 1400 + 1) for i in range(200)]
        got = []
        for p in payloads:  # one at a time: the sockets' buffers cannot overflow
            a.sendto(p, (B_IP, 5001))
            got.append(b.recv(2048))
        assert got == payloads
        b.sendto(b"reply", (A_IP, 5000))
        assert a.recvfrom(2048) == (b"reply", (B_IP, 5001))
        counts = [p.stats() for p in ports]
    a.close()
    b.close()
    assert counts[0].rx_packets >= 200 and counts[1].tx_packets >= 200
    assert counts[1].rx_packets >= 1 and counts[0].tx_packets >= 1


def test_tcp_through_the_loop_needs_segmentation_offloads_off(net: Net) -> None:
    # A TCP sender on a veth hands it 64 KiB super-frames (TSO/GSO), which no port can
    # send on a 1500-byte link; with TSO and GSO off it sends MTU-sized segments.
    for ns, dev in ((net.a, "a0"), (net.b, "b0")):
        set_offloads(dev, ns, tso=False, gso=False)
    data = bytes(range(256)) * 1200  # 300 KiB
    with netns(net.b):
        server = socket.socket()
    server.bind((B_IP, 8000))
    server.listen()
    with forwarding(net) as ports:
        with netns(net.a):
            client = socket.create_connection((B_IP, 8000), timeout=WAIT)
        conn, _ = server.accept()
        conn.settimeout(WAIT)
        got = bytearray()

        def read_all() -> None:
            while chunk := conn.recv(65536):
                got.extend(chunk)

        # read while sending: 300 KiB need not fit in the two sockets' buffers at once
        reader = threading.Thread(target=read_all, daemon=True)
        reader.start()
        client.settimeout(4 * WAIT)
        client.sendall(data)
        client.close()
        reader.join(4 * WAIT)
        conn.close()
        dropped = ports[1].stats().tx_dropped
    server.close()
    assert got == data
    assert dropped == 0


def test_fanout_spreads_flows_over_sockets(net: Net) -> None:
    frames = [
        B.udp_frame("198.18.1.1", "198.18.1.2", 1000 + i % 16, 2000, bytes([i])) for i in range(160)
    ]
    with (
        AfPacketPort("m1", netns=net.m, fanout_group=7) as one,
        AfPacketPort("m1", netns=net.m, fanout_group=7) as two,
    ):
        sender = raw_socket(net.a, "a0")
        for frame in frames:
            sender.send(frame)
        sender.close()
        got: list[list[bytes]] = [[], []]
        deadline = time.monotonic() + WAIT
        while sum(map(len, got)) < len(frames) and time.monotonic() < deadline:
            for i, port in enumerate((one, two)):
                got[i] += [f for f in port.recv_batch(64, 0.05).to_list() if is_ours(f)]
    assert sorted(got[0] + got[1]) == sorted(frames)  # each frame reached one socket
    sports = [{f[34:36] for f in part} for part in got]
    assert not sports[0] & sports[1]  # a flow sticks to one socket


def test_offloads_can_be_switched(net: Net) -> None:
    assert get_offloads("a0", net.a)["tx_checksum"]
    set_offloads("a0", net.a, tx_checksum=False, tso=False)
    assert not get_offloads("a0", net.a)["tx_checksum"]
    assert not get_offloads("a0", net.a)["tso"]
    with pytest.raises(ValueError, match="unknown offload 'lro2'"):
        set_offloads("a0", net.a, lro2=False)


# -- TAP ------------------------------------------------------------------------------------


def test_tap_ping_and_udp(net: Net) -> None:
    tap = open_port(f"tap:nfp-tap0?netns={net.m}")
    assert isinstance(tap, TapPort)
    try:
        tap.move_to(net.b, address="198.18.7.1/24")  # created in M, used in B
        ip("-n", net.b, "neigh", "replace", "198.18.7.2", "lladdr", PEER_MAC, "dev", "nfp-tap0")
        # ping the host through the tap: write an echo request, read the reply
        ping = B.icmp_echo_frame(
            "198.18.7.2", "198.18.7.1", 77, 1, b"ping", eth={"src": PEER_MAC, "dst": tap.mac}
        )
        assert tap.send_batch(PacketBatch.from_bytes([ping])) == 1
        replies = receive(tap, 1, lambda f: f[12:14] == b"\x08\x00")
        pong = B.icmp_echo_frame(
            "198.18.7.1",
            "198.18.7.2",
            77,
            1,
            b"ping",
            reply=True,
            eth={"src": tap.mac, "dst": PEER_MAC},
        )
        h = parse(PacketBatch.from_bytes(replies))
        assert replies and replies[0][34:] == pong[34:] and h.icmp_type[0] == 0
        # a datagram from the host comes out of the tap; the answer written to it arrives
        host = udp_socket(net.b, "198.18.7.1", 6000)
        host.sendto(b"question", ("198.18.7.2", 6001))
        frames = receive(tap, 1, lambda f: f[12:14] == b"\x08\x00" and f[23] == 17)
        question = PacketBatch.from_bytes(frames)
        h = parse(question)
        assert (int(h.sport[0]), int(h.dport[0])) == (6000, 6001)
        assert frames[0][int(h.payload_offset[0]) :] == b"question"
        answer = B.udp_frame(
            "198.18.7.2", "198.18.7.1", 6001, 6000, b"answer", eth={"src": PEER_MAC, "dst": tap.mac}
        )
        assert tap.send_batch(PacketBatch.from_bytes([answer, b"short"])) == 1
        assert host.recvfrom(2048) == (b"answer", ("198.18.7.2", 6001))
        host.close()
        stats = tap.stats()
        assert (stats.tx_packets, stats.tx_dropped, stats.rx_dropped) == (2, 1, 0)
        assert stats.rx_packets >= 2
    finally:
        tap.close()
    gone = subprocess.run(["ip", "-n", net.b, "link", "show", "nfp-tap0"], capture_output=True)
    assert gone.returncode != 0  # closing the last queue removed the device


def test_tap_multi_queue_and_errors(net: Net) -> None:
    first = TapPort("nfp-mq0", netns=net.m, multi_queue=True, address="198.18.8.1/24")
    try:
        second = TapPort("nfp-mq0", netns=net.m, multi_queue=True)  # a second queue
        assert second.mac == first.mac
        second.close()
        with pytest.raises(PortError, match="cannot create tap 'nfp-mq0'"):
            TapPort("nfp-mq0", netns=net.m)  # single-queue open of a multi-queue device
        with pytest.raises(PortError, match=re.escape("bad address '198.18.8.300/24'")):
            first.add_address("198.18.8.300/24")
        with pytest.raises(PortError, match=re.escape("add address 198.18.8.1/24: File exists")):
            first.add_address("198.18.8.1/24")
    finally:
        first.close()


def test_batches_from_ports_feed_numpy(net: Net) -> None:
    """A received batch is an ordinary PacketBatch: columns line up, and its bytes are a
    copy (the port closes, which unmaps the ring, while the batch lives on)."""
    with AfPacketPort("m1", netns=net.m, port_id=3) as port:
        sender = raw_socket(net.a, "a0")
        frames = sample_frames(10)
        for frame in frames:
            sender.send(frame)
        sender.close()
        deadline = time.monotonic() + WAIT
        batches = []
        while sum(map(len, batches)) < len(frames) and time.monotonic() < deadline:
            batch = port.recv_batch(64, 0.2)
            batches.append(batch.select(np.array([is_ours(f) for f in batch.to_list()], bool)))
    batch = PacketBatch.concat(batches)
    assert batch.to_list() == frames
    assert (batch.port == 3).all()
    assert (batch.meta["wire_length"] == batch.lengths).all()
    now = time.time_ns()
    assert ((now - batch.timestamps_ns) < 60 * 10**9).all()
