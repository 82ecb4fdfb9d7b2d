"""L4 load balancer: Maglev consistent hashing with per-flow affinity and backend health."""

from nfaas.vnfs.lb.affinity import NO_BACKEND, BalancerStats, FlowBalancer
from nfaas.vnfs.lb.maglev import (
    DEFAULT_TABLE_SIZE,
    Backend,
    Disruption,
    MaglevTable,
    disruption,
)

__all__ = [
    "DEFAULT_TABLE_SIZE",
    "NO_BACKEND",
    "Backend",
    "BalancerStats",
    "Disruption",
    "FlowBalancer",
    "MaglevTable",
    "disruption",
]
