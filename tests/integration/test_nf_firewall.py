"""The nf-firewall example deployed on the platform between two namespaces: its rules decide
new connections, replies pass by connection tracking, its control API changes the rules."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from platform_harness import Platform, wait_until

from netchain import Chain, chain
from nfaas.nf.ports import netns

pytestmark = pytest.mark.skipif(os.getuid() != 0, reason="NF ports need root")

EXAMPLE = Path(__file__).parents[2] / "examples" / "nf-firewall"
# Inside addresses of the example's rules.nft (198.18.0.0/24).
A_IP, B_IP = "198.18.0.1", "198.18.0.2"


@pytest.fixture
def net() -> Iterator[Chain]:
    with chain("nfw", A_IP, B_IP) as names:
        yield names


def udp(ns: str, address: str, port: int) -> socket.socket:
    with netns(ns):
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, port))
    sock.settimeout(0.3)
    return sock


def answered(net: Chain, port: int, tries: int = 10) -> bool:
    """A datagram A -> B:port, echoed back by B: did the echo reach A?"""
    with udp(net.b, B_IP, port) as server, udp(net.a, A_IP, 0) as client:
        for _ in range(tries):
            client.sendto(b"ping", (B_IP, port))
            try:
                data, peer = server.recvfrom(100)
                server.sendto(data, peer)  # the reply: no rule lets B reach A's port
                return client.recvfrom(100)[0] == b"ping"
            except TimeoutError:
                continue
    return False


def test_firewall_function(platform: Platform, net: Chain, unique_name) -> None:  # type: ignore[no-untyped-def]
    name = unique_name("fw")
    files = {p.name: p.read_bytes() for p in EXAMPLE.iterdir() if p.suffix in (".py", ".nft")}
    sha = platform.upload(files)  # type: ignore[arg-type]
    ports = {"inside": f"afpacket:m1?netns={net.m}", "outside": f"afpacket:m2?netns={net.m}"}
    spec = {"runtime": "nf", "ports": ports, "scale": {"min": 1, "max": 1}}
    answer = platform.request(
        "POST", "/system/functions", json={"name": name, "bundle": sha, "spec": spec}
    )
    assert answer.status_code == 202, answer.text
    assert wait_until(lambda: platform.status(name)["replicas"] == 1, 20)

    assert answered(net, 53)  # "dns out" is allowed; its reply passes by conntrack
    assert not answered(net, 9, tries=3)  # no rule: dropped by the policy

    rules = platform.invoke(name + "/rules", method="GET").text
    assert 'comment "dns out"' in rules
    added = platform.invoke(name + "/rules", b"ip daddr 198.18.0.2 udp dport 9 accept\n")
    assert added.status_code == 201, added.text
    assert answered(net, 9)  # the new rule takes effect on the running NF
    bad = platform.invoke(name + "/rules", b"ip daddr 198.18.0.999 accept\n")
    assert bad.status_code == 400 and bad.json()["line"] == 1
