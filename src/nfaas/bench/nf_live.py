"""Live forwarding through an NF graph and through the kernel, between network namespaces.

The harness of `nfaas bench nf`'s live part (issue 4). Topology, made per rule count and
deleted afterwards (namespaces named ``nfb-<pid>-<serial>-a|m|b``)::

    A (a0 198.18.1.1/24) ==veth== (m1 198.18.1.254) M (m2 198.18.2.254) ==veth== (b0 198.18.2.1/24) B

IPv6 is off everywhere and nothing routes out of the namespaces. A *sender* process in A,
pinned to the first CPU, sends pre-built frames through an `AfPacketPort` (sendmmsg, 256 per
call) for a fixed time. The *forwarder* in M gets the last CPU: RPS on m1 queues every frame
M receives to that CPU, so M's kernel work (forwarding, or filling an NF's ring) and the NF
process share one core, and the sender has the other. In B a counting socket (a classic BPF
filter matching a marker in the last four bytes of the frame, see `MarkerCounter`) counts
what arrives, inside the kernel, without a process that would compete for the CPUs.

Forwarders ("paths"):

- the kernel as a router: ``ip_forward=1`` in M, a policy route sending everything that
  arrives on m1 to B (198.18.2.1, a static neighbour entry), and the ruleset loaded into M's
  forward hook: ``nft -f`` (`format_ruleset`), ``iptables-restore`` (nf_tables backend) or
  ``iptables-legacy-restore`` (x_tables), each one linear FORWARD chain;
- an NF graph (`GraphPath`) in its own process, run by the loop a ``runtime: nf`` instance
  runs (`nfaas.worker.nf_runner.NfRunner`) on `AfPacketPort`s m1 and m2 with their default
  options; ``ip_forward=0`` in M.

The kernel is addressed as a router (frames to m1's MAC); an NF graph is transparent (a bump
in the wire), so frames to it carry the next hop's MAC (`SINK_MAC`) and M's own stack drops
them at once as not its own. Either way, what leaves M is addressed to `SINK_MAC`, which no
interface has: B's stack drops it at layer 2 and only the counter sees it.

Per path (`measure_path`): a *blast* (A sends as fast as it can; after a warm-up, a window
of `seconds` counts the frames A sent, the frames M took in and decided -- m1's receive
counter for the kernel, the NF's own count -- and the marked frames delivered to B); if the
forwarder did not keep up, a bisection on A's sending rate for the *sustained* rate (see
`_sustained`: a forwarder sharing its core with the kernel's receive work does less under
overload than just below it); then, once M is idle again, latency probes: accepted flows,
each frame numbered, sent one at a time at a low rate; the one-way latency is B's kernel
receive time stamp (AF_PACKET ring) minus the sender's clock just before its ``sendmmsg``
(both CLOCK_REALTIME, which namespaces share).

`live_forwarding` runs this for every rule count with the kernel tools and our firewall
graph (stateful and stateless, bursts of 256 and 4,096) and saves ``nf-live.json``.
"""

from __future__ import annotations

import ctypes
import dataclasses
import itertools
import json
import multiprocessing as mp
import os
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.sharedctypes import Synchronized
from multiprocessing.synchronize import Event
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from nfaas.bench.report import summary
from nfaas.nf.batch import PacketBatch
from nfaas.nf.build import (
    TCP_SYN,
    ethernet,
    fix_l4_checksums,
    icmp_echo_frame,
    ipv4,
    mac_bytes,
    tcp_frame,
    udp_frame,
)
from nfaas.nf.graph import Graph
from nfaas.nf.headers import parse
from nfaas.nf.ports import DEFAULT_BURST, netns
from nfaas.nf.ports.afpacket import AfPacketPort, interface_info
from nfaas.vnfs.firewall.classifier import FlowKeys

__all__ = [
    "BURST",
    "FRAME_BYTES",
    "KERNEL_TOOLS",
    "PROBE_MARKER",
    "RATE_MARKER",
    "SINK_MAC",
    "ForwardPath",
    "GraphPath",
    "KernelPath",
    "MarkerCounter",
    "PathError",
    "Topology",
    "firewall_paths",
    "gbps_at_1500",
    "live_forwarding",
    "live_frames",
    "live_rule_count",
    "measure_path",
    "off_the_forwarder_cpu",
    "path_cells",
    "probe_frames",
    "topology",
    "with_dst_mac",
]

A_ADDR, M_A_ADDR = "198.18.1.1", "198.18.1.254"
B_ADDR, M_B_ADDR = "198.18.2.1", "198.18.2.254"
SINK_MAC = "02:00:00:00:0b:0b"  # the next hop beyond M: B's address resolves to it
FRAME_BYTES = 64  # frame length without the FCS: the smallest Ethernet frame
RATE_MARKER = 0x6E666231  # "nfb1": the last four bytes of every rate frame
PROBE_MARKER = 0x6E666232  # "nfb2": latency probes; the four bytes before it number them
BURST = DEFAULT_BURST  # frames per sendmmsg; also the NF loop's burst before NF_BURST (4096)
PROBE_PPS = 2000.0
MIN_PROBES = 20
DRAIN_S = 0.2  # after the sender stops: what the forwarder still holds reaches B
KEPT_UP = 0.99  # a forwarder keeps up when it processes this share of what A sent
DRAIN_TIMEOUT_S = 60.0
READY_TIMEOUT_S = 120.0
ROUTE_TABLE = 100
KERNEL_TOOLS: dict[str, tuple[list[str], list[str]]] = {
    # loader (the file is appended), and what empties the forward hook again
    "nft": (["nft", "-f"], ["nft", "flush", "ruleset"]),
    "iptables-restore": (["iptables-restore"], ["nft", "flush", "ruleset"]),
    "iptables-legacy-restore": (["iptables-legacy-restore"], ["iptables-legacy", "-F"]),
}
_FORK = mp.get_context("fork")
_serial = itertools.count()

# classic BPF: accept (64 bytes) frames whose last four bytes are the marker, drop the rest
_BPF_LD_LEN, _BPF_SUB_K, _BPF_TAX, _BPF_LD_IND_W = 0x80, 0x14, 0x07, 0x40
_BPF_JEQ_K, _BPF_RET_K = 0x15, 0x06
SO_ATTACH_FILTER = 26
SOL_PACKET, PACKET_STATISTICS, PACKET_IGNORE_OUTGOING = 263, 6, 23
ETH_P_ALL = 0x0003


def gbps_at_1500(pps: float | None) -> float | None:
    """The bit rate `pps` frames per second make at 1,500 bytes per frame."""
    return None if pps is None else pps * 1500 * 8 / 1e9


# --- the namespaces -------------------------------------------------------------------------


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def _in_ns(ns: str, *command: str, timeout: float | None = None) -> None:
    subprocess.run(
        ["ip", "netns", "exec", ns, *command],
        check=True,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@dataclass(frozen=True)
class Topology:
    """Names and addresses of one A — M — B set-up."""

    a: str
    m: str
    b: str
    m1_mac: str
    sender_cpu: int
    forwarder_cpu: int

    def link_rx_packets(self, ns: str, dev: str) -> int:
        """The interface's receive counter (frames the kernel took in)."""
        out = subprocess.run(
            ["ip", "-n", ns, "-j", "-s", "link", "show", "dev", dev],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        return int(json.loads(out)[0]["stats64"]["rx"]["packets"])

    def set_forwarding(self, on: bool) -> None:
        _in_ns(self.m, "sysctl", "-qw", f"net.ipv4.ip_forward={int(on)}")


def _cpus() -> tuple[int, int]:
    """(sender CPU, forwarder CPU): the first and the last CPU this process may use."""
    allowed = sorted(os.sched_getaffinity(0))
    return allowed[0], allowed[-1]


@contextmanager
def off_the_forwarder_cpu() -> Iterator[None]:
    """Run this process (and the `ip` commands it starts) on the sender's CPU only."""
    home = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {_cpus()[0]})
    try:
        yield
    finally:
        os.sched_setaffinity(0, home)


@contextmanager
def topology(tag: str | None = None) -> Iterator[Topology]:
    """Namespaces A, M, B with veths a0-m1 and m2-b0 (see the module docstring)."""
    if os.geteuid() != 0 or not shutil.which("ip"):
        raise PermissionError("live forwarding needs root and the ip tool")
    tag = tag or f"{os.getpid()}-{next(_serial)}"
    a, m, b = (f"nfb-{tag}-{side}" for side in "amb")
    made: list[str] = []
    try:
        for ns in (a, m, b):
            _ip("netns", "add", ns)
            made.append(ns)
            _in_ns(
                ns,
                "sysctl",
                "-qw",
                "net.ipv6.conf.all.disable_ipv6=1",
                "net.ipv6.conf.default.disable_ipv6=1",
                "net.ipv4.ip_forward=0",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.default.rp_filter=0",
            )
        _ip("-n", a, "link", "add", "a0", "type", "veth", "peer", "name", "m1", "netns", m)
        _ip("-n", m, "link", "add", "m2", "type", "veth", "peer", "name", "b0", "netns", b)
        _ip("-n", a, "addr", "add", f"{A_ADDR}/24", "dev", "a0")
        _ip("-n", m, "addr", "add", f"{M_A_ADDR}/24", "dev", "m1")
        _ip("-n", m, "addr", "add", f"{M_B_ADDR}/24", "dev", "m2")
        _ip("-n", b, "addr", "add", f"{B_ADDR}/24", "dev", "b0")
        for ns, dev in ((a, "a0"), (m, "m1"), (m, "m2"), (b, "b0")):
            _ip("-n", ns, "link", "set", dev, "up")
        # M as a router: whatever arrives on m1 goes to B, whose address is a static entry
        _ip("-n", m, "rule", "add", "iif", "m1", "lookup", str(ROUTE_TABLE), "pref", "100")
        _ip(
            "-n",
            m,
            "route",
            "add",
            "default",
            "via",
            B_ADDR,
            "dev",
            "m2",
            "table",
            str(ROUTE_TABLE),
        )
        _ip(
            "-n", m, "neigh", "replace", B_ADDR, "lladdr", SINK_MAC, "dev", "m2", "nud", "permanent"
        )
        sender_cpu, forwarder_cpu = _cpus()
        _in_ns(
            m,
            "sh",
            "-c",
            f"echo {1 << forwarder_cpu:x} > /sys/class/net/m1/queues/rx-0/rps_cpus",
        )
        with netns(m), socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0) as s:
            m1_mac = interface_info(s, "m1")[2].hex(":")
        yield Topology(a, m, b, m1_mac, sender_cpu, forwarder_cpu)
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


# --- frames ---------------------------------------------------------------------------------

_HEADER_BYTES = {6: 54, 17: 42, 1: 42}  # Ethernet + IPv4 + TCP / UDP / ICMP echo; else 34
SENDER_MAC = "02:00:00:00:0a:0a"


def _marked_template(proto: int, size: int, marker: int, dst_mac: str) -> bytes:
    """A `size`-byte frame of protocol `proto` whose last four bytes are `marker`."""
    header = _HEADER_BYTES.get(proto, 34)
    if size < header + 8:
        raise ValueError(f"frames of {size} bytes leave no room for a marker (protocol {proto})")
    payload = bytes(size - header - 4) + marker.to_bytes(4, "big")
    src, dst = "198.18.0.1", "198.18.0.2"
    eth = {"src": SENDER_MAC, "dst": dst_mac}
    if proto == 6:
        return tcp_frame(src, dst, 1024, 80, payload, flags=TCP_SYN, eth=eth)
    if proto == 17:
        return udp_frame(src, dst, 1024, 9, payload, eth=eth)
    if proto == 1:
        return icmp_echo_frame(src, dst, payload=payload, eth=eth)
    return ethernet(ipv4(src, dst, proto, payload), src=SENDER_MAC, dst=dst_mac)


def live_frames(
    keys: FlowKeys, dst_mac: str, *, size: int = FRAME_BYTES, marker: int = RATE_MARKER
) -> PacketBatch:
    """Frames of `size` bytes carrying the IPv4 5-tuples of `keys` (TCP as SYNs), addressed
    to `dst_mac`, with valid checksums and `marker` in their last four bytes."""
    from nfaas.bench.nf import capture_batch

    return capture_batch(
        keys, template=lambda proto: _marked_template(proto, size, marker, dst_mac)
    )


def probe_frames(
    keys: FlowKeys, rows: Sequence[int] | np.ndarray, count: int, dst_mac: str
) -> PacketBatch:
    """`count` latency probes cycling over the flows `rows` of `keys`, probe i numbered i
    (the four bytes before `PROBE_MARKER`), checksums valid."""
    rows = np.asarray(rows, np.int64)
    if not rows.size:
        raise ValueError("no flows to send latency probes on")
    pick = rows[np.arange(count) % rows.size]
    assert keys.src4 is not None and keys.dst4 is not None
    chosen = FlowKeys.ipv4(
        keys.src4[pick], keys.dst4[pick], keys.proto[pick], keys.sport[pick], keys.dport[pick]
    )
    batch = live_frames(chosen, dst_mac, marker=PROBE_MARKER)
    batch.write_uint(batch.lengths - 8, np.arange(count), 4)
    fix_l4_checksums(batch, parse(batch))
    return batch


def with_dst_mac(batch: PacketBatch, mac: str) -> PacketBatch:
    """A copy of `batch` whose frames are addressed to `mac`."""
    copy = batch.select(np.arange(len(batch)))
    copy.write_bytes(0, np.frombuffer(mac_bytes(mac), np.uint8))
    return copy


# --- counting what arrives in B -------------------------------------------------------------


class MarkerCounter:
    """Counts frames arriving on an interface whose last four bytes are a marker.

    An AF_PACKET socket with a classic BPF filter (length - 4, load that word, compare) and a
    receive buffer it never reads: the kernel counts every frame that passes the filter in
    PACKET_STATISTICS (queued or dropped for a full buffer alike), so no process has to
    read the frames.
    """

    def __init__(self, ns: str, ifname: str, marker: int) -> None:
        program = [
            (_BPF_LD_LEN, 0, 0, 0),
            (_BPF_SUB_K, 0, 0, 4),
            (_BPF_TAX, 0, 0, 0),
            (_BPF_LD_IND_W, 0, 0, 0),
            (_BPF_JEQ_K, 0, 1, marker),
            (_BPF_RET_K, 0, 0, 64),
            (_BPF_RET_K, 0, 0, 0),
        ]
        code = b"".join(struct.pack("HBBI", *op) for op in program)
        buffer = ctypes.create_string_buffer(code, len(code))
        fprog = struct.pack("HP", len(program), ctypes.addressof(buffer))
        with netns(ns):
            self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
        try:
            self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 0)
            self._sock.setsockopt(SOL_PACKET, PACKET_IGNORE_OUTGOING, 1)
            self._sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
            self._sock.bind((ifname, ETH_P_ALL))
        except BaseException:
            self._sock.close()
            raise
        self.take()

    def take(self) -> int:
        """Frames counted since the last call (reading the statistics resets them)."""
        raw = self._sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 8)
        return int(struct.unpack("II", raw)[0])

    def close(self) -> None:
        self._sock.close()

    def __enter__(self) -> MarkerCounter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- the sender -----------------------------------------------------------------------------


def _pin(cpu: int) -> None:
    with suppress(OSError):  # a CPU we may not use: run unpinned
        os.sched_setaffinity(0, {cpu})


def _send(
    ns: str,
    batches: list[PacketBatch],
    cpu: int,
    ready: Event,
    stop: Event,
    sent: Synchronized[int],
    pps: float | None,
    stamps: Any,
) -> None:
    """The sender process: send `batches` in turn until `stop` (or, with `stamps`, each once,
    recording the time just before each send)."""
    _pin(cpu)
    port = AfPacketPort("a0", netns=ns, promiscuous=False, block_count=2)
    ready.set()
    total = 0
    started = time.perf_counter()
    try:
        for i in itertools.count():
            if stop.is_set() or (stamps is not None and i >= len(batches)):
                break
            batch = batches[i % len(batches)]
            if pps:
                wait = started + total / pps - time.perf_counter()
                if wait > 0:
                    time.sleep(wait)
            if stamps is not None:
                stamps[i] = time.time_ns()
            total += port.send_batch(batch)
            sent.value = total
    finally:
        port.close()


class Sender:
    """A process in A that sends frames (pinned to the topology's sender CPU)."""

    def __init__(
        self,
        topo: Topology,
        batches: list[PacketBatch],
        *,
        pps: float | None = None,
        stamped: bool = False,
    ) -> None:
        self.sent: Synchronized[int] = _FORK.RawValue("q", 0)
        self.stamps = _FORK.RawArray("q", len(batches)) if stamped else None
        self.ready = _FORK.Event()
        self.stop_event = _FORK.Event()
        self.process = _FORK.Process(
            target=_send,
            args=(
                topo.a,
                batches,
                topo.sender_cpu,
                self.ready,
                self.stop_event,
                self.sent,
                pps,
                self.stamps,
            ),
            name="nfb-sender",
            daemon=True,
        )

    def start(self) -> None:
        self.process.start()
        if not self.ready.wait(READY_TIMEOUT_S):
            self.stop()
            raise PathError("the sender did not open its port")

    @property
    def count(self) -> int:
        return int(self.sent.value)

    def join(self, timeout: float) -> None:
        self.process.join(timeout)
        self.stop()

    def stop(self) -> None:
        self.stop_event.set()
        self.process.join(5.0)
        if self.process.is_alive() and self.process.pid is not None:
            os.kill(self.process.pid, 9)  # our own child, by its pid
            self.process.join()


# --- forwarders -----------------------------------------------------------------------------


class PathError(RuntimeError):
    """A forwarder could not be set up (a ruleset failed to load, an NF did not start)."""


class ForwardPath(Protocol):
    """What forwards between m1 and m2 in M."""

    name: str
    router: bool  # frames are addressed to m1 (True) or to the next hop beyond M

    def start(self, topo: Topology) -> dict[str, Any]: ...

    def processed(self, topo: Topology) -> int: ...

    def stop(self, topo: Topology) -> dict[str, Any]: ...


class KernelPath:
    """The kernel routing in M with a ruleset loaded by `tool` (a key of KERNEL_TOOLS)."""

    router = True

    def __init__(self, tool: str, rules_file: Path, timeout: float, name: str = "") -> None:
        if tool not in KERNEL_TOOLS:
            raise ValueError(f"unknown kernel tool {tool!r} (known: {', '.join(KERNEL_TOOLS)})")
        self.tool = tool
        self.name = name or tool
        self.rules_file = rules_file
        self.timeout = timeout

    def start(self, topo: Topology) -> dict[str, Any]:
        loader, _ = KERNEL_TOOLS[self.tool]
        if not shutil.which(loader[0]):
            raise PathError(f"{loader[0]} is not installed")
        started = time.perf_counter()
        try:
            _in_ns(topo.m, *loader, str(self.rules_file), timeout=self.timeout)
        except subprocess.TimeoutExpired:
            self.stop(topo)
            raise PathError(f"{loader[0]} did not load the rules in {self.timeout:.0f} s") from None
        except subprocess.CalledProcessError as e:
            self.stop(topo)
            raise PathError(f"{loader[0]} failed: {e.stderr.strip()[:500]}") from None
        load_s = time.perf_counter() - started
        topo.set_forwarding(True)
        return {"load_s": load_s}

    def processed(self, topo: Topology) -> int:
        return topo.link_rx_packets(topo.m, "m1")

    def stop(self, topo: Topology) -> dict[str, Any]:
        topo.set_forwarding(False)
        started = time.perf_counter()
        _in_ns(topo.m, *KERNEL_TOOLS[self.tool][1], timeout=self.timeout)
        return {"flush_s": time.perf_counter() - started}


def _forward(
    graph: Graph,
    bindings: Mapping[str, str],
    burst: int,
    ns: str,
    cpu: int,
    ready: Event,
    stop: Event,
    received: Synchronized[int],
    results: Connection,
) -> None:
    """The NF process: `NfRunner` steps on AF_PACKET ports in M until `stop`."""
    from nfaas.worker.nf_runner import NfRunner

    _pin(cpu)
    opened: dict[str, AfPacketPort] = {}
    try:
        for ifname in dict.fromkeys(bindings.values()):
            opened[ifname] = AfPacketPort(ifname, netns=ns, port_id=len(opened))
        ports = {name: opened[ifname] for name, ifname in bindings.items()}
        runner = NfRunner(graph, dict(ports), report=lambda _report: None, burst=burst)
        ready.set()
        total = 0
        while not stop.is_set():
            total += runner.step()
            received.value = total
        results.send(
            {
                "ports": {name: dataclasses.asdict(p.stats()) for name, p in opened.items()},
                "operators": graph.counters(),
            }
        )
    except BaseException as e:  # reported to the parent, which raises PathError
        results.send({"error": f"{type(e).__name__}: {e}"})
    finally:
        for port in opened.values():
            port.close()


class GraphPath:
    """An NF graph forwarding in M, in a process of its own on the forwarder CPU.

    `bindings` maps each of the graph's port names to an interface of M ("m1" or "m2");
    several names may share an interface. `burst` is the most packets the loop takes from a
    port per round (a `runtime: nf` instance takes 256).
    """

    router = False

    def __init__(
        self, name: str, graph: Graph, bindings: Mapping[str, str], burst: int = BURST
    ) -> None:
        graph.validate()
        unknown = sorted(set(bindings.values()) - {"m1", "m2"})
        if unknown:
            raise ValueError(f"graph ports can only be bound to m1 and m2, not {unknown}")
        self.name = name
        self.graph = graph
        self.bindings = dict(bindings)
        self.burst = burst
        self._process: Any = None

    def start(self, topo: Topology) -> dict[str, Any]:
        self._received: Synchronized[int] = _FORK.RawValue("q", 0)
        self._stop = _FORK.Event()
        ready = _FORK.Event()
        self._results, child_end = _FORK.Pipe(duplex=False)
        self._process = _FORK.Process(
            target=_forward,
            args=(
                self.graph,
                self.bindings,
                self.burst,
                topo.m,
                topo.forwarder_cpu,
                ready,
                self._stop,
                self._received,
                child_end,
            ),
            name=f"nfb-{self.name}",
            daemon=True,
        )
        self._process.start()
        child_end.close()
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not ready.wait(0.1):
            if not self._process.is_alive() or time.monotonic() > deadline:
                report = self._collect(1.0)
                raise PathError(f"NF {self.name} did not start: {report.get('error', 'no answer')}")
        return {}

    def processed(self, topo: Topology) -> int:
        return int(self._received.value)

    def _collect(self, timeout: float) -> dict[str, Any]:
        report: dict[str, Any] = {}
        if self._results.poll(timeout):
            with suppress(EOFError):
                report = self._results.recv()
        self._process.join(5.0)
        if self._process.is_alive():
            os.kill(self._process.pid, 9)  # our own child, by its pid
            self._process.join()
        self._results.close()
        return report

    def stop(self, topo: Topology) -> dict[str, Any]:
        if self._process is None:
            return {}
        self._stop.set()
        report = self._collect(30.0)
        self._process = None
        if "error" in report:
            return {"nf_error": report["error"]}
        ports = report.get("ports", {})
        return {
            "nf_ring_drops": sum(p["rx_dropped"] for p in ports.values()),
            "nf_ports": ports,
            "nf_drops": _operator_drops(report.get("operators", [])),
        }


def _operator_drops(operators: list[dict[str, Any]]) -> dict[str, int]:
    """Drops by reason over all operators of a graph's counters."""
    drops: dict[str, int] = {}
    for op in operators:
        for reason, count in (op.get("drops") or {}).items():
            drops[reason] = drops.get(reason, 0) + int(count)
    return drops


# --- one measurement ------------------------------------------------------------------------


def _backlog(cpu: int) -> int:
    """Frames queued on `cpu`'s input backlog (/proc/net/softnet_stat, 12th column)."""
    with open("/proc/net/softnet_stat") as stat:
        for line in stat:
            fields = line.split()
            if len(fields) >= 13 and int(fields[12], 16) == cpu:
                return int(fields[11], 16)
    return 0


def _drain(topo: Topology, path: ForwardPath, timeout: float = DRAIN_TIMEOUT_S) -> float | None:
    """Wait until M has nothing left to forward; seconds waited, None if it never got there."""
    started = time.monotonic()
    last = path.processed(topo)
    while time.monotonic() - started < timeout:
        time.sleep(0.05)
        now = path.processed(topo)
        if now == last and _backlog(topo.forwarder_cpu) == 0:
            return time.monotonic() - started
        last = now
    return None


def _cpu_jiffies(cpu: int) -> tuple[int, int]:
    """(busy, all but steal) jiffies of `cpu` from /proc/stat: busy is user, nice, system,
    irq and softirq time, whoever it was spent for."""
    with open("/proc/stat") as stat:
        for line in stat:
            if line.startswith(f"cpu{cpu} "):
                user, nice, system, idle, iowait, irq, softirq = map(int, line.split()[1:8])
                busy = user + nice + system + irq + softirq
                return busy, busy + idle + iowait
    return 0, 0


def _per_second(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else 0.0


def _rate_window(
    topo: Topology,
    path: ForwardPath,
    frames: PacketBatch,
    seconds: float,
    warmup: float,
    pps: float | None = None,
) -> dict[str, Any]:
    """Send `frames` from A (as fast as it can, or at `pps`); counts over a window of
    `seconds` after `warmup`."""
    with MarkerCounter(topo.b, "b0", RATE_MARKER) as delivered:
        delivered.take()
        processed_before = path.processed(topo)
        sender = Sender(topo, frames.split(BURST), pps=pps)
        sender.start()
        try:
            time.sleep(warmup)
            early = delivered.take()
            busy0, total0 = _cpu_jiffies(topo.forwarder_cpu)
            t0 = time.perf_counter()
            sent0, arrived0 = sender.count, topo.link_rx_packets(topo.m, "m1")
            processed0 = path.processed(topo)
            time.sleep(seconds)
            window = time.perf_counter() - t0
            sent = sender.count - sent0
            arrived = topo.link_rx_packets(topo.m, "m1") - arrived0
            processed = path.processed(topo) - processed0
            got = delivered.take()
            busy1, total1 = _cpu_jiffies(topo.forwarder_cpu)
        finally:
            sender.stop()
        # the share delivered is taken over the whole drained run: a window's two counters
        # are read moments apart, and the frames queued between them skew a short window
        time.sleep(DRAIN_S)
        delivered_all = early + got + delivered.take()
        processed_all = path.processed(topo) - processed_before
    busy = (busy1 - busy0) / (total1 - total0) if total1 > total0 else None
    processed_kpps = _per_second(processed, window) / 1e3
    return {
        "offered_pps": pps,
        "window_s": window,
        "sent": sent,
        "arrived": arrived,
        "processed": processed,
        "delivered": got,
        "sent_kpps": _per_second(sent, window) / 1e3,
        "arrived_kpps": _per_second(arrived, window) / 1e3,
        "processed_kpps": processed_kpps,
        "delivered_kpps": _per_second(got, window) / 1e3,
        "delivered_share": delivered_all / processed_all if processed_all else None,
        "kept_up": processed >= KEPT_UP * sent,
        # share of the forwarder CPU's time that was busy (anyone's work, other jobs too)
        "forwarder_cpu_busy": busy,
    }


def _sustained(
    topo: Topology,
    path: ForwardPath,
    frames: PacketBatch,
    blast: dict[str, Any],
    *,
    seconds: float,
    warmup: float,
    steps: int,
) -> dict[str, Any]:
    """The highest offered rate the forwarder keeps up with (processes >= KEPT_UP of it).

    A forwarder sharing its core with the kernel's receive work can do less under overload
    than below it (the kernel fills a ring that the process then has no time to empty), so
    the blast alone understates it. Bisection (geometric) between half of what the blast got
    processed and what it sent, `steps` trials; the best trial that kept up is the result.
    """
    if blast["kept_up"]:
        return {"processed_kpps": blast["processed_kpps"], "offered_kpps": None, "trials": []}
    lo = max(1.0, blast["processed_kpps"] * 1e3 / 2)
    hi = max(lo * 1.01, blast["sent_kpps"] * 1e3)
    best: dict[str, Any] | None = None
    trials = []
    for _ in range(steps):
        mid = (lo * hi) ** 0.5
        trial = _rate_window(topo, path, frames, seconds, warmup, pps=mid)
        trials.append(trial)
        if trial["kept_up"]:
            lo = mid
            if best is None or trial["processed_kpps"] > best["processed_kpps"]:
                best = trial
        else:
            hi = mid
    peak = max(trials, key=lambda t: t["processed_kpps"])
    return {
        "processed_kpps": None if best is None else best["processed_kpps"],
        "delivered_kpps": None if best is None else best["delivered_kpps"],
        "offered_kpps": None if best is None else best["offered_pps"] / 1e3,
        "peak_processed_kpps": peak["processed_kpps"],
        "trials": trials,
    }


def _latency(topo: Topology, path: ForwardPath, probes: PacketBatch, pps: float) -> dict[str, Any]:
    """One-way latency of `probes`, sent one at a time at `pps` (see the module docstring)."""
    # v2: a slot per frame, one look at every slot (a v3 walk given many retired blocks in
    # one call can come round to blocks it has not handed back yet, and read them twice)
    receiver = AfPacketPort("b0", netns=topo.b, rx_ring="v2", block_count=64)
    try:
        sender = Sender(topo, probes.split(1), pps=pps, stamped=True)
        sender.start()
        sender.join(len(probes) / pps + 30.0)
        drained = _drain(topo, path)
        time.sleep(0.02)  # the receiving ring hands over a block within 1 ms
        batches = []
        while len(batch := receiver.recv_batch(4096, 0.05)):
            batches.append(batch)
    finally:
        receiver.close()
    assert sender.stamps is not None
    sent_ns = np.frombuffer(sender.stamps, np.int64)
    latencies: list[float] = []
    for batch in batches:
        long_enough = np.flatnonzero(batch.lengths >= 8)
        tail = batch.lengths[long_enough]
        marked = batch.read_uint(tail - 4, 4, long_enough) == PROBE_MARKER
        rows = long_enough[marked]
        seq = batch.read_uint(batch.lengths[rows] - 8, 4, rows).astype(np.int64)
        ok = (seq < sent_ns.size) & (sent_ns[np.minimum(seq, sent_ns.size - 1)] > 0)
        one_way = batch.timestamps_ns[rows[ok]] - sent_ns[seq[ok]]
        latencies.extend((one_way / 1e3).tolist())
    stats = summary(latencies)
    return {
        "probes": len(probes),
        "pps": pps,
        "received": len(latencies),
        "drained": drained is not None,
        **{f"{k}_us": v for k, v in stats.items() if k != "n"},
    }


def measure_path(
    topo: Topology,
    path: ForwardPath,
    frames: PacketBatch,
    probes: PacketBatch | None,
    *,
    seconds: float,
    warmup: float,
    latency_seconds: float,
    steps: int = 5,
) -> dict[str, Any]:
    """Rate (blast, then the sustained rate) and latency through one forwarder; frames are
    re-addressed as the path wants."""
    mac = topo.m1_mac if path.router else SINK_MAC
    frames = with_dst_mac(frames, mac)
    result: dict[str, Any] = {"path": path.name, "router": path.router}
    try:
        result.update(path.start(topo))
    except PathError as e:
        return {**result, "status": "error", "error": str(e)}
    try:
        result["rate"] = _rate_window(topo, path, frames, seconds, warmup)
        result["sustained"] = _sustained(
            topo, path, frames, result["rate"], seconds=seconds, warmup=warmup, steps=steps
        )
        result["drain_s"] = _drain(topo, path)
        if probes is not None:
            processed_pps = 1e3 * max(
                result["rate"]["processed_kpps"], result["sustained"]["processed_kpps"] or 0.0
            )
            pps = min(PROBE_PPS, max(5.0, processed_pps / 2))
            count = min(len(probes), max(MIN_PROBES, int(pps * latency_seconds)))
            picked = with_dst_mac(probes[np.arange(count)], mac)
            result["latency"] = _latency(topo, path, picked, pps)
    finally:
        result.update(path.stop(topo))
    result["status"] = "error" if "nf_error" in result else "ok"
    return result


# --- the firewall experiment ----------------------------------------------------------------

LIVE_FLOWS = 65536  # distinct frames A cycles through (5-tuples from generate_packets)
LIVE_SECONDS = 2.0
QUICK_LIVE_SECONDS = 1.0
LIVE_WARMUP = 0.5
QUICK_LIVE_WARMUP = 0.2
LATENCY_SECONDS = 1.0
QUICK_LATENCY_SECONDS = 0.3
SEARCH_STEPS = 5
QUICK_SEARCH_STEPS = 1
LIVE_MAX_RULES = 1_000_000
TARGET_KPPS = 100.0
LARGE_BURST = 4096  # a second setting of the NF loop's burst, to show the cost per batch


def firewall_paths(
    classifier: Any, files: Mapping[str, Path], tools: Sequence[str], timeout: float
) -> list[ForwardPath]:
    """The kernel with each tool's ruleset file, then our firewall graph with and without
    connection tracking and verdict cache, each taking bursts of 256 and of `LARGE_BURST`
    packets (what a `runtime: nf` instance takes: NF_BURST)."""
    from nfaas.vnfs.firewall import Firewall, firewall_graph

    bindings = {"inside": "m1", "outside": "m2"}
    paths: list[ForwardPath] = [KernelPath(tool, files[tool], timeout) for tool in tools]
    for burst in (BURST, LARGE_BURST):
        suffix = "" if burst == BURST else f" (burst {burst})"
        stateful = firewall_graph(Firewall(classifier))
        stateless = firewall_graph(Firewall(classifier, conntrack=False, flow_cache=False))
        paths.append(GraphPath(f"ours{suffix}", stateful, bindings, burst))
        paths.append(GraphPath(f"ours-stateless{suffix}", stateless, bindings, burst))
    return paths


def live_rule_count(
    n: int,
    workdir: Path,
    *,
    seconds: float,
    warmup: float,
    latency_seconds: float,
    steps: int,
    tools: Sequence[str],
    load_timeout: float,
    echo: bool = False,
) -> dict[str, Any]:
    """Every path's rate and latency with the same `n` generated rules."""
    from nfaas.bench.nf import IPV6_SHARE, PACKET_SEED, RULE_SEED, iptables_restore_text
    from nfaas.vnfs.firewall.classifier import Classifier
    from nfaas.vnfs.firewall.generate import generate_packets, generate_rules
    from nfaas.vnfs.firewall.nft import Ruleset, format_ruleset
    from nfaas.vnfs.firewall.rules import Action

    table = generate_rules(n, RULE_SEED, ipv6_share=IPV6_SHARE)
    classifier = Classifier.compile(table, Action.ACCEPT)
    keys = generate_packets(table, LIVE_FLOWS, PACKET_SEED, version=4)
    verdicts = classifier.verdicts(classifier.classify(keys))
    accepted = np.flatnonzero(verdicts == Action.ACCEPT.code)
    frames = live_frames(keys, SINK_MAC)
    probe_count = max(MIN_PROBES, int(PROBE_PPS * latency_seconds))
    probes = probe_frames(keys, accepted, probe_count, SINK_MAC)
    files = {"nft": workdir / f"live-{n}.nft", "iptables-restore": workdir / f"live-{n}.iptables"}
    files["iptables-legacy-restore"] = files["iptables-restore"]
    if "nft" in tools:
        files["nft"].write_text(format_ruleset(Ruleset(list(table), Action.ACCEPT)))
    if {"iptables-restore", "iptables-legacy-restore"} & set(tools):
        files["iptables-restore"].write_text(iptables_restore_text(table))
    row: dict[str, Any] = {
        "rules": n,
        "flows": LIVE_FLOWS,
        "frame_bytes": FRAME_BYTES,
        "accept_share": float(accepted.size / len(verdicts)),
        "paths": {},
    }
    with topology() as topo:
        row["cpus"] = {"sender": topo.sender_cpu, "forwarder": topo.forwarder_cpu}
        for path in firewall_paths(classifier, files, tools, load_timeout):
            if echo:
                print(f"  {n:,} rules: {path.name} ...", flush=True)
            row["paths"][path.name] = measure_path(
                topo,
                path,
                frames,
                probes,
                seconds=seconds,
                warmup=warmup,
                latency_seconds=latency_seconds,
                steps=steps,
            )
    for f in set(files.values()):
        f.unlink(missing_ok=True)
    return row


# --- tables, targets, plot ------------------------------------------------------------------


def _kpps(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.1f}" if value < 100 else f"{value:,.0f}"


def _us(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:,.0f}" if value >= 10 else f"{value:.1f}"


PATH_HEADER = ["blast kpps", "sustained kpps", "delivered kpps (blast)", "Gb/s @1500 B",
               "p50 µs", "p99 µs"]  # fmt: skip


def path_cells(result: dict[str, Any] | None) -> list[str]:
    """The PATH_HEADER cells of one path's result."""
    if result is None:
        return ["-"] * len(PATH_HEADER)
    if result.get("status") != "ok":
        return [result.get("status", "error")] + ["-"] * (len(PATH_HEADER) - 1)
    rate, sustained = result["rate"], result["sustained"]
    best = max(rate["processed_kpps"], sustained["processed_kpps"] or 0.0)
    latency = result.get("latency") or {}
    return [
        _kpps(rate["processed_kpps"]),
        _kpps(sustained["processed_kpps"]),
        _kpps(rate["delivered_kpps"]),
        f"{gbps_at_1500(best * 1e3):.2f}",
        _us(latency.get("p50_us")),
        _us(latency.get("p99_us")),
    ]


def best_kpps(result: dict[str, Any] | None) -> float | None:
    """The higher of the blast's and the sustained processed rate (kpps)."""
    if not result or result.get("status") != "ok":
        return None
    return float(max(result["rate"]["processed_kpps"], result["sustained"]["processed_kpps"] or 0))


def live_tables(results: dict[str, Any]) -> list[tuple[str, list[str], list[list[str]]]]:
    rows = results["rows"]
    names = list(dict.fromkeys(name for r in rows for name in r["paths"]))
    header = ["rules", "path", *PATH_HEADER, "vs nft"]
    table = []
    for r in rows:
        nft = best_kpps(r["paths"].get("nft"))
        for name in names:
            result = r["paths"].get(name)
            mine = best_kpps(result)
            ratio = f"{mine / nft:.2f}x" if mine is not None and nft else "-"
            table.append([f"{r['rules']:,}", name, *path_cells(result), ratio])
    return [("firewall: live forwarding A -> M -> B (64-byte frames)", header, table)]


def live_targets(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Issue 4's target: live forwarding through the firewall NF >= 100 kpps."""
    verdicts: dict[str, dict[str, Any]] = {}
    for r in rows:
        for name in (n for n in r["paths"] if n.startswith("ours")):
            kpps = best_kpps(r["paths"].get(name))
            if kpps is None:
                continue
            verdicts.setdefault(name, {})[str(r["rules"])] = {
                "kpps": kpps,
                "met": kpps >= TARGET_KPPS,
                "short_by": None if kpps >= TARGET_KPPS else 1 - kpps / TARGET_KPPS,
            }
    return {"target_kpps": TARGET_KPPS, "by_path": verdicts}


def _plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    names = list(dict.fromkeys(name for r in rows for name in r["paths"]))
    fig, (rate_ax, lat_ax) = plt.subplots(1, 2, figsize=(11, 4))
    for name in names:
        points = [(r["rules"], best_kpps(r["paths"].get(name))) for r in rows]
        points = [(x, y) for x, y in points if y]
        if points:
            rate_ax.plot(*zip(*points, strict=True), "o-", label=name)
        lat = [
            (r["rules"], r["paths"][name]["latency"].get("p50_us"))
            for r in rows
            if r["paths"].get(name, {}).get("status") == "ok"
            and r["paths"][name].get("latency", {}).get("p50_us")
        ]
        if lat:
            lat_ax.plot(*zip(*lat, strict=True), "o-", label=name)
    rate_ax.axhline(TARGET_KPPS, color="grey", linestyle=":", label="target 100 kpps")
    rate_ax.set(xscale="log", yscale="log", xlabel="rules", ylabel="kpps processed (best)")
    rate_ax.set_title("Live forwarding rate (64-byte frames)")
    rate_ax.legend(fontsize="small")
    lat_ax.set(xscale="log", yscale="log", xlabel="rules", ylabel="one-way latency p50 (µs)")
    lat_ax.set_title("One-way latency at low rate")
    lat_ax.legend(fontsize="small")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def live_forwarding(
    rule_counts: Sequence[int],
    *,
    seconds: float = LIVE_SECONDS,
    warmup: float = LIVE_WARMUP,
    latency_seconds: float = LATENCY_SECONDS,
    steps: int = SEARCH_STEPS,
    max_rules: int = LIVE_MAX_RULES,
    tools: Sequence[str] = tuple(KERNEL_TOOLS),
    load_timeout: float = 300.0,
    out_dir: Path | None = None,
    echo: bool = True,
) -> dict[str, Any]:
    """The live experiment; saves ``nf-live.json`` and ``.png`` in `out_dir`."""
    import tempfile

    from nfaas.bench.nf import tool_versions
    from nfaas.bench.report import RESULTS, markdown, print_table, save

    counts = [n for n in rule_counts if n <= max_rules]
    results: dict[str, Any] = {
        "experiment": "nf-live",
        "parameters": {
            "rule_counts": counts,
            "skipped_rule_counts": [n for n in rule_counts if n > max_rules],
            "seconds": seconds,
            "warmup_s": warmup,
            "latency_seconds": latency_seconds,
            "search_steps": steps,
            "kept_up_share": KEPT_UP,
            "frame_bytes": FRAME_BYTES,
            "flows": LIVE_FLOWS,
            "bursts": [BURST, LARGE_BURST],
            "probe_pps_max": PROBE_PPS,
            "kernel_tools": list(tools),
            "load_timeout_s": load_timeout,
        },
        "tools": tool_versions(),
        "rows": [],
    }
    with off_the_forwarder_cpu(), tempfile.TemporaryDirectory(prefix="nfaas-live-") as tmp:
        for n in counts:
            if echo:
                print(f"live: {n:,} rules ...", flush=True)
            results["rows"].append(
                live_rule_count(
                    n,
                    Path(tmp),
                    seconds=seconds,
                    warmup=warmup,
                    latency_seconds=latency_seconds,
                    steps=steps,
                    tools=tools,
                    load_timeout=load_timeout,
                    echo=echo,
                )
            )
    results["targets"] = live_targets(results["rows"])
    tables = live_tables(results)
    if echo:
        for title, header, rows in tables:
            print_table(title, header, rows)
    results["markdown"] = "\n\n".join(markdown(header, rows) for _, header, rows in tables)
    saved = save("nf-live", results, out_dir or RESULTS)
    if results["rows"]:
        _plot(results, saved.with_suffix(".png"))
    if echo:
        print(f"results: {saved}")
    return results
