"""The TOF as an NF graph: three operators around one `Tof`, and the graph that wires them.

    ran  --parse--> tof_uplink --core--> core
                               --edge--> edge
    core --parse--> tof_downlink ------> ran
    edge --parse--> tof_edge ----------> ran

Source and sink ports share names: "ran", "core" and "edge" are each one interface of the
TOF, packets arriving on it and packets leaving through it. Malformed frames are dropped by
the parse operators (counted by parse error); the TOF operators count their own drops by
reason (`inner_truncated_ip`, `not_from_service`, `no_downlink_tunnel`, `pinger_reply`,
...) and copy the TOF's statistics into their counters' `extra`.
"""

from __future__ import annotations

from typing import ClassVar

from nfaas.nf.batch import PacketBatch
from nfaas.nf.graph import Graph
from nfaas.nf.headers import Headers
from nfaas.nf.operators import EdgeType, Operator, Output
from nfaas.nf.timers import Timers
from nfaas.vnfs.tof.tof import Drops, Tof

__all__ = ["TofDownlink", "TofEdge", "TofUplink", "tof_graph"]


class _TofOperator(Operator):
    """Common part: parsed packets in, raw packets out on `ports`, one `Tof` batch function
    (`_step`) in between with its drops and statistics counted, the TOF's sweep on the
    timers."""

    needs = EdgeType.PARSED
    ports: ClassVar[tuple[str, ...]] = ("ran",)

    def __init__(self, tof: Tof, name: str | None = None) -> None:
        super().__init__(name, outputs=self.ports)
        self.tof = tof

    def output_type(self, input_type: EdgeType) -> EdgeType:
        super().output_type(input_type)
        return EdgeType.RAW

    def attach(self, timers: Timers) -> None:
        self.tof.attach(timers)

    def _step(self, batch: PacketBatch, h: Headers, now: float) -> tuple[list[PacketBatch], Drops]:
        """One batch through the TOF: a batch per port of `ports`, and the drops."""
        raise NotImplementedError

    def process(self, batch: PacketBatch, headers: Headers | None, now: float) -> list[Output]:
        assert headers is not None
        outs, drops = self._step(batch, headers, now)
        for reason, count in drops.items():
            self.drop(reason, count)
        self.counters.extra.update(self.tof.stats.as_dict())
        self.counters.extra["uplink_tunnels"] = len(self.tof.uplink_tunnels)
        self.counters.extra["downlink_tunnels"] = len(self.tof.downlink_tunnels)
        return [(out, None) for out in outs]


class TofUplink(_TofOperator):
    """RAN → core: learns uplink tunnels; service traffic leaves decapsulated on "edge"."""

    kind = "tof_uplink"
    ports = ("core", "edge")

    def _step(self, batch: PacketBatch, h: Headers, now: float) -> tuple[list[PacketBatch], Drops]:
        core, edge, drops = self.tof.uplink(batch, h, now)
        return [core, edge], drops


class TofDownlink(_TofOperator):
    """Core → RAN: learns downlink tunnels, forwards everything but Pinger replies."""

    kind = "tof_downlink"

    def _step(self, batch: PacketBatch, h: Headers, now: float) -> tuple[list[PacketBatch], Drops]:
        out, drops = self.tof.downlink(batch, h, now)
        return [out], drops


class TofEdge(_TofOperator):
    """Edge apps → RAN: replies tunnelled into the UE's downlink tunnel."""

    kind = "tof_edge"

    def _step(self, batch: PacketBatch, h: Headers, now: float) -> tuple[list[PacketBatch], Drops]:
        out, drops = self.tof.edge(batch, h, now)
        return [out], drops


def tof_graph(tof: Tof, name: str = "tof", **graph_options: object) -> Graph:
    """The TOF graph with ports "ran", "core" and "edge" (each a source and a sink).

    `graph_options` go to `Graph` (e.g. errors="raise" in tests).
    """
    g = Graph(name, **graph_options)  # type: ignore[arg-type]
    up = g.source("ran").parse(name="ran_parse").fork(TofUplink(tof, "tof_uplink"))
    up["core"].to("core")
    up["edge"].to("edge")
    g.source("core").parse(name="core_parse").then(TofDownlink(tof, "tof_downlink")).to("ran")
    g.source("edge").parse(name="edge_parse").then(TofEdge(tof, "tof_edge")).to("ran")
    for port in ("ran", "core", "edge"):
        g.sink(port)
    return g
