"""Prometheus metrics: OpenFaaS's gateway series plus cold starts and their phases, NF
operator counters and the event plane's (async calls, trigger deliveries, callbacks, bus)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from nfaas.events.plane import EventPlane
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


class EventsCollector(Collector):
    """The event plane's counters, read at scrape time."""

    def __init__(self, events: EventPlane) -> None:
        self._events = events

    def collect(self):  # type: ignore[no-untyped-def]
        accepted = CounterMetricFamily(
            "nfaas_async_calls_accepted", "Async calls stored (a re-sent call id counts once)",
            labels=["function_name"],
        )  # fmt: skip
        deliveries = CounterMetricFamily(
            "nfaas_event_deliveries",
            "Queued deliveries by kind (call, trigger) and outcome (succeeded, retried, dead, "
            "skipped: finished before, not run again)",
            labels=["function_name", "kind", "outcome"],
        )
        for key, kind, counts in self._events.counters():
            name = label(key)
            if kind == "call":
                accepted.add_metric([name], counts.accepted)
            for outcome in ("succeeded", "retried", "dead", "skipped"):
                deliveries.add_metric([name, kind, outcome], getattr(counts, outcome))
        in_flight = GaugeMetricFamily(
            "nfaas_event_deliveries_in_flight", "Queued deliveries running now",
            labels=["function_name"],
        )  # fmt: skip
        for key, busy in self._events.in_flight().items():
            in_flight.add_metric([label(key)], busy)
        info = self._events.info()
        callbacks = CounterMetricFamily(
            "nfaas_callbacks", "X-Callback-Url deliveries by outcome", labels=["outcome"]
        )
        for outcome, count in dict(info["callbacks"]).items():
            callbacks.add_metric([outcome], count)
        bus = dict(info["bus"])
        connected = GaugeMetricFamily("nfaas_bus_connected", "1 while connected to NATS")
        connected.add_metric([], 1 if bus.get("connected") else 0)
        reconnects = CounterMetricFamily("nfaas_bus_reconnects", "Reconnections to NATS")
        reconnects.add_metric([], bus.get("reconnects", 0))
        yield from (accepted, deliveries, in_flight, callbacks, connected, reconnects)
        server = info["nats_server"]
        if isinstance(server, dict):
            restarts = CounterMetricFamily(
                "nfaas_nats_server_restarts", "Restarts of the supervised nats-server"
            )
            restarts.add_metric([], server["restarts"])
            yield restarts


class Metrics:
    def __init__(self, agent: NodeAgent, events: EventPlane | None = None) -> None:
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
        if events is not None:
            self.registry.register(EventsCollector(events))
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
