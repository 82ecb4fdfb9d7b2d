"""nf-lb: a Maglev load balancer from port "clients" to port "backends" (direct server return).

`graph(context)` builds the NF (`nfaas.vnfs.lb.maglev_graph`): packets to a VIP get the
Ethernet address of a backend chosen by Maglev consistent hashing, with per-flow affinity;
the backends hold the VIP on a loopback interface and answer clients directly.

Env:
    LB_VIPS       comma-separated VIPs: "198.18.1.1:80", "198.18.1.1" (every port),
                  "[2001:2::80]:443"
    LB_BACKENDS   comma-separated backends "name=MAC" or "name=MAC/weight", e.g.
                  "web-1=02:00:00:00:01:01,web-2=02:00:00:00:01:02/2"
    LB_MAC        the balancer's own MAC, written as source of steered frames (optional)
    LB_NON_VIP    "drop" (default) or "pass": what happens to packets to no VIP
    LB_IDLE_TIMEOUT  seconds a flow's backend is remembered after its last packet (300)

`handle(event, context)` is the control API (health checks drive it):

    GET /backends            every backend: name, weight, MAC, up, serving, packets, bytes
    GET /backends/{name}     one backend (404 if unknown)
    PUT /backends/{name}     body "up" or "down" (or JSON {"up": true|false}); new flows
                             follow at once, established flows keep their backend while it is up
"""

from __future__ import annotations

import json
import threading
from typing import Any

from nfaas.nf.graph import Graph
from nfaas.vnfs.lb import Backend, FlowBalancer, Steering, maglev_graph

_JSON = {"content-type": "application/json"}

_made = threading.Lock()
_steering: Steering | None = None


def _backends(text: str) -> tuple[list[Backend], dict[str, str]]:
    """Backends and their MACs from LB_BACKENDS; errors name the entry."""
    backends, macs = [], {}
    for position, item in enumerate(text.split(",")):
        entry = item.strip()
        if not entry:
            continue
        name, sep, rest = entry.partition("=")
        if not sep or not name.strip():
            raise ValueError(
                f"LB_BACKENDS entry {position} ({entry!r}): expected name=MAC[/weight]"
            )
        mac, _, weight = rest.partition("/")
        try:
            backend = Backend(name.strip(), float(weight) if weight else 1.0)
        except ValueError as exc:
            raise ValueError(f"LB_BACKENDS entry {position} ({entry!r}): {exc}") from None
        backends.append(backend)
        macs[backend.name] = mac.strip()
    if not backends:
        raise ValueError("LB_BACKENDS names no backend")
    return backends, macs


def steering(context: Any) -> Steering:
    """The function's one Steering, built from its env on first use."""
    global _steering
    with _made:
        if _steering is None:
            env = dict(getattr(context, "env", {}) or {})
            backends, macs = _backends(env.get("LB_BACKENDS", ""))
            vips = [v.strip() for v in env.get("LB_VIPS", "").split(",") if v.strip()]
            idle = float(env.get("LB_IDLE_TIMEOUT") or 300)
            balancer = FlowBalancer(backends, idle_timeout=idle)
            _steering = Steering(balancer, vips, macs, own_mac=env.get("LB_MAC") or None)
        return _steering


def graph(context: Any) -> Graph:
    env = dict(getattr(context, "env", {}) or {})
    non_vip = env.get("LB_NON_VIP") or "drop"
    if non_vip == "drop":
        return maglev_graph(steering(context), name="nf-lb", non_vip="drop")
    if non_vip == "pass":
        return maglev_graph(steering(context), name="nf-lb", non_vip="pass")
    raise ValueError(f"LB_NON_VIP={non_vip!r}: expected drop or pass")


# -- the control API ------------------------------------------------------------------------


def _reply(status: int, body: Any) -> dict[str, Any]:
    return {"statusCode": status, "body": json.dumps(body), "headers": dict(_JSON)}


def _up_from(body: bytes | str) -> bool:
    """ "up" / "down", or JSON {"up": bool} or {"state": "up"|"down"}."""
    text = (body.decode("utf-8") if isinstance(body, bytes | bytearray) else body).strip()
    if text.lower() in ("up", "down"):
        return text.lower() == "up"
    value = json.loads(text)
    if isinstance(value, dict) and isinstance(value.get("up"), bool):
        return bool(value["up"])
    if isinstance(value, dict) and value.get("state") in ("up", "down"):
        return value["state"] == "up"
    if value in ("up", "down"):
        return value == "up"
    raise ValueError("expected up or down")


def handle(event: Any, context: Any) -> dict[str, Any]:
    lb = steering(context)
    method = (getattr(event, "method", "GET") or "GET").upper()
    parts = [p for p in (getattr(event, "path", "/") or "/").split("/") if p]
    if parts == ["backends"]:
        if method != "GET":
            return _reply(405, {"error": f"{method} /backends: use GET"})
        return _reply(200, lb.status())
    if len(parts) == 2 and parts[0] == "backends":
        name = parts[1]
        rows = {row["name"]: row for row in lb.status()}
        if name not in rows:
            return _reply(404, {"error": f"no backend named {name!r}", "backends": sorted(rows)})
        if method == "GET":
            return _reply(200, rows[name])
        if method != "PUT":
            return _reply(405, {"error": f"{method} /backends/{{name}}: use GET or PUT"})
        try:
            up = _up_from(getattr(event, "body", b"") or b"")
        except (ValueError, UnicodeDecodeError):
            return _reply(400, {"error": 'body must be "up" or "down" (or {"up": true|false})',
                                "field": "body"})  # fmt: skip
        lb.set_up(name, up)
        return _reply(200, {row["name"]: row for row in lb.status()}[name])
    return _reply(404, {"error": f"no route {method} /{'/'.join(parts)}"})
