"""nf-nat: source NAT with port forwarding between ports "inside" and "outside" (IPv4).

`graph(context)` builds the NF (`nfaas.vnfs.nat.nat_graph`): flows from inside leave with a
public address and port (one session per flow), replies are translated back, and port
forwards let outside clients reach inside services. Checksums are updated incrementally.

Env:
    NAT_PUBLIC    comma-separated public addresses (the SNAT pool), e.g. "198.18.200.1"
    NAT_FORWARDS  comma-separated port forwards "proto/public_addr:port=inside_addr:port",
                  e.g. "tcp/198.18.200.1:8080=198.18.0.80:80" (optional)
    NAT_PORTS     public port range for SNAT, "low-high" (default 1024-65535)

`handle(event, context)` is the control API:

    GET /sessions            live sessions (inside, remote, public endpoints; `?limit=N`, 100)
    GET /stats               translations, sessions created/expired, drops by reason
    GET /ports               free public ports per address and protocol
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import threading
from typing import Any

from nfaas.nf.graph import Graph
from nfaas.vnfs.nat import ICMP, TCP, UDP, NatConfig, NatTable, PortForward, ipv4, nat_graph

_JSON = {"content-type": "application/json"}
_PROTOS = {"tcp": TCP, "udp": UDP}

# The graph and the control API share the table; the lock keeps a read from seeing half a
# batch's changes.
_made = threading.Lock()
lock = threading.RLock()
_nat: NatTable | None = None


def _endpoint(text: str, what: str) -> tuple[int, int]:
    addr, sep, port = text.strip().rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"{what} {text!r}: expected address:port")
    return ipv4(addr), int(port)


def _forwards(text: str) -> list[PortForward]:
    rules = []
    for position, item in enumerate(text.split(",")):
        entry = item.strip()
        if not entry:
            continue
        try:
            proto, _, rest = entry.partition("/")
            public, sep, inside = rest.partition("=")
            if proto.lower() not in _PROTOS or not sep:
                raise ValueError("expected tcp|udp/public_addr:port=inside_addr:port")
            pub_addr, pub_port = _endpoint(public, "public endpoint")
            in_addr, in_port = _endpoint(inside, "inside endpoint")
        except ValueError as exc:
            raise ValueError(f"NAT_FORWARDS entry {position} ({entry!r}): {exc}") from None
        rules.append(PortForward(_PROTOS[proto.lower()], pub_addr, pub_port, in_addr, in_port))
    return rules


def nat(context: Any) -> NatTable:
    """The function's one NatTable, built from its env on first use."""
    global _nat
    with _made:
        if _nat is None:
            env = dict(getattr(context, "env", {}) or {})
            public = [ipv4(a.strip()) for a in env.get("NAT_PUBLIC", "").split(",") if a.strip()]
            if not public:
                raise ValueError("NAT_PUBLIC names no public address")
            text = env.get("NAT_PORTS") or "1024-65535"
            low, _, high = text.partition("-")
            if not (low.strip().isdigit() and high.strip().isdigit()):
                raise ValueError(f"NAT_PORTS={text!r}: expected low-high, e.g. 1024-65535")
            ports = (int(low), int(high))
            config = NatConfig(
                public_addrs=public,
                port_ranges={TCP: ports, UDP: ports, ICMP: ports},
                forwards=_forwards(env.get("NAT_FORWARDS", "")),
            )
            _nat = NatTable(config)
        return _nat


def graph(context: Any) -> Graph:
    return nat_graph(nat(context), name="nf-nat", lock=lock)


# -- the control API ------------------------------------------------------------------------


def _reply(status: int, body: Any) -> dict[str, Any]:
    return {"statusCode": status, "body": json.dumps(body), "headers": dict(_JSON)}


def _address(value: int) -> str:
    return str(ipaddress.IPv4Address(value))


def handle(event: Any, context: Any) -> dict[str, Any]:
    table = nat(context)
    method = (getattr(event, "method", "GET") or "GET").upper()
    parts = [p for p in (getattr(event, "path", "/") or "/").split("/") if p]
    if method != "GET":
        return _reply(405, {"error": f"{method}: the NAT's control API is read-only (GET)"})
    if parts == ["sessions"]:
        raw = (getattr(event, "query", {}) or {}).get("limit", "100")
        if not raw.isdigit():
            return _reply(400, {"error": f"limit must be a number, got {raw!r}", "field": "limit"})
        with lock:
            s = table.sessions()
        names = {TCP: "tcp", UDP: "udp", ICMP: "icmp"}
        rows = [
            {
                "proto": names.get(int(s["proto"][i]), int(s["proto"][i])),
                "inside": f"{_address(int(s['in_addr'][i]))}:{int(s['in_port'][i])}",
                "remote": f"{_address(int(s['remote_addr'][i]))}:{int(s['remote_port'][i])}",
                "public": f"{_address(int(s['pub_addr'][i]))}:{int(s['pub_port'][i])}",
                "last_seen": float(s["last_seen"][i]),
            }
            for i in range(min(int(raw), len(s["proto"])))
        ]
        return _reply(200, {"sessions": len(s["proto"]), "shown": rows})
    if parts == ["stats"]:
        with lock:
            return _reply(200, {"sessions": len(table), **dataclasses.asdict(table.stats)})
    if parts == ["ports"]:
        protocols = (("tcp", TCP), ("udp", UDP), ("icmp", ICMP))
        with lock:
            free = {
                _address(addr): {name: table.free_ports(addr, proto) for name, proto in protocols}
                for addr in table.config.public_addrs
            }
        return _reply(200, free)
    return _reply(404, {"error": f"no route GET /{'/'.join(parts)}"})
