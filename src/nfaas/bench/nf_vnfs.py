"""Throughput of the other VNFs (load balancer, NAT, TOF) for ``nfaas bench nf``.

Each VNF is a `Workload`: a graph factory, 65,536 frames of distinct flows, and how its
ports bind to the live harness's interfaces (`nfaas.bench.nf_live`). Two measurements:

- **batch**: `Graph.run_batch` on one 65,536-packet batch, in this process on one core.
  *New* runs the batch through a fresh graph (every flow is new: Maglev picks and affinity
  entries, NAT sessions, TOF tunnels are created); *warm* runs it again through the graph
  that has just seen it (every flow is known). Medians of `repeat` runs, each on its own
  copy of the frames (the VNFs rewrite them in place). *Warm, 256 a batch* runs the same
  frames through a warm graph in batches of 256, the burst the live loop reads: the cost per
  batch (numpy calls, operator overhead) against the cost per packet.
- **live**: the graph in M between A and B, as the firewall (`nf_live.measure_path`).

A VNF whose module is missing or fails to build is reported with the reason, not measured.
"""

from __future__ import annotations

import ipaddress
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nfaas.bench.nf_live import (
    BURST,
    LATENCY_SECONDS,
    LIVE_SECONDS,
    LIVE_WARMUP,
    MIN_PROBES,
    PATH_HEADER,
    PROBE_PPS,
    RATE_MARKER,
    SEARCH_STEPS,
    SINK_MAC,
    GraphPath,
    live_frames,
    measure_path,
    off_the_forwarder_cpu,
    path_cells,
    probe_frames,
    topology,
)
from nfaas.bench.report import RESULTS, markdown, print_table, save
from nfaas.nf.batch import PacketBatch
from nfaas.nf.graph import Graph
from nfaas.vnfs.firewall.classifier import FlowKeys

__all__ = ["Workload", "batch_throughput", "vnf_rows", "vnf_throughput", "workloads"]

FLOWS = 65536
VIP = "198.18.2.100"
BACKENDS = 8
NAT_POOL = ("198.18.2.200", "198.18.2.201")
ENB, SGW = "198.18.1.10", "198.18.2.10"
SERVICE_IP, APPLICATION_IP = "198.18.50.1", "198.18.200.10"
INTERNET = "198.18.3.7"
SERVICE_SHARE = 0.1  # TOF: share of uplink packets to the offloaded service
SEED = 7
FIREWALL_RULES = 1000


@dataclass
class Workload:
    """One VNF ready to measure: `make()` builds a fresh graph that reads `frames` on
    `source`; `bindings` puts its ports on the harness's m1 / m2; `keys` (5-tuples of the
    frames) are there when latency probes can be built from them."""

    name: str
    make: Callable[[], Graph]
    frames: PacketBatch
    source: str
    bindings: dict[str, str]
    keys: FlowKeys | None = None
    live: bool = True  # measured live too (the firewall has its own live table)
    note: str = ""


def _u32(address: str) -> int:
    return int(ipaddress.IPv4Address(address))


def _client_keys(rng: np.random.Generator, n: int, dst: np.ndarray, dport: np.ndarray) -> FlowKeys:
    """`n` distinct TCP/UDP flows from clients in 198.18.1.0/24 (addresses 2..251)."""
    index = rng.permutation(250 * 64512)[:n]
    src = (_u32("198.18.1.2") + index % 250).astype(np.uint32)
    sport = (1024 + index // 250).astype(np.uint16)
    proto = np.where(rng.random(n) < 0.7, 6, 17).astype(np.uint8)
    return FlowKeys.ipv4(src, dst.astype(np.uint32), proto, sport, dport.astype(np.uint16))


def _plain(n: int) -> Workload:
    """Ports and runner alone: a graph that forwards every frame untouched."""
    rng = np.random.default_rng(SEED)
    keys = _client_keys(rng, n, np.full(n, _u32("198.18.2.50")), np.full(n, 80))

    def make() -> Graph:
        g = Graph("forward")
        g.source("in").to("out")
        g.sink("out")
        return g

    return Workload(
        "forward (no NF)", make, live_frames(keys, SINK_MAC), "in", {"in": "m1", "out": "m2"},
        keys, note="source -> sink, no parsing: the ports' and the runner's own cost",
    )  # fmt: skip


def _lb(n: int) -> Workload:
    from nfaas.vnfs.lb.affinity import FlowBalancer
    from nfaas.vnfs.lb.graph import maglev_graph

    rng = np.random.default_rng(SEED)
    keys = _client_keys(rng, n, np.full(n, _u32(VIP)), np.full(n, 80))
    names = [f"web-{i}" for i in range(BACKENDS)]
    macs = {name: f"02:00:00:00:0c:{i:02x}" for i, name in enumerate(names)}

    def make() -> Graph:
        return maglev_graph(FlowBalancer(names), f"{VIP}:80", macs=macs)

    return Workload(
        "lb (Maglev)", make, live_frames(keys, SINK_MAC), "clients",
        {"clients": "m1", "backends": "m2"}, keys,
        note=f"{BACKENDS} backends, one VIP; all packets to the VIP",
    )  # fmt: skip


def _nat(n: int) -> Workload:
    from nfaas.vnfs.nat.graph import nat_graph
    from nfaas.vnfs.nat.table import NatConfig, NatTable

    rng = np.random.default_rng(SEED)
    dst = _u32("198.18.3.0") + rng.integers(1, 255, n)
    dport = rng.choice(np.array([53, 80, 443, 8080]), n)
    keys = _client_keys(rng, n, dst, dport)
    pool = [_u32(a) for a in NAT_POOL]

    def make() -> Graph:
        return nat_graph(NatTable(NatConfig(public_addrs=pool)))

    return Workload(
        "nat (SNAT)", make, live_frames(keys, SINK_MAC), "inside",
        {"inside": "m1", "outside": "m2"}, keys,
        note=f"inside -> outside, {len(pool)} public addresses",
    )  # fmt: skip


def _tof(n: int) -> Workload:
    from nfaas.nf import build
    from nfaas.vnfs.tof import Service, ServiceRegistry, Tof, tof_graph

    if n > 65536:
        raise ValueError(f"the TOF workload has one UE per flow in 198.19.0.0/16: {n} > 65536")
    rng = np.random.default_rng(SEED)
    to_service = rng.random(n) < SERVICE_SHARE
    marker = RATE_MARKER.to_bytes(4, "big")
    eth = {"src": "02:00:00:00:01:01", "dst": SINK_MAC}
    frames = []
    for i in range(n):
        ue = str(ipaddress.IPv4Address(_u32("198.19.0.0") + i))
        dst = SERVICE_IP if to_service[i] else INTERNET
        segment = build.udp(40000, 80, bytes(18) + marker, src=ue, dst=dst)
        inner = build.ipv4(ue, dst, 17, segment)
        frames.append(build.gtpu_frame(ENB, SGW, i + 1, inner, eth=eth))

    def make() -> Graph:
        return tof_graph(Tof(ServiceRegistry([Service.of("cache", SERVICE_IP, APPLICATION_IP)])))

    return Workload(
        "tof (GTP-U offload)", make, PacketBatch.from_bytes(frames), "ran",
        {"ran": "m1", "core": "m2", "edge": "m2"},
        note=f"uplink G-PDUs, one UE (tunnel) per flow, {SERVICE_SHARE:.0%} to an offloaded "
        "service (decapsulated to the edge), the rest to the core; 100-byte frames",
    )  # fmt: skip


def _firewall(n: int) -> Workload:
    from nfaas.bench.nf import PACKET_SEED, RULE_SEED
    from nfaas.vnfs.firewall import Firewall, firewall_graph
    from nfaas.vnfs.firewall.classifier import Classifier
    from nfaas.vnfs.firewall.generate import generate_packets, generate_rules
    from nfaas.vnfs.firewall.rules import Action

    table = generate_rules(FIREWALL_RULES, RULE_SEED)
    classifier = Classifier.compile(table, Action.ACCEPT)
    keys = generate_packets(table, n, PACKET_SEED, version=4)

    def make() -> Graph:
        return firewall_graph(Firewall(classifier))

    return Workload(
        f"firewall ({FIREWALL_RULES:,} rules)", make, live_frames(keys, SINK_MAC), "inside",
        {"inside": "m1", "outside": "m2"}, keys, live=False,
        note="the stateful firewall graph (conntrack and verdict cache); live rows are in "
        "the firewall table",
    )  # fmt: skip


def workloads(flows: int = FLOWS) -> list[Workload | tuple[str, str]]:
    """Every VNF workload, or (name, why it cannot be measured)."""
    result: list[Workload | tuple[str, str]] = []
    for name, build_one in (
        ("forward (no NF)", _plain),
        ("lb (Maglev)", _lb),
        ("nat (SNAT)", _nat),
        ("tof (GTP-U offload)", _tof),
        (f"firewall ({FIREWALL_RULES:,} rules)", _firewall),
    ):
        try:
            result.append(build_one(flows))
        except Exception as e:  # a VNF still being written: say why and go on
            result.append((name, f"{type(e).__name__}: {e}"))
    return result


def _copies(frames: PacketBatch, count: int) -> list[PacketBatch]:
    return [frames.select(np.arange(len(frames))) for _ in range(count)]


def batch_throughput(workload: Workload, repeat: int) -> dict[str, Any]:
    """Packets per second through `run_batch` for new and for warm flows (one core)."""
    n = len(workload.frames)
    new_runs, warm_runs = [], []
    out_packets = 0
    for _ in range(repeat):
        graph = workload.make()
        graph.validate()
        first, again = _copies(workload.frames, 2)
        now = time.time()
        started = time.perf_counter()
        outputs = graph.run_batch({workload.source: first}, now)
        new_runs.append(time.perf_counter() - started)
        started = time.perf_counter()
        outputs = graph.run_batch({workload.source: again}, now + 0.001)
        warm_runs.append(time.perf_counter() - started)
        out_packets = sum(len(b) for b in outputs.values())
    # what the live loop does: the same warm flows in bursts of BURST packets
    graph = workload.make()
    graph.run_batch({workload.source: _copies(workload.frames, 1)[0]}, time.time())
    bursts = _copies(workload.frames, 1)[0].split(BURST)
    started = time.perf_counter()
    for burst in bursts:
        graph.run_batch({workload.source: burst}, time.time())
    burst_s = time.perf_counter() - started
    return {
        "packets": n,
        "new": _rate(new_runs, n),
        "warm": _rate(warm_runs, n),
        f"warm_burst_{BURST}": _rate([burst_s], n),
        "forwarded_share": out_packets / n,
    }


def _rate(runs: list[float], packets: int) -> dict[str, Any]:
    seconds = statistics.median(runs)
    return {
        "seconds": seconds,
        "mpps": packets / seconds / 1e6,
        "ns_per_packet": seconds * 1e9 / packets,
        "runs_s": runs,
    }


# --- the experiment -------------------------------------------------------------------------


def vnf_rows(
    *,
    seconds: float,
    warmup: float,
    latency_seconds: float,
    steps: int,
    repeat: int,
    live: bool = True,
    flows: int = FLOWS,
    echo: bool = False,
) -> list[dict[str, Any]]:
    """Batch throughput of every VNF workload, and its live rate through the harness."""
    rows: list[dict[str, Any]] = []
    ready = []
    for item in workloads(flows):
        if isinstance(item, tuple):
            rows.append({"vnf": item[0], "status": "skipped", "reason": item[1]})
            continue
        if echo:
            print(f"  {item.name}: batch ...", flush=True)
        try:
            row = {"vnf": item.name, "status": "ok", "note": item.note,
                   "frame_bytes": int(item.frames.lengths.max()),
                   "batch": batch_throughput(item, repeat)}  # fmt: skip
        except Exception as e:  # a VNF being rewritten elsewhere: say why and go on
            rows.append({"vnf": item.name, "status": "error", "reason": f"{type(e).__name__}: {e}"})
            continue
        rows.append(row)
        if item.live:
            ready.append((row, item))
    if not live or not ready:
        return rows
    with off_the_forwarder_cpu(), topology() as topo:
        for row, item in ready:
            if echo:
                print(f"  {item.name}: live ...", flush=True)
            probes = None
            if item.keys is not None:
                count = max(MIN_PROBES, int(PROBE_PPS * latency_seconds))
                probes = probe_frames(item.keys, np.arange(len(item.keys)), count, SINK_MAC)
            row["live"] = measure_path(
                topo,
                GraphPath(item.name, item.make(), item.bindings),
                item.frames,
                probes,
                seconds=seconds,
                warmup=warmup,
                latency_seconds=latency_seconds,
                steps=steps,
            )
    return rows


def vnf_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    header = ["VNF", "new Mpps (64k batch)", "warm Mpps", f"warm Mpps ({BURST} a batch)",
              *(f"live {h}" for h in PATH_HEADER)]  # fmt: skip
    table = []
    for v in rows:
        if v["status"] != "ok":
            table.append([v["vnf"], v["status"], *["-"] * (len(header) - 2)])
            continue
        b = v["batch"]
        table.append(
            [
                v["vnf"],
                f"{b['new']['mpps']:.2f}",
                f"{b['warm']['mpps']:.2f}",
                f"{b[f'warm_burst_{BURST}']['mpps']:.3f}",
                *(path_cells(v["live"]) if "live" in v else ["-"] * len(PATH_HEADER)),
            ]
        )
    return header, table


def vnf_throughput(
    *,
    seconds: float = LIVE_SECONDS,
    warmup: float = LIVE_WARMUP,
    latency_seconds: float = LATENCY_SECONDS,
    steps: int = SEARCH_STEPS,
    repeat: int = 3,
    live: bool = True,
    out_dir: Path | None = None,
    echo: bool = True,
) -> dict[str, Any]:
    """The VNF experiment; saves ``nf-vnfs.json`` in `out_dir`."""
    if echo:
        print("VNFs ...", flush=True)
    rows = vnf_rows(
        seconds=seconds,
        warmup=warmup,
        latency_seconds=latency_seconds,
        steps=steps,
        repeat=repeat,
        live=live,
        echo=echo,
    )
    header, table = vnf_table(rows)
    results: dict[str, Any] = {
        "experiment": "nf-vnfs",
        "parameters": {
            "flows": FLOWS,
            "repeat": repeat,
            "burst": BURST,
            "live": live,
            "seconds": seconds,
            "warmup_s": warmup,
            "latency_seconds": latency_seconds,
            "search_steps": steps,
        },
        "rows": rows,
        "markdown": markdown(header, table),
    }
    if echo:
        print_table("VNFs: batch throughput on one core, and live forwarding", header, table)
    saved = save("nf-vnfs", results, out_dir or RESULTS)
    if echo:
        print(f"results: {saved}")
    return results
