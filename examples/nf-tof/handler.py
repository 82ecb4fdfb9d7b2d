"""MEC Traffic Offloading Function as an nfaas NF function (seed 002 §4.3).

Ports (manifest): "ran" (S1-U towards the eNodeBs), "core" (S1-U towards the SGW), "edge"
(towards the edge applications). Control API: the seed's /service API (§4.3.4):
GET/POST /service, PUT/DELETE /service/{name}, with {name, serviceIP, applicationIP}.

Environment: TOF_EDGE_MAC (next hop towards the applications), TOF_TUNNEL_TIMEOUT (seconds),
TOF_PINGER_TARGET (a PDN address to probe for unknown downlink tunnels; unset: no probes).
Services live in this instance: keep scale.max at 1.
"""

from __future__ import annotations

from typing import Any

from nfaas.nf.graph import Graph
from nfaas.vnfs.tof import ServiceApi, ServiceRegistry, Tof, TofConfig, tof_graph

registry = ServiceRegistry()
api = ServiceApi(registry)


def graph(context: Any) -> Graph:
    env = context.env
    config = TofConfig(
        tunnel_timeout=float(env.get("TOF_TUNNEL_TIMEOUT", "300")),
        edge_mac=env.get("TOF_EDGE_MAC", TofConfig.edge_mac),
        pinger_target=env.get("TOF_PINGER_TARGET") or None,
    )
    return tof_graph(Tof(registry, config), name="tof")


def handle(event: Any, context: Any) -> dict[str, Any]:
    status, headers, body = api.handle(event.method, event.path, event.body)
    return {"statusCode": status, "headers": dict(headers), "body": body}
