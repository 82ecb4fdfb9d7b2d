"""The stateful firewall as an NF graph between two ports, "inside" and "outside".

    fw = Firewall(load_nft("rules.nft"))            # or firewall_graph(rules) directly
    g = firewall_graph(fw)
    out = g.run_batch({"inside": from_inside, "outside": from_outside}, now)
    out["outside"], out["inside"]                    # what leaves through each port

Each port is both a source and a sink: packets from inside leave through outside and the
other way round. Per direction:

    source(port) -> parse -> firewall[forward] -> emit -> the other port
                                    [reject]  -> emit -> port    (ICMP errors, if enabled)

`parse` drops malformed packets (counted by parse error); the `FirewallFilter` operator asks
the shared `Firewall` for each packet's outcome (conntrack, verdict cache, classifier; see
`stateful.py`) and drops the rest with their reason ("rule", "reject", "invalid", "non_ip").
Both directions share one `Firewall`, so one connection table sees both directions of every
connection. Within a `run_batch`, the inside batch is decided before the outside batch.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from nfaas.nf.batch import PacketBatch
from nfaas.nf.graph import Graph
from nfaas.nf.headers import Headers
from nfaas.nf.operators import EdgeType, Operator, Output, select_output
from nfaas.nf.state import ConnTrack, CtState
from nfaas.nf.timers import Timers
from nfaas.vnfs.common import find_operator
from nfaas.vnfs.firewall.flowcache import VerdictCache
from nfaas.vnfs.firewall.reject import can_answer, port_unreachable
from nfaas.vnfs.firewall.rules import Action
from nfaas.vnfs.firewall.stateful import NO_STATE, Firewall, Outcome, RuleSource

__all__ = ["FirewallFilter", "firewall_graph", "firewall_of"]

PORTS = ("inside", "outside")


class FirewallFilter(Operator):
    """Decide every packet with a `Firewall`: "forward" carries what may pass, "reject"
    the ICMP port-unreachable answers to rejected packets (when `send_rejects`).

    Drops are counted by `Outcome` name; `counters.extra` counts conntrack states
    (`ct_new`, `ct_established`, ...) and `rejects_sent`. At most `max_rejects` answers
    are sent per batch (the rest are still rejected, silently), so a flood of rejected
    packets cannot turn the firewall into an amplifier.
    """

    kind = "firewall"
    needs = EdgeType.PARSED

    def __init__(
        self,
        firewall: Firewall,
        name: str | None = None,
        *,
        send_rejects: bool = False,
        max_rejects: int = 256,
    ) -> None:
        super().__init__(name, outputs=("forward", "reject"))
        self.firewall = firewall
        self.send_rejects = send_rejects
        self.max_rejects = max_rejects

    def output_type(self, input_type: EdgeType) -> EdgeType:
        super().output_type(input_type)
        return EdgeType.PARSED

    def attach(self, timers: Timers) -> None:
        self.firewall.attach(timers)

    def process(self, batch: PacketBatch, headers: Headers | None, now: float) -> list[Output]:
        assert headers is not None
        d = self.firewall.decide(batch, headers, now)
        extra = self.counters.extra
        for value in np.unique(d.state).tolist():
            if value != NO_STATE:
                name = "ct_" + CtState(value).name.lower()
                extra[name] = extra.get(name, 0) + int(np.count_nonzero(d.state == value))
        passing = d.outcome == Outcome.FORWARD
        if not passing.all():
            for value in np.unique(d.outcome[~passing]).tolist():
                self.drop(Outcome(value).name.lower(), int(np.count_nonzero(d.outcome == value)))
        forward = select_output(batch, headers, np.flatnonzero(passing))
        answers: Output = (PacketBatch.empty(), Headers.empty(0))
        if self.send_rejects:
            rejected = np.flatnonzero(d.outcome == Outcome.REJECT)
            if rejected.size:
                rejected = rejected[can_answer(headers, rejected)][: self.max_rejects]
                answers = port_unreachable(batch, headers, rejected)
                extra["rejects_sent"] = extra.get("rejects_sent", 0) + len(answers[0])
        return [forward, answers]


def firewall_graph(
    rules: Firewall | RuleSource,
    *,
    conntrack: bool | ConnTrack | None = None,
    flow_cache: bool | VerdictCache | None = None,
    name: str = "firewall",
    drop_invalid: bool | None = None,
    non_ip: Action | None = None,
    policy: Action | None = None,
    send_rejects: bool = False,
    ports: tuple[str, str] = PORTS,
    errors: Literal["drop", "raise"] = "drop",
) -> Graph:
    """A stateful firewall graph between `ports` (default "inside", "outside").

    `rules` is a `Firewall` (shared with a control API), or what `Firewall` is built from:
    a `Ruleset`, `Rule`s, a `RuleTable` or a compiled classifier. The firewall options
    (`conntrack` and `flow_cache`, both on by default, `drop_invalid` on, `non_ip` accept,
    `policy`) apply when the firewall is built here; with a `Firewall` they must be left
    out (they are its own). Get the firewall back with `firewall_of(graph)`.
    """
    options = {
        "conntrack": conntrack,
        "flow_cache": flow_cache,
        "drop_invalid": drop_invalid,
        "non_ip": non_ip,
        "policy": policy,
    }
    given = {k: v for k, v in options.items() if v is not None}
    if isinstance(rules, Firewall):
        if given:
            raise ValueError(
                f"firewall_graph got a Firewall and the options {sorted(given)}; "
                "give those options to Firewall(...) instead"
            )
        firewall = rules
    else:
        firewall = Firewall(
            rules,
            conntrack=True if conntrack is None else conntrack,
            flow_cache=True if flow_cache is None else flow_cache,
            drop_invalid=True if drop_invalid is None else drop_invalid,
            non_ip=Action.ACCEPT if non_ip is None else non_ip,
            policy=policy,
        )
    if len(set(ports)) != 2:
        raise ValueError(f"a firewall needs two distinct ports, got {ports}")
    g = Graph(name, errors=errors)
    for port, other in (ports, ports[::-1]):
        forward, reject = (
            g.source(port)
            .parse(name=f"parse_{port}")
            .fork(FirewallFilter(firewall, f"filter_{port}", send_rejects=send_rejects))
        )
        forward.emit(other, name=f"{port}_to_{other}")
        reject.emit(port, name=f"reject_to_{port}")
    for port in ports:
        g.sink(port)
    return g


def firewall_of(graph: Graph) -> Firewall:
    """The `Firewall` a graph made by `firewall_graph` decides with."""
    return find_operator(graph, FirewallFilter, "firewall").firewall
