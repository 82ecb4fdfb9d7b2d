"""The firewall's verdicts against real nftables, the oracle, on generated traffic.

A fresh network namespace holds a veth pair with the benchmark ranges (198.18.0.0/15 and
2001:2::/48) routed as local, so every generated packet sent into one end is delivered to the
namespace's own input hook. Chain `c` holds the rule set under test, each rule counting its
matches: its counters must equal how many packets our classifier gave each rule. Chain `m`, a
later base chain on the same hook, counts each packet by its unique length: a packet reaches it
only if chain `c` did not drop or reject it, so it gives nftables' verdict per packet.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import pickle
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nfaas.nf import build
from nfaas.vnfs.firewall.classifier import Classifier, FlowKeys
from nfaas.vnfs.firewall.generate import generate_packets, generate_rules
from nfaas.vnfs.firewall.nft import Ruleset, format_ruleset
from nfaas.vnfs.firewall.rules import Action, Rule

pytestmark = pytest.mark.skipif(
    os.getuid() != 0 or not shutil.which("nft") or not shutil.which("ip"),
    reason="needs root, nft and ip",
)
SENDER = """
import pickle, socket, sys
out = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
out.bind(("fwa", 0))
for frame in pickle.load(sys.stdin.buffer):
    out.send(frame)
"""
L4_HEADER = {6: 20, 17: 8, 1: 8, 58: 8, 47: 0}
# the namespace's own traffic (resets, echo replies, ICMP errors over lo) is not under test
OTHER_TRAFFIC = '\t\tiifname != "fwb" accept\n'
FIRST_LENGTH = 200  # packet i is FIRST_LENGTH + i bytes long at layer 3


class Namespace:
    def __init__(self) -> None:
        self.name = f"nfo-{uuid.uuid4().hex[:8]}"

    def run(self, *args: str, stdin: bytes | None = None) -> str:
        done = subprocess.run(
            ["ip", "netns", "exec", self.name, *args], input=stdin, capture_output=True
        )
        if done.returncode != 0:
            raise AssertionError(f"{' '.join(args)}: {done.stderr.decode()}")
        return done.stdout.decode()


@pytest.fixture(scope="module")
def namespace() -> Iterator[Namespace]:
    ns = Namespace()
    subprocess.run(["ip", "netns", "add", ns.name], check=True)
    try:
        ns.run("ip", "link", "add", "fwa", "type", "veth", "peer", "name", "fwb")
        for device in ("lo", "fwa", "fwb"):
            ns.run("ip", "link", "set", device, "up")
        ns.run("ip", "route", "add", "local", "198.18.0.0/15", "dev", "lo")
        ns.run("ip", "-6", "route", "add", "local", "2001:2::/48", "dev", "lo")
        for key in ("all", "fwb"):  # generated sources are "local" too: accept them
            ns.run("sysctl", "-q", "-w", f"net.ipv4.conf.{key}.rp_filter=0")
            ns.run("sysctl", "-q", "-w", f"net.ipv4.conf.{key}.accept_local=1")
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns.name], check=False)


def frames_for(keys: FlowKeys, version: int, first: int, mac: str) -> list[bytes]:
    """One frame per key, packet i exactly FIRST_LENGTH + first + i bytes at layer 3."""
    frames = []
    for i in range(len(keys)):
        if version == 4:
            src, dst = (str(ipaddress.IPv4Address(int(a[i]))) for a in (keys.src4, keys.dst4))
        else:
            src, dst = (
                str(ipaddress.IPv6Address((int(a[i][0]) << 64) | int(a[i][1])))
                for a in (keys.src6, keys.dst6)
            )
        proto, sport, dport = int(keys.proto[i]), int(keys.sport[i]), int(keys.dport[i])
        ip_header = 20 if version == 4 else 40
        payload = b"\x00" * (FIRST_LENGTH + first + i - ip_header - L4_HEADER[proto])
        eth = {"dst": mac}
        if proto == 6:
            frames.append(build.tcp_frame(src, dst, sport, dport, payload, eth=eth))
        elif proto == 17:
            frames.append(build.udp_frame(src, dst, sport, dport, payload, eth=eth))
        elif proto in (1, 58):
            frames.append(build.icmp_echo_frame(src, dst, 7, i, payload, eth=eth))
        elif version == 4:
            packet = build.ipv4(src, dst, proto, payload)
            frames.append(build.ethernet(packet, ethertype=build.ETH_IPV4, dst=mac))
        else:
            packet = build.ipv6(src, dst, proto, payload)
            frames.append(build.ethernet(packet, ethertype=build.ETH_IPV6, dst=mac))
    return frames


def nft_file(rules: list[Rule], policy: Action, count: int) -> str:
    text = format_ruleset(
        Ruleset(rules=rules, policy=policy, table="oracle", chain="c", hook="input")
    )
    head, _, tail = text.partition(f"policy {policy.value};\n")
    text = f"{head}policy {policy.value};\n{OTHER_TRAFFIC}{tail}"
    marks = "\n".join(f"\t\tmeta length {FIRST_LENGTH + i} counter" for i in range(count))
    chain_m = f"\tchain m {{\n\t\ttype filter hook input priority 10; policy accept;\n{OTHER_TRAFFIC}{marks}\n\t}}\n"
    return text.rstrip().removesuffix("}") + chain_m + "}\n"


def counters(ns: Namespace) -> tuple[list[int], dict[int, int]]:
    """Per-rule packet counts of chain c (in rule order) and per-length counts of chain m."""
    data = json.loads(ns.run("nft", "-j", "list", "table", "inet", "oracle"))
    per_rule: list[int] = []
    per_length: dict[int, int] = {}
    for item in data["nftables"]:
        rule = item.get("rule")
        if rule is None:
            continue
        exprs = rule["expr"]
        packets = next((e["counter"]["packets"] for e in exprs if "counter" in e), None)
        if rule["chain"] == "c" and packets is not None:
            per_rule.append(packets)
        elif rule["chain"] == "m" and packets is not None:
            length = next(e["match"]["right"] for e in exprs if "match" in e)
            per_length[int(length)] = packets
    return per_rule, per_length


def settled_counters(ns: Namespace) -> tuple[list[int], dict[int, int]]:
    """Counters once they stop moving: on a loaded machine the frames the sender handed to
    the veth may still wait in the receive backlog (ksoftirqd) when it exits."""
    last = counters(ns)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        time.sleep(0.25)
        now = counters(ns)
        if now == last:
            return now
        last = now
    return last


@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    seed=st.integers(0, 2**32 - 1),
    size=st.integers(1, 40),
    ipv6_share=st.sampled_from([0.0, 0.3, 0.7]),
    policy=st.sampled_from([Action.ACCEPT, Action.DROP]),
)
def test_verdicts_equal_nftables(
    namespace: Namespace, seed: int, size: int, ipv6_share: float, policy: Action
) -> None:
    table = generate_rules(size, seed, ipv6_share=ipv6_share)
    rules = [dataclasses.replace(rule, counter=True) for rule in table]
    v4 = generate_packets(table, 60, seed, version=4, match_share=0.7)
    v6 = generate_packets(table, 60, seed + 1, version=6, match_share=0.7)
    classifier = Classifier.compile(table, policy)
    matches = np.concatenate([classifier.classify(v4), classifier.classify(v6)])

    mac = namespace.run("cat", "/sys/class/net/fwb/address").strip()
    frames = frames_for(v4, 4, 0, mac) + frames_for(v6, 6, len(v4), mac)
    namespace.run("nft", "flush", "ruleset")
    namespace.run("nft", "-f", "-", stdin=nft_file(rules, policy, len(frames)).encode())
    namespace.run(sys.executable, "-c", SENDER, stdin=pickle.dumps(frames))
    per_rule, per_length = settled_counters(namespace)

    expected_hits = np.bincount(matches[matches >= 0], minlength=len(rules)).tolist()
    assert per_rule == expected_hits
    actions = [rule.action for rule in rules]
    for i, match in enumerate(matches):
        ours = actions[match] if match >= 0 else policy
        theirs = Action.ACCEPT if per_length[FIRST_LENGTH + i] == 1 else "drop or reject"
        assert (ours is Action.ACCEPT) == (theirs is Action.ACCEPT), (i, int(match), ours)
