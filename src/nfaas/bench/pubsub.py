"""``nfaas bench pubsub``: the bus (NATS + JetStream) under the sources' monitoring workloads.

A load generator in the manner of Sangrenel, the Kafka generator both sources use: producers
publish at constant rates on many topics, and per step it reports the offered and achieved
publish rates, the batch write latency (until the broker has acknowledged the batch), the
I/O message ratio, errors and timeouts, and the broker's CPU.

Two workloads:

- **a** (seed 001 §IV-B, the 5G EVE monitoring platform): per experiment 20 topics, 8 x 100 B
  and 8 x 1,000 B at 1,000 msg/s, 2 x 100 KB and 2 x 1 MB at 1 msg/s; 1 to 6 concurrent
  experiments, each on its own topics named like the platform's
  (``<useCase>.<expId>.<site>.<type>.<metric>``, e.g. ``bench.exp1.site1.kpi.m01``).
- **b** (seed 000 §5.2.2, the Kafka broker VNF): 1 to 20 topics of 800 B messages at
  800 msg/s (5.12 Mb/s) each.

Every step runs twice in the same run: through JetStream (one file-stored stream per topic,
PubAcks pipelined: see `nfaas.bench.pubsub_load`) and through core NATS with nothing stored,
the baseline that shows what durability costs. Consumers read every topic (push consumers on
the streams; subscriptions in core NATS), as the sources' consumers do.

KPIs of a step (its window is the step minus a warm-up):

- *achieved rate*: messages of the batches started in the window that the broker acknowledged
  (core NATS: that a PONG confirmed), per second, against the rate offered in the window;
- *I/O message ratio*: messages the consumers received / messages the producers had
  acknowledged, over the whole step (consumers get a short drain after the producers stop);
- *batch write latency*: a batch is what one producer sends in one 10 ms tick; from its first
  send to the broker's last PubAck for it (core NATS: to the PONG of a PING sent after it);
- *CPU*: the broker's utime + stime over the window from ``/proc/<pid>/stat`` (% of one core),
  the same per achieved Mb/s (seed 000's Table 4 form), and the generator's own processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing as mp
import os
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from nfaas.bench.pubsub_load import (
    BIN_S,
    ConsumerSpec,
    ProducerSpec,
    TopicLoad,
    consumer_main,
    due_messages,
    producer_main,
    split_round_robin,
    window_sum,
)
from nfaas.bench.report import RESULTS, markdown, print_table, save, summary

#: seed 001's topics per experiment: (count, message bytes, messages per second)
SEED001_MIX: tuple[tuple[int, int, float], ...] = (
    (8, 100, 1000.0),
    (8, 1000, 1000.0),
    (2, 100 * 1024, 1.0),
    (2, 1024 * 1024, 1.0),
)
SEED001_NOMINAL_MBPS = 102.4  # what the source calls one experiment's rate
SEED000_SIZE = 800
SEED000_RATE = 800.0  # 5.12 Mb/s a topic
EXPERIMENTS = (1, 2, 3, 4, 5, 6)
QUICK_EXPERIMENTS = (1, 2)
TOPIC_COUNTS = (1, 5, 10, 15, 20)
QUICK_TOPIC_COUNTS = (1, 5)
SECONDS = 10.0
QUICK_SECONDS = 2.0
WARMUP = 1.0
QUICK_WARMUP = 0.5
MODES = ("jetstream", "core")
STREAM_MAX_BYTES = 128 * 1024 * 1024  # per stream, discard old: a step never fills the disk
RATIO_FLOOR = 0.99  # below this the sources call the configuration unacceptable
TARGET_RATIO = 0.999
TARGET_P50_MS = 3.0
GENERATOR_BUSY_PCT = 90.0  # a generator process this busy may be what limits the step
MACHINE_BUSY_PCT = 95.0
GOLDEN = (math.sqrt(5) - 1) / 2

#: the sources' numbers, quoted beside ours
ANCHORS: dict[str, dict[str, Any]] = {
    "a": {
        "source": "seed 001 §IV-B, Fig. 4 (Kafka broker; 6 experiments max)",
        "ratio_held_experiments": {"Kubernetes": 4, "bare metal / Docker": 3, "KVM VM": 1},
        "latency_ms": "< 3 ms at 6 experiments (bare metal, Docker, Kubernetes); ~40 ms (KVM)",
        "cpu": "8-10 % at 1 experiment, saturating at 25-27 % (mpstat, Server #1)",
        "io_ratio": "KVM 0.999 at 1 and 0.746 at 2 experiments; Docker ~0.75 at 6",
    },
    "b": {
        "source": "seed 000 §5.2.2, Figs. 9-11, Table 4 (Kafka VNF in Kata containers)",
        "loss": {
            "1 topic": "0 %",
            "5 topics": "0.17 % (QEMU), 0.41 % (Firecracker)",
            "10 topics": "3.5 % (QEMU)",
        },
        "latency_ms": "~3 ms at 25 Mb/s (5 topics)",
        "cpu": "< 4.5 % of a core at 25 Mb/s",
        "cpu_per_mbps": {"VM": 0.045, "Docker in a VM": 0.054, "Kata + Firecracker": 0.034},
    },
}


@dataclass(frozen=True)
class Topic:
    """One topic of a workload: its subject, message size and rate."""

    subject: str
    size: int  # bytes a message
    rate: float  # messages a second

    @property
    def mbps(self) -> float:
        return self.size * 8 * self.rate / 1e6

    @property
    def stream(self) -> str:
        """JetStream stream names may not contain dots."""
        return self.subject.replace(".", "_")


@dataclass(frozen=True)
class Step:
    """One load level of a workload: `level` experiments (a) or topics (b)."""

    workload: str
    level: int
    topics: tuple[Topic, ...]

    @property
    def offered_msgs_per_s(self) -> float:
        return sum(t.rate for t in self.topics)

    @property
    def offered_mbps(self) -> float:
        return sum(t.mbps for t in self.topics)


def experiment_topics(exp_id: int, use_case: str = "bench", site: str = "site1") -> list[Topic]:
    """Seed 001's 20 topics of one experiment, named like the monitoring platform's."""
    topics: list[Topic] = []
    for count, size, rate in SEED001_MIX:
        for _ in range(count):
            metric = f"m{len(topics) + 1:02d}"
            topics.append(Topic(f"{use_case}.exp{exp_id}.{site}.kpi.{metric}", size, rate))
    return topics


def workload_a(experiments: int) -> Step:
    """Seed 001: `experiments` concurrent experiments, each on its own 20 topics."""
    if experiments < 1:
        raise ValueError(f"experiments must be at least 1, not {experiments}")
    topics = [t for exp in range(1, experiments + 1) for t in experiment_topics(exp)]
    return Step("a", experiments, tuple(topics))


def workload_b(topics: int) -> Step:
    """Seed 000: `topics` topics of 800 B messages at 5.12 Mb/s each."""
    if topics < 1:
        raise ValueError(f"topics must be at least 1, not {topics}")
    return Step(
        "b",
        topics,
        tuple(
            Topic(f"bench.vnf.site1.kpi.t{i:02d}", SEED000_SIZE, SEED000_RATE)
            for i in range(1, topics + 1)
        ),
    )


def parse_levels(text: str, what: str) -> tuple[int, ...]:
    """ "1,2,3" -> (1, 2, 3); names the offending item."""
    levels: list[int] = []
    for position, item in enumerate(text.split(","), 1):
        item = item.strip()
        try:
            value = int(item)
        except ValueError:
            raise ValueError(f"{what}: item {position} ({item!r}) is not a whole number") from None
        if value < 1:
            raise ValueError(f"{what}: item {position} ({value}) must be at least 1")
        levels.append(value)
    if not levels:
        raise ValueError(f"{what}: no values given")
    return tuple(levels)


def topic_loads(topics: Sequence[Topic]) -> list[TopicLoad]:
    """Topics with phases spread over their period (golden-ratio sequence), so that the
    1 msg/s topics of different experiments do not all send in the same tick."""
    return [TopicLoad(t.subject, t.size, t.rate, (i * GOLDEN) % 1.0) for i, t in enumerate(topics)]


def offered_between(loads: Sequence[TopicLoad], start: float, end: float) -> int:
    """Messages the schedule makes due in (start, end] seconds after the step begins."""
    return sum(
        due_messages(t.rate, t.phase, end) - due_messages(t.rate, t.phase, start) for t in loads
    )


def latency_ms(latencies_s: Sequence[float]) -> dict[str, float]:
    """n, p50, p90, p99, mean, min, max of batch write latencies, in milliseconds."""
    stats = summary([value * 1000 for value in latencies_s])
    return {key: (value if key == "n" else round(value, 3)) for key, value in stats.items()}


def ratio(numerator: float, denominator: float) -> float | None:
    return None if denominator <= 0 else numerator / denominator


def cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process (all its threads), from /proc/<pid>/stat."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def machine_ticks() -> tuple[int, int]:
    """(busy, total) jiffies of all CPUs, from /proc/stat."""
    with open("/proc/stat") as stat:
        values = [int(v) for v in stat.readline().split()[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values) - idle, sum(values)


@dataclass
class CpuSample:
    at: float
    pids: dict[str, float | None]
    machine: tuple[int, int]


def sample_cpu(pids: dict[str, int | None]) -> CpuSample:
    return CpuSample(
        time.monotonic(),
        {name: (cpu_seconds(pid) if pid else None) for name, pid in pids.items()},
        machine_ticks(),
    )


def cpu_between(first: CpuSample, last: CpuSample) -> dict[str, Any]:
    """% of one core for each process; % of all cores for the machine."""
    wall = last.at - first.at
    per: dict[str, float | None] = {}
    for name, before in first.pids.items():
        after = last.pids.get(name)
        per[name] = (
            None
            if before is None or after is None or wall <= 0
            else round((after - before) / wall * 100, 1)
        )
    busy = last.machine[0] - first.machine[0]
    total = last.machine[1] - first.machine[1]
    return {"processes": per, "machine_busy_pct": round(busy / total * 100, 1) if total else None}


@dataclass(frozen=True)
class Settings:
    seconds: float = SECONDS
    warmup: float = WARMUP
    tick: float = 0.010
    producers: int = 2
    consumers: int = 2
    ack_timeout: float = 5.0
    drain_idle: float = 1.0  # stop draining consumers after this long without a delivery
    drain_max: float = 10.0
    ready_timeout: float = 60.0
    stream_max_bytes: int = STREAM_MAX_BYTES  # a broker VNF's store is its instance's tmpfs

    def __post_init__(self) -> None:
        if self.seconds <= self.warmup:
            raise ValueError(f"seconds ({self.seconds}) must exceed the warm-up ({self.warmup})")
        if self.producers < 1 or self.consumers < 1:
            raise ValueError("at least one producer and one consumer process are needed")


@dataclass
class _Processes:
    """The generator processes of one step (spawned, so none inherits the parent's loop)."""

    ctx: Any
    results: Any
    stop: Any
    start_at: Any
    counts: Any
    producers: list[Any] = field(default_factory=list)
    consumers: list[Any] = field(default_factory=list)

    def all(self) -> list[Any]:
        return self.producers + self.consumers

    def delivered(self) -> int:
        return int(sum(self.counts[:]))

    async def expect(self, kind: str, count: int, timeout: float) -> list[tuple[str, int, Any]]:
        """`count` messages of `kind` from the children; a child's error is raised."""
        got: list[tuple[str, int, Any]] = []
        deadline = time.monotonic() + timeout
        while len(got) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"generator: {len(got)} of {count} {kind} messages")
            try:
                message = await asyncio.to_thread(self.results.get, True, min(left, 1.0))
            except Exception:  # queue.Empty
                if any(p.exitcode not in (None, 0) for p in self.all()):
                    raise RuntimeError("a generator process died without a report") from None
                continue
            tag, role, index, payload = message
            if tag == "error":
                raise RuntimeError(f"{role} {index} failed:\n{payload}")
            if tag == kind:
                got.append((role, index, payload))
        return got

    def end(self) -> None:
        """Stop whatever is still running: our own children only, by their handles."""
        self.stop.set()
        for process in self.all():
            if process.pid is None:  # never started
                continue
            process.join(timeout=5)
            if process.is_alive():
                process.terminate()
                process.join(timeout=5)


def _spawn(step: Step, jetstream: bool, url: str, settings: Settings, token: str) -> _Processes:
    ctx = mp.get_context("spawn")
    loads = topic_loads(step.topics)
    consumer_groups = split_round_robin(list(step.topics), settings.consumers)
    producer_groups = split_round_robin(loads, settings.producers)
    procs = _Processes(
        ctx=ctx,
        results=ctx.Queue(),
        stop=ctx.Event(),
        start_at=ctx.Value("d", 0.0, lock=False),
        counts=ctx.Array("q", len(consumer_groups), lock=False),
    )
    for index, group in enumerate(consumer_groups):
        spec = ConsumerSpec(
            url,
            index,
            tuple(t.subject for t in group),
            tuple(t.stream for t in group) if jetstream else None,
            seconds=settings.seconds,
        )
        process = ctx.Process(
            target=consumer_main,
            args=(spec, procs.results, procs.stop, procs.counts, procs.start_at),
            name=f"pubsub-consumer-{index}",
            daemon=True,
        )
        procs.consumers.append(process)
    for index, producer_group in enumerate(producer_groups):
        pspec = ProducerSpec(
            url,
            index,
            tuple(producer_group),
            jetstream,
            settings.seconds,
            settings.warmup,
            tick=settings.tick,
            ack_timeout=settings.ack_timeout,
            inbox=f"_PSB.{token}.ack.{index}",
        )
        process = ctx.Process(
            target=producer_main,
            args=(pspec, procs.results, procs.start_at),
            name=f"pubsub-producer-{index}",
            daemon=True,
        )
        procs.producers.append(process)
    return procs


async def _create_streams(
    js: Any, topics: Sequence[Topic], max_bytes: int = STREAM_MAX_BYTES
) -> list[str]:
    from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig

    created: list[str] = []
    for topic in topics:
        try:
            await js.add_stream(
                StreamConfig(
                    name=topic.stream,
                    subjects=[topic.subject],
                    storage=StorageType.FILE,
                    retention=RetentionPolicy.LIMITS,
                    max_bytes=max_bytes,
                    discard=DiscardPolicy.OLD,
                    num_replicas=1,
                )
            )
        except Exception as exc:
            raise RuntimeError(f"creating stream {topic.stream} ({topic.subject}): {exc}") from exc
        created.append(topic.stream)
    return created


async def _delete_streams(js: Any, names: Sequence[str]) -> None:
    for name in names:
        with contextlib.suppress(Exception):  # already gone is fine
            await js.delete_stream(name)


async def run_step(
    step: Step,
    mode: str,
    url: str,
    settings: Settings,
    broker_pid: int | None = None,
) -> dict[str, Any]:
    """Run one load level through JetStream (`mode` "jetstream") or core NATS ("core")."""
    import nats

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    jetstream = mode == "jetstream"
    token = f"{os.getpid()}x{time.monotonic_ns() % 10**9}"
    nc = await nats.connect(url, connect_timeout=5, error_cb=_quiet)
    js = nc.jetstream()
    streams: list[str] = []
    procs: _Processes | None = None
    try:
        if jetstream:
            streams = await _create_streams(js, step.topics, settings.stream_max_bytes)
        procs = _spawn(step, jetstream, url, settings, token)
        for process in procs.consumers:
            process.start()
        await procs.expect("ready", len(procs.consumers), settings.ready_timeout)
        for process in procs.producers:
            process.start()
        await procs.expect("ready", len(procs.producers), settings.ready_timeout)

        pids: dict[str, int | None] = {"broker": broker_pid}
        pids |= {f"producer{i}": p.pid for i, p in enumerate(procs.producers)}
        pids |= {f"consumer{i}": p.pid for i, p in enumerate(procs.consumers)}
        start = time.monotonic() + 0.2
        procs.start_at.value = start
        await asyncio.sleep(max(0.0, start + settings.warmup - time.monotonic()))
        first = sample_cpu(pids)
        await asyncio.sleep(max(0.0, start + settings.seconds - time.monotonic()))
        last = sample_cpu(pids)

        reports = [
            payload
            for _, _, payload in await procs.expect(
                "report", len(procs.producers), settings.ack_timeout + 30.0
            )
        ]
        acked = sum(r["acked"] for r in reports)
        await _drain(procs, acked, settings)
        procs.stop.set()
        consumed = [
            payload
            for _, _, payload in await procs.expect(
                "report", len(procs.consumers), settings.ready_timeout
            )
        ]
    finally:
        if procs is not None:
            procs.end()
        await _delete_streams(js, streams)
        await nc.close()
    return step_row(step, mode, settings, reports, consumed, first, last)


async def _drain(procs: _Processes, acked: int, settings: Settings) -> None:
    """Let the consumers catch up: until they have everything acknowledged, or nothing
    arrives for `drain_idle` seconds, or `drain_max` has passed."""
    deadline = time.monotonic() + settings.drain_max
    seen, since = procs.delivered(), time.monotonic()
    while time.monotonic() < deadline:
        now_seen = procs.delivered()
        if now_seen >= acked:
            return
        if now_seen != seen:
            seen, since = now_seen, time.monotonic()
        elif time.monotonic() - since > settings.drain_idle:
            return
        await asyncio.sleep(0.02)


def step_row(
    step: Step,
    mode: str,
    settings: Settings,
    producers: Sequence[dict[str, Any]],
    consumers: Sequence[dict[str, Any]],
    first: CpuSample,
    last: CpuSample,
) -> dict[str, Any]:
    """The KPIs of one step from the processes' reports and the CPU samples."""
    loads = topic_loads(step.topics)
    window = settings.seconds - settings.warmup
    offered_total = offered_between(loads, 0.0, settings.seconds)

    def total(key: str) -> int:
        return int(sum(r[key] for r in producers))

    sent, acked = total("sent"), total("acked")
    delivered = int(sum(c["delivered"] for c in consumers))
    acked_bins = merge_timelines([r["acked_timeline"] for r in producers])
    delivered_bins = merge_timelines([c["delivered_timeline"] for c in consumers])
    warmup, seconds = settings.warmup, settings.seconds
    acked_window = window_sum(acked_bins["msgs"], warmup, seconds)
    delivered_window = window_sum(delivered_bins["msgs"], warmup, seconds)
    achieved_mbps = window_sum(acked_bins["bytes"], warmup, seconds) * 8 / window / 1e6
    delivered_mbps = window_sum(delivered_bins["bytes"], warmup, seconds) * 8 / window / 1e6
    offered_window = offered_between(loads, warmup, seconds)
    latencies = [value for r in producers for value in r["latencies"]]
    cpu = cpu_between(first, last)
    per = cpu["processes"]
    broker_pct = per.pop("broker", None)
    producer_pct = [per[k] for k in sorted(per) if k.startswith("producer")]
    consumer_pct = [per[k] for k in sorted(per) if k.startswith("consumer")]
    generator = [p for p in producer_pct + consumer_pct if p is not None]
    row: dict[str, Any] = {
        "workload": step.workload,
        "level": step.level,
        "mode": mode,
        "topics": len(step.topics),
        "offered": {
            "msgs_per_s": step.offered_msgs_per_s,
            "mbps": round(step.offered_mbps, 3),
        },
        "window_s": window,
        "achieved": {  # acknowledged by the broker in the window
            "msgs_per_s": round(acked_window / window, 1),
            "mbps": round(achieved_mbps, 3),
            "of_offered": _round(ratio(acked_window, offered_window)),
        },
        "delivered": {  # received by the consumers in the window
            "msgs_per_s": round(delivered_window / window, 1),
            "mbps": round(delivered_mbps, 3),
        },
        "messages": {
            "offered": offered_total,
            "sent": sent,
            "acked": acked,
            "delivered": delivered,
            "delivered_at_window_end": window_sum(delivered_bins["msgs"], 0.0, seconds),
            "skipped_late": total("skipped_late"),  # the generator fell behind
            "skipped_backpressure": total("skipped_backpressure"),  # the broker did
            "errors": total("errors"),
            "timeouts": total("timeouts"),
            "late_ticks": total("late_ticks"),
            "producer_disconnects": total("disconnects"),
            "consumer_disconnects": int(sum(c["disconnects"] for c in consumers)),
        },
        # delivered / acknowledged over the window (above 1 when acknowledgements lag)
        "io_ratio": _round(ratio(delivered_window, acked_window)),
        "io_ratio_after_drain": _round(ratio(delivered, acked)),  # loss: what never arrived
        # the sources' I/O message ratio: received throughput / publication rate
        "delivered_of_offered": _round(ratio(delivered_window, offered_window)),
        "per_second": {  # acknowledged and delivered messages, second by second
            "acked": per_second(acked_bins["msgs"]),
            "delivered": per_second(delivered_bins["msgs"]),
        },
        "latency_ms": latency_ms(latencies),
        "cpu": {
            "broker_pct": broker_pct,
            "broker_pct_per_mbps": (
                None
                if broker_pct is None or achieved_mbps <= 0
                else round(broker_pct / achieved_mbps, 4)
            ),
            "producers_pct": producer_pct,
            "consumers_pct": consumer_pct,
            "generator_pct": round(sum(generator), 1),
            "machine_busy_pct": cpu["machine_busy_pct"],
            "loadavg_1m": round(os.getloadavg()[0], 2),
        },
        "error_samples": [s for r in producers for s in r["error_samples"]][:5],
    }
    row["limited_by"] = limited_by(row)
    return row


def merge_timelines(timelines: Sequence[dict[str, list[int]]]) -> dict[str, list[int]]:
    """The bin-by-bin sum of several processes' timelines."""
    merged: dict[str, list[int]] = {"msgs": [], "bytes": []}
    for timeline in timelines:
        for key, bins in merged.items():
            theirs = timeline[key]
            if len(theirs) > len(bins):
                bins.extend([0] * (len(theirs) - len(bins)))
            for i, value in enumerate(theirs):
                bins[i] += value
    return merged


def per_second(bins: Sequence[int]) -> list[int]:
    step = round(1.0 / BIN_S)
    return [sum(bins[i : i + step]) for i in range(0, len(bins), step)]


def _round(value: float | None, digits: int = 5) -> float | None:
    return None if value is None else round(value, digits)


def limited_by(row: dict[str, Any]) -> str:
    """What most likely held a step back: nothing, the generator, the CPUs, or the broker.

    A generator process near a full core is the generator's own limit; a machine with every
    core busy is contention (broker, generator and whatever else runs there); a generator
    behind its schedule on a machine with idle time is the generator; else the broker.
    """
    messages = row["messages"]
    kept_up = (
        worst_ratio(row) >= RATIO_FLOOR and messages["errors"] == 0 and messages["timeouts"] == 0
    )
    if kept_up:
        return "-"
    cpu = row["cpu"]
    generator = [p for p in cpu["producers_pct"] + cpu["consumers_pct"] if p is not None]
    if generator and max(generator) >= GENERATOR_BUSY_PCT:
        return f"generator (a process at {max(generator):.0f} %)"
    late = messages["skipped_late"] > messages["offered"] * (1 - RATIO_FLOOR)
    if (cpu["machine_busy_pct"] or 0) >= MACHINE_BUSY_PCT:
        starved = "; generator fell behind" if late else ""
        return f"CPU (machine {cpu['machine_busy_pct']:.0f} % busy{starved})"
    if late:
        return "generator (behind its schedule)"
    return "broker"


def worst_ratio(row: dict[str, Any]) -> float:
    """The lowest of delivered/acknowledged, delivered/offered and acknowledged/offered."""
    values = (row["io_ratio"], row["delivered_of_offered"], row["achieved"]["of_offered"])
    return min((v if v is not None else 0.0) for v in values)


def targets(rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """The issue's targets and the saturation points, from JetStream rows."""
    out: dict[str, Any] = {}
    js_a = {r["level"]: r for r in rows if r["workload"] == "a" and r["mode"] == "jetstream"}
    one = js_a.get(1)
    if one is not None:
        p50 = one["latency_ms"].get("p50")
        io, seed_io = one["io_ratio"], one["delivered_of_offered"]
        out["one_experiment"] = {
            "io_ratio": io,
            "delivered_of_offered": seed_io,
            "io_ratio_target": TARGET_RATIO,
            "io_ratio_met": min(io or 0.0, seed_io or 0.0) >= TARGET_RATIO,
            "p50_ms": p50,
            "p50_target_ms": TARGET_P50_MS,
            "p50_met": p50 is not None and p50 <= TARGET_P50_MS,
            "achieved_of_offered": one["achieved"]["of_offered"],
        }
    for workload in ("a", "b"):
        levels = sorted(
            (r for r in rows if r["workload"] == workload and r["mode"] == "jetstream"),
            key=lambda r: r["level"],
        )
        if not levels:
            continue
        below = _first_below(levels, worst_ratio)
        held = [r["level"] for r in levels if below is None or r["level"] < below]
        out[f"saturation_{workload}"] = {
            "ratio_below_floor_at": below,
            "held_up_to": max(held) if held else None,
            "io_ratio_below_floor_at": _first_below(levels, lambda r: r["io_ratio"]),
            "delivered_of_offered_below_floor_at": _first_below(
                levels, lambda r: r["delivered_of_offered"]
            ),
            "achieved_of_offered_below_floor_at": _first_below(
                levels, lambda r: r["achieved"]["of_offered"]
            ),
            "highest_level_measured": levels[-1]["level"],
            "floor": RATIO_FLOOR,
        }
    return out


def _first_below(rows: Sequence[dict[str, Any]], value: Any) -> int | None:
    for row in rows:
        measured = value(row)
        if measured is None or measured < RATIO_FLOOR:
            return int(row["level"])
    return None


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def step_table(rows: Sequence[dict[str, Any]], workload: str) -> tuple[list[str], list[list[str]]]:
    level = "experiments" if workload == "a" else "topics"
    header = [
        level,
        "offered Mb/s",
        "bus",
        "achieved msg/s (of offered)",
        "delivered / acked",
        "delivered / offered",
        "batch write p50 / p99 ms",
        "errors + timeouts",
        "broker CPU %",
        "CPU %/Mb/s",
        "generator CPU % (busiest process)",
        "limited by",
    ]
    table: list[list[str]] = []
    for row in rows:
        if row["workload"] != workload:
            continue
        cpu = row["cpu"]
        generator = [p for p in cpu["producers_pct"] + cpu["consumers_pct"] if p is not None]
        lat = row["latency_ms"]
        messages = row["messages"]
        table.append(
            [
                str(row["level"]),
                f"{row['offered']['mbps']:.1f}",
                row["mode"],
                f"{row['achieved']['msgs_per_s']:,.0f} ({_fmt(row['achieved']['of_offered'], 4)})",
                _fmt(row["io_ratio"], 4),
                _fmt(row["delivered_of_offered"], 4),
                f"{_fmt(lat.get('p50'), 2)} / {_fmt(lat.get('p99'), 2)}",
                str(messages["errors"] + messages["timeouts"]),
                _fmt(cpu["broker_pct"]),
                _fmt(cpu["broker_pct_per_mbps"], 3),
                f"{cpu['generator_pct']:.0f} ({max(generator):.0f})" if generator else "-",
                row["limited_by"],
            ]
        )
    return header, table


def durability_table(
    rows: Sequence[dict[str, Any]], workload: str
) -> tuple[list[str], list[list[str]]]:
    """JetStream against core NATS at each level: what storing the messages costs."""
    level = "experiments" if workload == "a" else "topics"
    header = [level, "p50 latency JetStream / core", "broker CPU JetStream / core"]
    by_key = {(r["level"], r["mode"]): r for r in rows if r["workload"] == workload}
    table: list[list[str]] = []
    for n in sorted({r["level"] for r in rows if r["workload"] == workload}):
        js, core = by_key.get((n, "jetstream")), by_key.get((n, "core"))
        if js is None or core is None:
            continue
        lat = ratio(js["latency_ms"].get("p50") or 0, core["latency_ms"].get("p50") or 0)
        cpu = ratio(js["cpu"]["broker_pct"] or 0, core["cpu"]["broker_pct"] or 0)
        table.append([str(n), _times(lat), _times(cpu)])
    return header, table


def _times(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}x"


async def run_async(
    workloads: Sequence[str],
    experiments: Sequence[int],
    topic_counts: Sequence[int],
    settings: Settings,
    url: str | None = None,
    broker_pid: int | None = None,
    out_dir: Path = RESULTS,
    suffix: str = "",
    echo: bool = True,
) -> dict[str, dict[str, Any]]:
    """Run the chosen workloads; saves ``pubsub-<w><suffix>.json`` and ``.png`` for each."""
    for workload in workloads:
        if workload not in ("a", "b"):
            raise ValueError(f"workload must be a or b, not {workload!r}")
    server = None
    store = None
    try:
        if url is None:
            from nfaas.events.natsserver import NatsServer, NatsServerConfig

            store = tempfile.TemporaryDirectory(prefix="nfaas-bench-pubsub-")
            server = NatsServer(NatsServerConfig(store_dir=Path(store.name)))
            await server.start()
            # the platform's user: the device user may not touch the JetStream API
            url, broker_pid = server.platform_url, server.pid
        broker = await _broker_info(url, broker_pid, local=server is not None)
        results: dict[str, dict[str, Any]] = {}
        for workload in workloads:
            steps = (
                [workload_a(n) for n in experiments]
                if workload == "a"
                else [workload_b(n) for n in topic_counts]
            )
            rows: list[dict[str, Any]] = []
            for step in steps:
                for mode in MODES:
                    if echo:
                        print(
                            f"workload {workload}, {step.level} "
                            f"{'experiments' if workload == 'a' else 'topics'}, {mode} ...",
                            flush=True,
                        )
                    rows.append(await run_step(step, mode, url, settings, broker_pid))
            results[workload] = _finish(workload, rows, settings, broker, out_dir, suffix, echo)
        return results
    finally:
        if server is not None:
            await server.stop()
        if store is not None:
            store.cleanup()


def without_credentials(url: str) -> str:
    """`url` without its user and password, for results and messages."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"[{host}]" if ":" in host else host
    if parts.port is not None:
        netloc += f":{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


async def _quiet(exc: Exception) -> None:  # errors surface as exceptions where they matter
    return None


async def _broker_info(url: str, pid: int | None, local: bool) -> dict[str, Any]:
    import nats

    public = without_credentials(url)
    nc = await nats.connect(url, connect_timeout=5, error_cb=_quiet, max_reconnect_attempts=1)
    try:
        info = dict(nc._server_info)  # what the server said in its INFO line
        try:
            await nc.jetstream().account_info()
        except Exception as exc:
            raise RuntimeError(
                f"JetStream is not available to this user at {public}: {exc}"
            ) from None
    finally:
        await nc.close()
    return {
        "url": public,
        "started_by_bench": local,
        "pid": pid,
        "version": info.get("version"),
        "max_payload": info.get("max_payload"),
        "cpu_measured": pid is not None,
        "storage": (
            "file (JetStream default sync: fsync every 2 min, not per message)"
            if local
            else "file (the broker's own sync setting)"
        ),
    }


def _finish(
    workload: str,
    rows: list[dict[str, Any]],
    settings: Settings,
    broker: dict[str, Any],
    out_dir: Path,
    suffix: str,
    echo: bool,
) -> dict[str, Any]:
    header, table = step_table(rows, workload)
    dheader, dtable = durability_table(rows, workload)
    name = f"pubsub-{workload}{suffix}"
    results: dict[str, Any] = {
        "experiment": name,
        "workload": workload,
        "description": (
            "seed 001 5G EVE monitoring: 20 topics per experiment"
            if workload == "a"
            else "seed 000 Kafka VNF: topics of 800 B at 5.12 Mb/s"
        ),
        "parameters": {
            "seconds": settings.seconds,
            "warmup_s": settings.warmup,
            "tick_s": settings.tick,
            "producers": settings.producers,
            "consumers": settings.consumers,
            "ack_timeout_s": settings.ack_timeout,
            "stream_max_bytes": settings.stream_max_bytes,
        },
        "broker": broker,
        "anchors": ANCHORS[workload],
        "rows": rows,
        "targets": targets(rows),
        "markdown": markdown(header, table) + "\n\n" + markdown(dheader, dtable),
    }
    path = save(name, results, out_dir)
    plot(results, path.with_suffix(".png"))
    if echo:
        print_table(f"pub/sub workload {workload}", header, table)
        print_table(f"durability cost, workload {workload}", dheader, dtable)
        print(f"results: {path}")
    return results


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = results["rows"]
    xlabel = "concurrent experiments" if results["workload"] == "a" else "topics"
    fig, (cpu, lat, io, pub) = plt.subplots(1, 4, figsize=(18, 4))
    for mode, color, marker in (("jetstream", "C0", "o"), ("core", "C2", "s")):
        mine = sorted((r for r in rows if r["mode"] == mode), key=lambda r: r["level"])
        if not mine:
            continue
        x = [r["level"] for r in mine]
        bus = "JetStream (file)" if mode == "jetstream" else "core NATS (baseline)"
        main = {"color": color, "marker": marker, "linestyle": "-"}
        second = {"color": color, "marker": marker, "linestyle": ":", "alpha": 0.5}
        cpu.plot(x, [r["cpu"]["broker_pct"] or 0 for r in mine], **main, label=f"broker, {bus}")
        cpu.plot(x, [r["cpu"]["generator_pct"] for r in mine], **second, label=f"generator, {bus}")
        lat.plot(
            x, [r["latency_ms"].get("p50", math.nan) for r in mine], **main, label=f"p50, {bus}"
        )
        lat.plot(
            x, [r["latency_ms"].get("p99", math.nan) for r in mine], **second, label=f"p99, {bus}"
        )
        io.plot(
            x,
            [r["delivered_of_offered"] or 0 for r in mine],
            **main,
            label=f"delivered/offered, {bus}",
        )
        io.plot(x, [r["io_ratio"] or 0 for r in mine], **second, label=f"delivered/acked, {bus}")
        pub.plot(x, [r["achieved"]["of_offered"] or 0 for r in mine], **main, label=bus)
    for axis in (cpu, lat, io, pub):
        axis.xaxis.get_major_locator().set_params(integer=True)
    cpu.set(xlabel=xlabel, ylabel="% of one core", title="CPU")
    lat.set(xlabel=xlabel, ylabel="ms", yscale="log", title="Batch write latency")
    for axis in (io, pub):
        axis.axhline(RATIO_FLOOR, color="grey", linewidth=0.8, linestyle=":")
    io.set(xlabel=xlabel, ylabel="ratio", title="I/O message ratio (window)")
    pub.set(xlabel=xlabel, ylabel="ratio", title="Acknowledged / offered publish rate")
    for axis in (cpu, lat, io, pub):
        axis.legend(fontsize="x-small")
    fig.suptitle(results["description"])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def run(
    workload: str = "both",
    experiments: Sequence[int] | None = None,
    topic_counts: Sequence[int] | None = None,
    seconds: float | None = None,
    quick: bool = False,
    url: str | None = None,
    broker_pid: int | None = None,
    producers: int = 2,
    consumers: int = 2,
    out_dir: Path = RESULTS,
) -> dict[str, dict[str, Any]]:
    """The CLI's entry point: defaults for a full or a quick run, then `run_async`."""
    if workload not in ("a", "b", "both"):
        raise ValueError(f"workload must be a, b or both, not {workload!r}")
    chosen = ["a", "b"] if workload == "both" else [workload]
    seconds = seconds or (QUICK_SECONDS if quick else SECONDS)
    warmup = min(QUICK_WARMUP if quick else WARMUP, seconds / 4)
    settings = Settings(seconds=seconds, warmup=warmup, producers=producers, consumers=consumers)
    return asyncio.run(
        run_async(
            chosen,
            experiments or (QUICK_EXPERIMENTS if quick else EXPERIMENTS),
            topic_counts or (QUICK_TOPIC_COUNTS if quick else TOPIC_COUNTS),
            settings,
            url=url,
            broker_pid=broker_pid,
            out_dir=out_dir,
            suffix="-quick" if quick else "",
        )
    )


__all__ = [
    "ANCHORS",
    "MODES",
    "Settings",
    "Step",
    "Topic",
    "durability_table",
    "experiment_topics",
    "latency_ms",
    "limited_by",
    "merge_timelines",
    "offered_between",
    "parse_levels",
    "per_second",
    "plot",
    "run",
    "run_async",
    "run_step",
    "step_table",
    "targets",
    "topic_loads",
    "without_credentials",
    "workload_a",
    "workload_b",
    "worst_ratio",
]
