"""Traffic Offloading Function (seed 002 §4.3): GTP-U tunnel learning, divert to edge apps,
re-encapsulation of their replies, idle purge, and the /service REST API."""

from nfaas.vnfs.tof.api import ServiceApi
from nfaas.vnfs.tof.graph import TofDownlink, TofEdge, TofUplink, tof_graph
from nfaas.vnfs.tof.services import (
    Service,
    ServiceConflict,
    ServiceNotFound,
    ServiceRegistry,
    ServiceTable,
    ServiceValueError,
)
from nfaas.vnfs.tof.tof import Tof, TofConfig, TofStats
from nfaas.vnfs.tof.tunnels import Tunnel, TunnelTable

__all__ = [
    "Service",
    "ServiceApi",
    "ServiceConflict",
    "ServiceNotFound",
    "ServiceRegistry",
    "ServiceTable",
    "ServiceValueError",
    "Tof",
    "TofConfig",
    "TofDownlink",
    "TofEdge",
    "TofStats",
    "TofUplink",
    "Tunnel",
    "TunnelTable",
    "tof_graph",
]
