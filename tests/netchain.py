"""Test networks: namespaces A, M, B in a line (a0 in A <-> m1 in M, m2 in M <-> b0 in B).

No routes out, IPv6 off, M forwards nothing by itself; A and B get one address each from
198.18.0.0/15. Whatever connects m1 and m2 (an NF, a forwarding loop) is the test's."""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass
class Chain:
    a: str
    m: str
    b: str


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, text=True)


def sysctl(ns: str, *settings: str) -> None:
    subprocess.run(
        ["ip", "netns", "exec", ns, "sysctl", "-qw", *settings], check=True, capture_output=True
    )


@contextmanager
def chain(prefix: str, a_ip: str, b_ip: str, prefix_len: int = 24) -> Iterator[Chain]:
    tag = secrets.token_hex(3)
    names = Chain(f"{prefix}-{tag}-a", f"{prefix}-{tag}-m", f"{prefix}-{tag}-b")
    made: list[str] = []
    try:
        for ns in (names.a, names.m, names.b):
            ip("netns", "add", ns)
            made.append(ns)
            sysctl(ns, "net.ipv6.conf.all.disable_ipv6=1", "net.ipv6.conf.default.disable_ipv6=1",
                   "net.ipv4.ip_forward=0")  # fmt: skip
        ip(
            "-n",
            names.a,
            "link",
            "add",
            "a0",
            "type",
            "veth",
            "peer",
            "name",
            "m1",
            "netns",
            names.m,
        )
        ip(
            "-n",
            names.m,
            "link",
            "add",
            "m2",
            "type",
            "veth",
            "peer",
            "name",
            "b0",
            "netns",
            names.b,
        )
        ip("-n", names.a, "addr", "add", f"{a_ip}/{prefix_len}", "dev", "a0")
        ip("-n", names.b, "addr", "add", f"{b_ip}/{prefix_len}", "dev", "b0")
        for ns, dev in ((names.a, "a0"), (names.m, "m1"), (names.m, "m2"), (names.b, "b0")):
            ip("-n", ns, "link", "set", dev, "up")
        yield names
    finally:
        for ns in made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
