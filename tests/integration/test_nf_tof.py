"""The TOF example function on the platform: the seed's /service API through the gateway,
and a registered service's uplink traffic decapsulated towards the edge port."""

from __future__ import annotations

import ipaddress
import os
import secrets
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from platform_harness import Platform, wait_until

from nfaas.nf import build as B
from nfaas.nf.ports import netns

pytestmark = pytest.mark.skipif(os.getuid() != 0, reason="NF ports need root")

HANDLER = (Path(__file__).parents[2] / "examples" / "nf-tof" / "handler.py").read_text()
ENB, SGW, UE = "198.18.40.1", "198.18.40.2", "198.19.1.10"
SERVICE = {"name": "cache", "serviceIP": "198.19.50.1", "applicationIP": "198.18.200.10"}


@pytest.fixture
def s1u() -> Iterator[str]:
    """One namespace, three veth pairs: r0-r1 (RAN side), c0-c1 (core), e0-e1 (edge)."""
    ns = f"nft-{secrets.token_hex(3)}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        for a, b in (("r0", "r1"), ("c0", "c1"), ("e0", "e1")):
            ip = ["ip", "-n", ns, "link"]
            subprocess.run([*ip, "add", a, "type", "veth", "peer", "name", b], check=True)
            for dev in (a, b):
                subprocess.run([*ip, "set", dev, "up"], check=True)
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def raw(ns: str, dev: str) -> socket.socket:
    with netns(ns):
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
    sock.bind((dev, 3))
    sock.settimeout(0.2)
    return sock


def ipv4_dst(frame: bytes) -> str | None:
    if len(frame) < 34 or frame[12:14] != b"\x08\x00":
        return None
    return str(ipaddress.ip_address(frame[30:34]))


def test_tof_function_api_and_offload(platform: Platform, s1u: str, unique_name) -> None:  # type: ignore[no-untyped-def]
    name = unique_name("tof")
    ports = {dev: f"afpacket:{iface}?netns={s1u}" for dev, iface in
             (("ran", "r1"), ("core", "c1"), ("edge", "e1"))}  # fmt: skip
    platform.deploy(name, HANDLER, {"runtime": "nf", "ports": ports, "scale": {"min": 1, "max": 1}})
    assert wait_until(lambda: platform.status(name)["replicas"] == 1, 20)

    def call(method: str, path: str, body: object = None) -> tuple[int, object]:
        answer = platform.request(method, f"/function/{name}{path}", json=body)
        return answer.status_code, answer.json()

    assert call("GET", "/service") == (200, [])
    assert call("POST", "/service", SERVICE) == (200, SERVICE)
    status, error = call("POST", "/service", {**SERVICE, "serviceIP": "198.19.50.2"})
    assert status == 409 and "cache" in str(error)
    status, error = call("PUT", "/service/cache", {**SERVICE, "serviceIP": "198.19.50"})
    assert status == 400 and error == {
        "error": "serviceIP: '198.19.50' is not an IPv4 address", "field": "serviceIP"
    }  # fmt: skip
    assert call("PUT", "/service/nope", {**SERVICE, "name": "nope"})[0] == 404
    assert call("DELETE", "/service/nope")[0] == 404
    assert call("GET", "/service") == (200, [SERVICE])

    inner = B.udp_frame(UE, SERVICE["serviceIP"], 40000, 5000, b"to the edge")[14:]
    uplink = B.gtpu_frame(ENB, SGW, 0x1234, inner)
    with raw(s1u, "r0") as ran, raw(s1u, "e0") as edge:
        seen: list[str | None] = []
        deadline = time.monotonic() + 10
        while SERVICE["applicationIP"] not in seen and time.monotonic() < deadline:
            ran.send(uplink)
            try:
                while True:
                    seen.append(ipv4_dst(edge.recv(65536)))
            except TimeoutError:
                pass
    assert SERVICE["applicationIP"] in seen, seen
    assert call("DELETE", "/service/cache") == (200, SERVICE)
    assert call("GET", "/service") == (200, [])
