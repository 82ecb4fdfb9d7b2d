"""The packet loop of a `runtime: nf` instance: ports in, graph, ports out, reports home.

The handler's `graph(context)` builds the NF; the manifest binds each of the graph's port
names to a port the node opened for us (see `nfaas.nf.ports.claim`). One thread runs the
loop: take a batch from every source port, run the graph once, send what reached each sink,
and sleep in poll() when nothing came. Timers fire even when no packet comes. An HTTP
handler (the NF's control API) runs in the worker's main thread; `lock` keeps it and the
graph from running at the same time, so a handler may change the NF's state safely.
"""

from __future__ import annotations

import dataclasses
import select
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

from nfaas.nf.batch import PacketBatch
from nfaas.nf.graph import Graph
from nfaas.nf.ports import CaptureInPort, CaptureOutPort, Port
from nfaas.nf.ports.claim import PortClaim, attach_port
from nfaas.worker.protocol import PortBinding, Report

IDLE_POLL = 0.05  # longest sleep without packets: how late a timer may fire
# Most packets taken from a port per round. A graph costs ~3 ms per batch whatever its size
# (nfaas bench nf: 71 kpps in batches of 256, 0.6 Mpps in one large batch), and a round only
# takes what is waiting, so a large bound costs no latency when traffic is light.
NF_BURST = 4096
REPORT_EVERY = 1.0


class NfLoadError(Exception):
    """The NF cannot start: its graph or its ports do not fit the manifest."""


def build_graph(module: Any, context: Any) -> Graph:
    make = getattr(module, "graph", None)
    if not callable(make):
        raise NfLoadError("handler.py of a runtime nf function must define graph(context)")
    graph = make(context)
    if not isinstance(graph, Graph):
        raise NfLoadError(f"graph(context) returned {type(graph).__name__}, not a Graph")
    graph.validate()
    return graph


def check_ports(graph: Graph, bound: list[str]) -> None:
    """Every port the graph names is bound in the manifest, and every bound port is used."""
    used = set(graph.sources) | set(graph.sinks)
    missing = sorted(used - set(bound))
    unused = sorted(set(bound) - used)
    problems = []
    if missing:
        problems.append(
            f"graph '{graph.name}' uses ports {missing} that the manifest does not bind"
        )
    if unused:
        problems.append(f"the manifest binds ports {unused} that graph '{graph.name}' never uses")
    if problems:
        raise NfLoadError("; ".join(problems) + f" (manifest ports: {sorted(bound)})")


def attach_ports(bindings: list[PortBinding], fds: list[int]) -> dict[str, Port]:
    if len(fds) != len(bindings):
        for fd in fds:
            PortClaim("", "", [fd]).close()
        raise NfLoadError(f"got {len(fds)} port descriptors for {len(bindings)} ports")
    ports: dict[str, Port] = {}
    try:
        for index, (binding, fd) in enumerate(zip(bindings, fds, strict=True)):
            claim = PortClaim(binding.name, binding.url, [fd], dict(binding.info))
            ports[binding.name] = attach_port(claim, port_id=index)
    except BaseException:
        for port in ports.values():
            port.close()
        raise
    return ports


class NfRunner:
    def __init__(
        self,
        graph: Graph,
        ports: dict[str, Port],
        report: Callable[[Report], None],
        burst: int = NF_BURST,
    ) -> None:
        self.graph = graph
        self.ports = ports
        self.report = report
        self.burst = burst
        self.lock = threading.Lock()
        self.sources = [(name, ports[name]) for name in graph.sources]
        self.sinks = {name: ports[name] for name in graph.sinks}
        self.poll = select.poll()
        for _name, port in self.sources:
            if not isinstance(port, CaptureInPort):  # a file is always "readable"
                self.poll.register(port.fileno(), select.POLLIN)
        self._reported_at = 0.0
        self._reported_rx = -1
        self._thread = threading.Thread(target=self._run, name="nf-loop", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        try:
            while True:
                self.step()
        except BaseException:  # the NF is broken: say why and let the node replace us
            traceback.print_exc()
            sys.stderr.flush()
            import os

            os._exit(71)

    def step(self) -> int:
        """One round: receive, run, send (or wait a little). Returns packets received."""
        batches: dict[str, PacketBatch] = {}
        for name, port in self.sources:
            batch = port.recv_batch(self.burst, 0.0)
            if len(batch):
                batches[name] = batch
        now = time.time()
        received = sum(len(b) for b in batches.values())
        if batches:
            with self.lock:
                outputs = self.graph.run_batch(batches, now)
            for name, batch in outputs.items():
                if len(batch):
                    self.sinks[name].send_batch(batch)
        else:
            with self.lock:
                self.graph.tick(now)
            self.poll.poll(self._idle_ms(now))
        if now - self._reported_at >= REPORT_EVERY:
            self.send_report(now)
        return received

    def _idle_ms(self, now: float) -> int:
        wait = IDLE_POLL
        deadline = self.graph.timers.next_deadline()
        if deadline is not None:
            wait = min(wait, max(0.0, deadline - now))
        return max(1, int(wait * 1000))

    def send_report(self, now: float) -> None:
        stats = {name: dataclasses.asdict(port.stats()) for name, port in self.ports.items()}
        rx = sum(s["rx_packets"] for s in stats.values())
        self._reported_at = now
        if rx == self._reported_rx:
            return  # nothing moved: the node's last report still holds
        self._reported_rx = rx
        with self.lock:
            operators = self.graph.counters()
        self.report(Report(0, operators, stats, rx))

    def close(self) -> None:
        for port in self.ports.values():
            if isinstance(port, CaptureOutPort):
                port.close()
