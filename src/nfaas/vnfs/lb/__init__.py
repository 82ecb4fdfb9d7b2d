"""L4 load balancer: Maglev consistent hashing with per-flow affinity and backend health,
and the NF graph that steers VIP traffic to backends (direct server return)."""

from nfaas.vnfs.lb.affinity import NO_BACKEND, BalancerStats, FlowBalancer
from nfaas.vnfs.lb.graph import MaglevSteer, maglev_graph, steering_of
from nfaas.vnfs.lb.maglev import (
    DEFAULT_TABLE_SIZE,
    Backend,
    Disruption,
    MaglevTable,
    disruption,
)
from nfaas.vnfs.lb.steering import Steering, Vip, parse_vip

__all__ = [
    "DEFAULT_TABLE_SIZE",
    "NO_BACKEND",
    "Backend",
    "BalancerStats",
    "Disruption",
    "FlowBalancer",
    "MaglevSteer",
    "MaglevTable",
    "Steering",
    "Vip",
    "disruption",
    "maglev_graph",
    "parse_vip",
    "steering_of",
]
