"""Firewall VNF: ordered 5-tuple rules, nftables import/export, classifiers, the stateful NF.

`rules` is the rule model, `nft` reads and writes nftables syntax, `classifier` is the compiled
first-match classifier (tuple space search), `linear` the reference scan, `generate` makes
ClassBench-like rule sets and matching traffic for tests and benchmarks. The stateful part:
`stateful.Firewall` (conntrack, verdict cache, per-rule counters, live rule updates),
`flowcache` (the verdict cache), `reject` (ICMP answers to rejected packets) and
`graph.firewall_graph` (the NF graph between ports "inside" and "outside").
"""

from nfaas.vnfs.firewall.flowcache import VerdictCache
from nfaas.vnfs.firewall.graph import FirewallFilter, firewall_graph, firewall_of
from nfaas.vnfs.firewall.stateful import Decision, Firewall, Outcome

__all__ = [
    "Decision",
    "Firewall",
    "FirewallFilter",
    "Outcome",
    "VerdictCache",
    "firewall_graph",
    "firewall_of",
]
