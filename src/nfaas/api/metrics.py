"""Prometheus metrics: OpenFaaS's gateway series plus cold starts and their phases."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from nfaas.node.agent import NodeAgent
from nfaas.node.coldstart import ColdStart
from nfaas.node.logs import FunctionKey
from nfaas.node.nf_pool import NfPool

PHASE_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10)


def label(key: FunctionKey) -> str:
    return f"{key[1]}.{key[0]}"


class PoolCollector(Collector):
    """Replica and queue gauges read from the node agent at scrape time."""

    def __init__(self, agent: NodeAgent) -> None:
        self._agent = agent

    def collect(self):  # type: ignore[no-untyped-def]
        replicas = GaugeMetricFamily(
            "gateway_service_count", "Running instances", labels=["function_name"]
        )
        starting = GaugeMetricFamily(
            "nfaas_instances_starting", "Instances being started", labels=["function_name"]
        )
        queued = GaugeMetricFamily(
            "nfaas_queue_length", "Requests waiting for a slot", labels=["function_name"]
        )
        inflight = GaugeMetricFamily(
            "nfaas_inflight_requests", "Requests in flight", labels=["function_name"]
        )
        for key, pool in self._agent.pools.items():
            name = [label(key)]
            replicas.add_metric(name, len(pool.slots))
            starting.add_metric(name, pool.starting)
            queued.add_metric(name, len(pool.waiters))
            inflight.add_metric(name, sum(s.inflight for s in pool.slots))
        ready = GaugeMetricFamily("nfaas_shells_ready", "Prepared shells waiting", labels=["tier"])
        target = GaugeMetricFamily("nfaas_shells_target", "Prepared shells wanted", labels=["tier"])
        for tier, shells in self._agent.shells.items():
            ready.add_metric([tier], len(shells.ready))
            target.add_metric([tier], shells.size)
        yield from (replicas, starting, queued, inflight, ready, target)
        yield from nf_counters(self._agent)


def nf_counters(agent: NodeAgent) -> list[CounterMetricFamily]:
    """Per-operator and per-port counters of NF functions, summed over their instances."""
    op_labels = ["function_name", "operator", "kind"]
    packets = CounterMetricFamily(
        "nfaas_nf_operator_packets", "Packets into/out of an NF operator",
        labels=[*op_labels, "direction"],
    )  # fmt: skip
    octets = CounterMetricFamily(
        "nfaas_nf_operator_bytes", "Bytes into/out of an NF operator",
        labels=[*op_labels, "direction"],
    )  # fmt: skip
    drops = CounterMetricFamily(
        "nfaas_nf_operator_drops", "Packets an NF operator dropped", labels=[*op_labels, "reason"]
    )
    errors = CounterMetricFamily(
        "nfaas_nf_operator_errors", "Batches lost to errors in user code", labels=op_labels
    )
    ports = CounterMetricFamily(
        "nfaas_nf_port", "Port counters of NF functions (rx/tx packets, bytes, dropped)",
        labels=["function_name", "port", "counter"],
    )  # fmt: skip
    for key, pool in agent.pools.items():
        if not isinstance(pool, NfPool):
            continue
        fn = label(key)
        for (what, name, kind, counter, reason), value in pool.totals.items():
            if what == "port":
                ports.add_metric([fn, name, counter], value)
            elif counter == "drops":
                drops.add_metric([fn, name, kind, reason], value)
            elif counter == "errors":
                errors.add_metric([fn, name, kind], value)
            else:
                family = packets if counter.startswith("packets") else octets
                family.add_metric([fn, name, kind, counter.rpartition("_")[2]], value)
    return [packets, octets, drops, errors, ports]


class Metrics:
    def __init__(self, agent: NodeAgent) -> None:
        self.registry = CollectorRegistry()
        self.invocations = Counter(
            "gateway_function_invocation",
            "Function invocations by status code",
            ["function_name", "code"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "gateway_functions_seconds",
            "Invocation duration through the gateway",
            ["function_name"],
            registry=self.registry,
        )
        self.cold_starts = Counter(
            "nfaas_cold_starts", "Cold starts completed", ["function_name"], registry=self.registry
        )
        self.phases = Histogram(
            "nfaas_cold_start_phase_seconds",
            "Duration of each cold-start phase (after the previous one)",
            ["function_name", "phase"],
            buckets=PHASE_BUCKETS,
            registry=self.registry,
        )
        self.registry.register(PoolCollector(agent))
        self._observers: dict[tuple[str, int], Callable[[float], None]] = {}

    def observe_invocation(self, key: FunctionKey, code: int, seconds: float) -> None:
        observe = self._observers.get((key[1] + "." + key[0], code))
        if observe is None:
            name = label(key)
            counter = self.invocations.labels(name, str(code))
            histogram = self.duration.labels(name)

            def observe(value: float, counter=counter, histogram=histogram) -> None:  # type: ignore[no-untyped-def]
                counter.inc()
                histogram.observe(value)

            self._observers[(name, code)] = observe
        observe(seconds)

    def observe_cold_start(self, key: FunctionKey, record: ColdStart) -> None:
        name = label(key)
        self.cold_starts.labels(name).inc()
        for phase, seconds in record.durations().items():
            self.phases.labels(name, phase).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)
