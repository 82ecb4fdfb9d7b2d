"""The NF example functions in examples/nf-*: graph(context) runs a batch, handle() serves
the control routes (including the 400s), as the `nf` runtime calls them.

Each test loads a fresh copy of the handler module by path (the example folders are not
packages, and each module keeps its NF object in a module global).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

from nfaas.nf import build as B
from nfaas.nf.batch import PacketBatch
from nfaas.nf.graph import Graph
from nfaas.nf.headers import parse

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
IN_HOST, OUT_HOST = "198.18.0.5", "198.19.0.9"


def load(directory: str) -> ModuleType:
    path = EXAMPLES / directory / "handler.py"
    spec = importlib.util.spec_from_file_location("nf_example_" + directory.replace("-", "_"), path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def context(env: dict[str, str] | None = None) -> SimpleNamespace:
    return SimpleNamespace(
        function_name="nf-test", namespace="default", instance_id="i-1", env=dict(env or {})
    )


def event(
    method: str, path: str, body: bytes | str = b"", query: dict[str, str] | None = None
) -> SimpleNamespace:
    return SimpleNamespace(method=method, path=path, body=body, query=query or {}, headers={})


def body(reply: dict[str, Any]) -> Any:
    return json.loads(reply["body"])


def run(g: Graph, port: str, frames: list[bytes], now: float = 1.0) -> dict[str, list[bytes]]:
    out = g.run_batch({port: PacketBatch.from_bytes(frames)}, now)
    return {name: batch.to_list() for name, batch in out.items()}


# -- nf-firewall -------------------------------------------------------------------------------


def test_firewall_example_graph_and_rules_api() -> None:
    fw = load("nf-firewall")
    ctx = context()
    g = fw.graph(ctx)
    assert set(g.sources) == set(g.sinks) == {"inside", "outside"}
    web = B.tcp_frame(IN_HOST, OUT_HOST, 40000, 443, flags=B.TCP_SYN)
    reply = B.tcp_frame(OUT_HOST, IN_HOST, 443, 40000, flags=B.TCP_SYN | B.TCP_ACK)
    telnet_in = B.tcp_frame(OUT_HOST, IN_HOST, 40001, 8080, flags=B.TCP_SYN)
    assert run(g, "inside", [web])["outside"] == [web]
    assert run(g, "outside", [reply, telnet_in])["inside"] == [reply]

    listing = fw.handle(event("GET", "/rules"), ctx)
    assert listing["statusCode"] == 200 and "policy drop" in listing["body"]
    assert listing["body"].count("accept") == 8 and listing["body"].count("reject") == 1

    added = fw.handle(event("POST", "/rules", b"ip saddr 198.19.0.9 tcp dport 8080 accept"), ctx)
    assert added["statusCode"] == 201
    assert body(added)["added"] == [
        {"index": 9, "rule": "ip saddr 198.19.0.9/32 tcp dport 8080 accept"}
    ]
    assert run(g, "outside", [telnet_in], 2.0)["inside"] == [telnet_in]  # the cache was invalidated

    bad = fw.handle(
        event("POST", "/rules", "tcp dport 80 accept\nip saddr 198.18.0.1/16 drop"), ctx
    )
    assert bad["statusCode"] == 400
    assert (body(bad)["line"], body(bad)["column"]) == (2, 10)
    assert "host bits set" in body(bad)["error"]
    assert (
        fw.handle(event("POST", "/rules", "accept", {"position": "99"}), ctx)["statusCode"] == 400
    )
    assert fw.handle(event("POST", "/rules", b"\xff"), ctx)["statusCode"] == 400

    first = fw.handle(event("POST", "/rules", "udp dport 9 drop", {"position": "0"}), ctx)
    assert body(first)["added"][0]["index"] == 0
    deleted = fw.handle(event("DELETE", "/rules/0"), ctx)
    assert deleted["statusCode"] == 200 and body(deleted)["deleted"]["rule"] == "udp dport 9 drop"
    assert fw.handle(event("DELETE", "/rules/42"), ctx)["statusCode"] == 404
    assert fw.handle(event("DELETE", "/rules/x"), ctx)["statusCode"] == 400

    counters = body(fw.handle(event("GET", "/counters"), ctx))
    assert counters["packets"]["forward"] == 3 and counters["packets"]["rule"] == 1
    assert counters["cache"]["misses"] >= 2 and counters["connections"] == 2
    assert counters["rules"][9]["packets"] == 1  # the rule added through the API
    assert fw.handle(event("PUT", "/counters"), ctx)["statusCode"] == 405
    assert fw.handle(event("GET", "/nothing"), ctx)["statusCode"] == 404


def test_firewall_example_takes_rules_from_env_and_names_bad_ones(tmp_path: Path) -> None:
    rules = tmp_path / "custom.nft"
    rules.write_text("udp dport 53 accept\ndrop\n")
    fw = load("nf-firewall")
    ctx = context({"FIREWALL_RULES": str(rules), "FIREWALL_CONNTRACK": "0"})
    g = fw.graph(ctx)
    dns = B.udp_frame(IN_HOST, OUT_HOST, 5000, 53)
    other = B.udp_frame(IN_HOST, OUT_HOST, 5000, 54)
    assert run(g, "inside", [dns, other])["outside"] == [dns]
    assert fw.firewall(ctx).conntrack is None
    rules.write_text("udp dport 53 acept\n")
    broken = load("nf-firewall")
    with pytest.raises(ValueError, match=r"custom.nft:1:14"):
        broken.graph(ctx)
    with pytest.raises(ValueError, match="FIREWALL_FLOW_CACHE"):
        load("nf-firewall").graph(context({"FIREWALL_FLOW_CACHE": "maybe"}))


def test_firewall_example_sends_rejects_when_asked() -> None:
    fw = load("nf-firewall")
    g = fw.graph(context({"FIREWALL_SEND_REJECTS": "1"}))
    telnet = B.tcp_frame(IN_HOST, OUT_HOST, 40000, 23, flags=B.TCP_SYN)
    out = run(g, "inside", [telnet])
    assert out["outside"] == [] and len(out["inside"]) == 1
    assert int(parse(PacketBatch.from_bytes(out["inside"])).icmp_type[0]) == 3


# -- nf-lb -------------------------------------------------------------------------------------

LB_ENV = {
    "LB_VIPS": "198.18.1.1:80",
    "LB_BACKENDS": "web-1=02:00:00:00:01:01,web-2=02:00:00:00:01:02/2",
    "LB_MAC": "02:00:00:00:00:fe",
}


def flows(n: int) -> list[bytes]:
    return [B.tcp_frame(OUT_HOST, "198.18.1.1", 1024 + i, 80, flags=B.TCP_SYN) for i in range(n)]


def test_lb_example_graph_and_health_api() -> None:
    lb = load("nf-lb")
    ctx = context(LB_ENV)
    g = lb.graph(ctx)
    first = run(g, "clients", flows(60))["backends"]
    macs = [p[:6].hex(":") for p in first]
    assert set(macs) == {"02:00:00:00:01:01", "02:00:00:00:01:02"}

    listing = body(lb.handle(event("GET", "/backends"), ctx))
    assert [row["name"] for row in listing] == ["web-1", "web-2"]
    assert [row["weight"] for row in listing] == [1.0, 2.0]
    assert sum(row["packets"] for row in listing) == 60

    down = lb.handle(event("PUT", "/backends/web-2", "down"), ctx)
    assert down["statusCode"] == 200 and body(down)["up"] is False
    again = [p[:6].hex(":") for p in run(g, "clients", flows(60), 2.0)["backends"]]
    assert set(again) == {"02:00:00:00:01:01"}
    stayed = [b for a, b in zip(macs, again, strict=True) if a == "02:00:00:00:01:01"]
    assert set(stayed) == {"02:00:00:00:01:01"}  # web-1's flows did not move
    up = lb.handle(event("PUT", "/backends/web-2", json.dumps({"up": True})), ctx)
    assert body(up)["up"] is True and body(up)["serving"] is True
    assert body(lb.handle(event("GET", "/backends/web-1"), ctx))["name"] == "web-1"

    assert lb.handle(event("PUT", "/backends/web-2", "sideways"), ctx)["statusCode"] == 400
    assert lb.handle(event("PUT", "/backends/web-9", "up"), ctx)["statusCode"] == 404
    assert lb.handle(event("DELETE", "/backends/web-1"), ctx)["statusCode"] == 405
    assert lb.handle(event("GET", "/"), ctx)["statusCode"] == 404


def test_lb_example_names_bad_env() -> None:
    with pytest.raises(ValueError, match=r"LB_BACKENDS entry 1 \('web-2'\)"):
        load("nf-lb").graph(context({**LB_ENV, "LB_BACKENDS": "web-1=02:00:00:00:01:01,web-2"}))
    with pytest.raises(ValueError, match="LB_NON_VIP"):
        load("nf-lb").graph(context({**LB_ENV, "LB_NON_VIP": "maybe"}))
    with pytest.raises(ValueError, match="is not an IP address"):
        load("nf-lb").graph(context({**LB_ENV, "LB_VIPS": "web:80"}))


# -- nf-nat ------------------------------------------------------------------------------------

NAT_ENV = {"NAT_PUBLIC": "198.18.200.1", "NAT_FORWARDS": "tcp/198.18.200.1:8080=198.18.0.80:80"}


def test_nat_example_graph_and_read_api() -> None:
    nat = load("nf-nat")
    ctx = context(NAT_ENV)
    g = nat.graph(ctx)
    query = B.udp_frame(IN_HOST, OUT_HOST, 5353, 53, b"q")
    (out,) = run(g, "inside", [query])["outside"]
    h = parse(PacketBatch.from_bytes([out]))
    public_port = int(h.sport[0])
    assert out == B.udp_frame("198.18.200.1", OUT_HOST, public_port, 53, b"q")
    answer = B.udp_frame(OUT_HOST, "198.18.200.1", 53, public_port, b"a")
    assert run(g, "outside", [answer], 1.5)["inside"] == [
        B.udp_frame(OUT_HOST, IN_HOST, 53, 5353, b"a")
    ]
    forwarded = B.tcp_frame(OUT_HOST, "198.18.200.1", 50000, 8080, flags=B.TCP_SYN)
    assert run(g, "outside", [forwarded], 1.6)["inside"] == [
        B.tcp_frame(OUT_HOST, "198.18.0.80", 50000, 80, flags=B.TCP_SYN)
    ]

    sessions = body(nat.handle(event("GET", "/sessions"), ctx))
    assert sessions["sessions"] == 1
    assert sessions["shown"][0]["inside"] == f"{IN_HOST}:5353"
    assert sessions["shown"][0]["public"] == f"198.18.200.1:{public_port}"
    stats = body(nat.handle(event("GET", "/stats"), ctx))
    assert stats["translated_out"] == 1 and stats["translated_in"] == 2
    ports = body(nat.handle(event("GET", "/ports"), ctx))
    assert ports["198.18.200.1"]["udp"] == 65535 - 1024 + 1 - 1
    assert nat.handle(event("GET", "/sessions", query={"limit": "x"}), ctx)["statusCode"] == 400
    assert nat.handle(event("POST", "/sessions"), ctx)["statusCode"] == 405
    assert nat.handle(event("GET", "/x"), ctx)["statusCode"] == 404


def test_nat_example_names_bad_env() -> None:
    with pytest.raises(ValueError, match="NAT_PUBLIC"):
        load("nf-nat").graph(context({}))
    with pytest.raises(ValueError, match=r"NAT_FORWARDS entry 0 \('sctp/1.2.3.4:1=5.6.7.8:2'\)"):
        load("nf-nat").graph(context({**NAT_ENV, "NAT_FORWARDS": "sctp/1.2.3.4:1=5.6.7.8:2"}))
    with pytest.raises(ValueError, match="NAT_PORTS"):
        load("nf-nat").graph(context({**NAT_ENV, "NAT_PORTS": "1024"}))
