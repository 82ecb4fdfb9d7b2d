"""NAT: SNAT with port allocation, DNAT port forwards, per-protocol timeouts, and the NF
graph that rewrites packets between ports "inside" and "outside"."""

from nfaas.vnfs.nat.graph import NatTranslate, nat_graph, nat_of
from nfaas.vnfs.nat.table import (
    ICMP,
    TCP,
    UDP,
    FiveTuples,
    NatConfig,
    NatStats,
    NatTable,
    PortForward,
    Timeouts,
    Translation,
    Verdict,
    ipv4,
)

__all__ = [
    "ICMP",
    "TCP",
    "UDP",
    "FiveTuples",
    "NatConfig",
    "NatStats",
    "NatTable",
    "NatTranslate",
    "PortForward",
    "Timeouts",
    "Translation",
    "Verdict",
    "ipv4",
    "nat_graph",
    "nat_of",
]
