"""NAT: SNAT with port allocation, DNAT port forwards, per-protocol timeouts."""

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
    "PortForward",
    "Timeouts",
    "Translation",
    "Verdict",
    "ipv4",
]
