"""`network: bridged`: container instances get a veth on the node's bridge, addressed from
198.18.0.0/15 with no route out, and reach each other over it."""

from __future__ import annotations

import os
import shutil

import pytest
from platform_harness import Platform

pytestmark = pytest.mark.skipif(
    not shutil.which("runc") or not shutil.which("ip") or os.getuid() != 0,
    reason="bridged containers need runc, iproute2 and root",
)

ECHO = """
import os, socket, threading

ADDRESS = os.environ["NFAAS_ADDRESS"]
_sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
_sock.bind((ADDRESS, 9999))


def _echo():
    while True:
        data, peer = _sock.recvfrom(2048)
        _sock.sendto(b"echo:" + data, peer)


threading.Thread(target=_echo, daemon=True).start()


def handle(event, context):
    return {"address": ADDRESS}
"""

CLIENT = """
import os, socket


def routes():
    with open("/proc/net/route") as table:
        rows = [line.split() for line in table.read().splitlines()[1:]]
    return [(r[0], r[1], r[7]) for r in rows]  # interface, destination, mask (hex, little endian)


def handle(event, context):
    if event.query.get("what") == "routes":
        return {"address": os.environ["NFAAS_ADDRESS"], "routes": routes()}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(3)
        sock.sendto(b"ping", (event.query["to"], 9999))
        data, _ = sock.recvfrom(2048)
    return {"reply": data.decode()}
"""

SPEC = {"isolation": "container", "network": "bridged", "scale": {"max": 1, "idle_timeout": "60s"}}


def test_bridged_instances_reach_each_other(platform: Platform) -> None:
    platform.deploy("br-echo", ECHO, SPEC)
    platform.deploy("br-client", CLIENT, SPEC)
    echo = platform.invoke("br-echo")
    assert echo.status_code == 200, echo.text
    address = echo.json()["address"]
    assert address.startswith("198.1")  # from 198.18.0.0/15
    reply = platform.invoke("br-client", params={"to": address})
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"reply": "echo:ping"}


def test_bridged_instance_has_no_route_out(platform: Platform) -> None:
    platform.deploy("br-client", CLIENT, SPEC)
    answer = platform.invoke("br-client", params={"what": "routes"}).json()
    assert answer["routes"] == [["eth0", "000012C6", "0000FEFF"]]  # 198.18.0.0/15 only
    assert "00000000" not in [r[1] for r in answer["routes"]]  # no default route


def test_bridged_needs_the_container_tier(platform: Platform) -> None:
    sha = platform.upload({"handler.py": "def handle(e, c):\n    return 1\n"})
    body = {"name": "br-bad", "bundle": sha, "spec": {"network": "bridged"}}
    answer = platform.request("POST", "/system/functions", json=body)
    assert answer.status_code == 400
    assert answer.json()["field"] == "network"
