"""`runtime: nf` functions through the real platform: ports handed over by the node, packets
forwarded between namespaces, waking on the first packet, fanout, counters in /metrics."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
from platform_harness import Platform, pid_gone, wait_until

from netchain import chain
from nfaas.nf import build as B
from nfaas.nf.batch import PacketBatch
from nfaas.nf.pcap import CaptureFormatError, read_capture_all, write_pcap

pytestmark = pytest.mark.skipif(os.getuid() != 0, reason="NF ports need root")

A_IP, B_IP = "198.18.20.1", "198.18.20.2"

# A wire: what comes in on "left" leaves on "right" and back; counts frames by EtherType.
WIRE = """
import numpy as np
from nfaas.nf.graph import Graph

def graph(context):
    g = Graph("wire")
    g.source("left").emit("right", name="to_right")
    g.source("right").emit("left", name="to_left")
    g.sink("left")
    g.sink("right")
    return g

def handle(event, context):
    rows = context.graph.counters()
    return {row["operator"] + "/" + row["kind"]: row["packets_in"] for row in rows}
"""

# Reads a capture, keeps UDP, writes the rest out: a batch NF with file ports.
UDP_ONLY = """
from nfaas.nf.graph import Graph

def graph(context):
    g = Graph("udp-only")
    g.source("trace").parse().filter(lambda b, h: h.protocol == 17, reason="not_udp").deparse().to("kept")
    g.sink("kept")
    return g
"""


@dataclass
class Wire:
    a: str
    m: str
    b: str

    def ping(self, count: int = 3, wait: float = 5.0) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.a, "ping", "-c", str(count), "-i", "0.2",
             "-W", str(wait), B_IP],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip

    def ports(self) -> dict[str, str]:
        return {"left": f"afpacket:m1?netns={self.m}", "right": f"afpacket:m2?netns={self.m}"}


@pytest.fixture
def wire() -> Iterator[Wire]:
    """a0 (A) -- m1 (M) ... m2 (M) -- b0 (B); M forwards nothing by itself."""
    with chain("nff", A_IP, B_IP) as names:
        yield Wire(names.a, names.m, names.b)


def metric(platform: Platform, family: str, **labels: str) -> float:
    """The value of the sample of `family` whose labels include `labels` (0 if none)."""
    wanted = {f'{k}="{v}"' for k, v in labels.items()}
    for line in platform.get("/metrics").text.splitlines():
        name, _, rest = line.partition("{")
        if name == family and wanted <= set(rest.rpartition("}")[0].split(",")):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_nf_forwards_wakes_on_first_packet_and_reports(
    platform: Platform, wire: Wire, unique_name
) -> None:  # type: ignore[no-untyped-def]
    name = unique_name("wire")
    spec = {"runtime": "nf", "ports": wire.ports(), "scale": {"min": 0, "max": 1}}
    platform.deploy(name, WIRE, spec)
    assert wait_until(lambda: platform.status(name).get("watching_for_packets"), 10)
    assert platform.status(name)["replicas"] == 0
    pinged = wire.ping(count=3)  # the first ARP request starts the instance
    assert pinged.returncode == 0, pinged.stdout + pinged.stderr
    status = platform.status(name)
    assert status["replicas"] == 1
    assert status["cold_starts"][0]["trigger"] == "packet"
    # counters of the running graph, through its control API (handle) ...
    counters = platform.invoke(name, method="GET").json()
    assert counters["to_right/emit"] >= 3 and counters["to_left/emit"] >= 3
    # ... and summed per operator in /metrics once the instance has reported
    fn = f"{name}.default"
    family = "nfaas_nf_operator_packets_total"
    to_right = {"function_name": fn, "operator": "to_right", "direction": "in"}
    assert wait_until(lambda: metric(platform, family, **to_right) >= 3, 5)
    port = {"function_name": fn, "port": "left", "counter": "rx_packets"}
    assert metric(platform, "nfaas_nf_port_total", **port) >= 3


def test_nf_scaled_out_shares_the_interface_by_fanout(
    platform: Platform, wire: Wire, unique_name
) -> None:  # type: ignore[no-untyped-def]
    name = unique_name("wire2")
    spec = {"runtime": "nf", "ports": wire.ports(), "scale": {"min": 2, "max": 2}}
    platform.deploy(name, WIRE, spec)
    assert wait_until(lambda: platform.status(name)["replicas"] == 2, 20)
    pinged = wire.ping(count=5)
    assert pinged.returncode == 0, pinged.stdout + pinged.stderr
    # Two instances on one interface without a fanout group would both forward every frame.
    assert "DUP!" not in pinged.stdout
    pids = [i["pid"] for i in platform.status(name)["instances"]]
    platform.request("DELETE", "/system/functions", json={"functionName": name})
    assert wait_until(lambda: all(pid_gone(pid) for pid in pids), 10)
    assert wire.ping(count=1, wait=1).returncode != 0  # nothing forwards any more


def test_nf_with_capture_ports(platform: Platform, unique_name) -> None:  # type: ignore[no-untyped-def]
    name = unique_name("udp-only")
    captures = platform.data_dir / "captures" / "default"
    captures.mkdir(parents=True, exist_ok=True)
    frames = [B.udp_frame(A_IP, B_IP, 1000 + i, 53, b"q") for i in range(5)]
    frames += [B.tcp_frame(A_IP, B_IP, 2000 + i, 80, b"x") for i in range(3)]
    write_pcap(captures / f"{name}.pcap", PacketBatch.from_bytes(frames, np.full(8, 10**18)))
    ports = {"trace": f"pcap:{name}.pcap", "kept": f"pcap-out:{name}-out.pcap"}
    platform.deploy(
        name, UDP_ONLY, {"runtime": "nf", "ports": ports, "scale": {"min": 1, "max": 1}}
    )
    out = captures / f"{name}-out.pcap"

    def written() -> int:
        try:
            return len(read_capture_all(out))
        except (OSError, CaptureFormatError):  # not there yet, or its header not yet
            return -1

    assert wait_until(lambda: written() == 5, 15)
    assert read_capture_all(out).to_list() == frames[:5]


def test_nf_spec_errors(platform: Platform, unique_name) -> None:  # type: ignore[no-untyped-def]
    def deploy(spec: dict[str, object]) -> tuple[int, str]:
        sha = platform.upload({"handler.py": WIRE})
        body = {"name": unique_name("bad"), "bundle": sha, "spec": spec}
        answer = platform.request("POST", "/system/functions", json=body)
        return answer.status_code, answer.text

    code, text = deploy({"runtime": "nf"})
    assert code == 400 and "ports" in text
    code, text = deploy({"runtime": "nf", "isolation": "microvm", "ports": {"a": "tap:t0"}})
    assert code == 400 and "microVM" in text
    code, text = deploy({"runtime": "nf", "ports": {"a": "pcap:/etc/shadow"}, "scale": {"max": 1}})
    assert code == 400 and "must be relative" in text
    code, text = deploy({"runtime": "nf", "ports": {"a": "afpacket:x?bogus=1"}})
    assert code == 400 and "unknown option 'bogus'" in text


def test_nf_graph_that_does_not_fit_the_manifest(
    platform: Platform, wire: Wire, unique_name
) -> None:  # type: ignore[no-untyped-def]
    name = unique_name("misfit")
    ports = {"left": wire.ports()["left"], "other": wire.ports()["right"]}
    platform.deploy(name, WIRE, {"runtime": "nf", "ports": ports, "scale": {"max": 1}})
    answer = platform.invoke(name, method="GET")
    assert answer.status_code >= 500
    logs = "\n".join(platform.logs(name))
    assert "does not bind" in logs and "'right'" in logs, logs


@pytest.mark.skipif(not shutil.which("runc"), reason="the container tier needs runc")
def test_nf_in_a_container(platform: Platform, wire: Wire, unique_name) -> None:  # type: ignore[no-untyped-def]
    name = unique_name("wire-ctr")
    spec = {
        "runtime": "nf",
        "isolation": "container",
        "ports": wire.ports(),
        "scale": {"min": 1, "max": 1},
    }
    platform.deploy(name, WIRE, spec)
    assert wait_until(lambda: platform.status(name)["replicas"] == 1, 30)
    pinged = wire.ping(count=3)
    assert pinged.returncode == 0, pinged.stdout + pinged.stderr + "\n".join(platform.logs(name))
