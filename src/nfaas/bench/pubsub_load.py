"""Producer and consumer processes for ``nfaas bench pubsub`` (a Sangrenel-like generator).

Each runs in its own process (multiprocessing, spawn) with its own asyncio loop and nats-py
connection, so that Python's one-core-per-process limit applies to each separately.

- A **producer** owns some topics. Every tick (10 ms) it sends the messages the schedule says
  are due on each of its topics: one *batch*. With JetStream every message of a batch carries
  the same reply subject, ``<inbox>.<batch>``, and the broker's PubAcks all come back on one
  wildcard subscription: publishes are pipelined, never awaited one by one. The batch write
  latency is the time from the batch's first send to its last PubAck. Through core NATS (the
  baseline: nothing is stored) a batch ends with a PING and its latency is the PONG.
- A **consumer** reads every message of its topics: from JetStream, one push consumer per
  stream (no acks, flow control); through core NATS, one subscription per topic. It counts
  deliveries in 10 ms bins, as producers count acknowledgements, so that the parent compares
  both over the same window; and keeps a running total in a shared array so that the parent
  can tell when deliveries have stopped arriving.

Both report their counts to the parent through a queue at the end.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

#: what marks a JetStream error answer to a publish (a PubAck is {"stream":..,"seq":..})
_ERROR_MARK = b'"error"'
BIN_S = 0.010  # time resolution of the acknowledged / delivered counts


class Timeline:
    """Messages and bytes counted in 10 ms bins from the step's start, so that the parent
    can count acknowledgements and deliveries over exactly the same window."""

    def __init__(self, seconds: float) -> None:
        self.start = math.inf  # nothing is counted before the start is known
        size = math.ceil(seconds / BIN_S) + 1
        self.msgs = [0] * size
        self.nbytes = [0] * size

    def add(self, now: float, msgs: int, nbytes: int) -> None:
        index = max(0, int((now - self.start) / BIN_S)) if now >= self.start else 0
        if index >= len(self.msgs):
            grow = index + 1 - len(self.msgs)
            self.msgs += [0] * grow
            self.nbytes += [0] * grow
        self.msgs[index] += msgs
        self.nbytes[index] += nbytes

    def as_dict(self) -> dict[str, list[int]]:
        return {"msgs": self.msgs, "bytes": self.nbytes}


def window_sum(bins: list[int], start: float, end: float) -> int:
    """What `bins` (of `BIN_S`) counted from `start` to `end` seconds after the step's start."""
    return sum(bins[round(start / BIN_S) : round(end / BIN_S)])


@dataclass(frozen=True)
class TopicLoad:
    """One topic as a producer sees it: where, how big, how often, and when in its period."""

    subject: str
    size: int
    rate: float  # messages per second
    phase: float  # in [0, 1): spreads the sends of slow topics over their period


def due_messages(rate: float, phase: float, elapsed: float) -> int:
    """Messages a topic has to have sent `elapsed` seconds after the start.

    The k-th message (k = 1, 2, ...) is due at ``(k - phase) / rate``; so a topic of
    `rate` msg/s has sent exactly ``rate * seconds`` messages after a whole number of its
    periods, whatever its phase.
    """
    if elapsed <= 0 or rate <= 0:
        return 0
    return math.floor(rate * elapsed + phase + 1e-9)


@dataclass(frozen=True)
class ProducerSpec:
    url: str
    index: int
    topics: tuple[TopicLoad, ...]
    jetstream: bool
    seconds: float
    warmup: float
    tick: float = 0.010
    ack_timeout: float = 5.0
    max_outstanding_msgs: int = 200_000
    max_outstanding_bytes: int = 64 * 1024 * 1024
    max_backlog: float = 0.1  # seconds of schedule a late producer may still catch up
    inbox: str = "_PSB.ack"


@dataclass(frozen=True)
class ConsumerSpec:
    url: str
    index: int
    subjects: tuple[str, ...]
    streams: tuple[str, ...] | None  # JetStream: the stream of each subject; None: core NATS
    seconds: float = 10.0


class EventLike(Protocol):
    def is_set(self) -> bool: ...


class CounterArray(Protocol):
    def __setitem__(self, index: int, value: int) -> None: ...


class QueueLike(Protocol):
    def put(self, obj: Any, block: bool = ..., timeout: float | None = ...) -> None: ...


@dataclass
class _Batch:
    start: float
    count: int
    nbytes: int
    in_window: bool
    acked: int = 0
    errors: int = 0


@dataclass
class ProducerReport:
    """What one producer did in a step (counts over the whole step)."""

    index: int
    sent: int = 0
    sent_bytes: int = 0
    acked: int = 0
    acked_bytes: int = 0
    errors: int = 0  # publish raised, or the broker answered with an error
    timeouts: int = 0  # no PubAck (or PONG) within the ack timeout
    skipped_late: int = 0  # due but not sent: the producer was too far behind its schedule
    skipped_backpressure: int = 0  # due but not sent: too many unacknowledged messages
    late_ticks: int = 0  # ticks that started more than one tick late
    disconnects: int = 0
    latencies: list[float] = field(default_factory=list)  # seconds, batches in the window
    error_samples: list[str] = field(default_factory=list)
    acked_timeline: dict[str, list[int]] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


class _Producer:
    def __init__(self, spec: ProducerSpec, nc: Any) -> None:
        self.spec = spec
        self.nc = nc
        self.report = ProducerReport(spec.index)
        self.outstanding: dict[int, _Batch] = {}
        self.outstanding_msgs = 0
        self.outstanding_bytes = 0
        self.flushes: set[asyncio.Task[None]] = set()
        self.payloads = {size: os.urandom(size) for size in {t.size for t in spec.topics}}
        self.sizes = [t.size for t in spec.topics]
        self.timeline = Timeline(spec.seconds + spec.ack_timeout)

    def _error(self, text: str, count: int = 1) -> None:
        self.report.errors += count
        if len(self.report.error_samples) < 5:
            self.report.error_samples.append(text)

    def _finish(self, batch_id: int, batch: _Batch, now: float) -> None:
        del self.outstanding[batch_id]
        self.outstanding_msgs -= batch.count
        self.outstanding_bytes -= batch.nbytes
        report = self.report
        report.acked += batch.acked
        if batch.acked == batch.count:
            report.acked_bytes += batch.nbytes
        if batch.in_window and batch.acked == batch.count:  # with errors: no write latency
            report.latencies.append(now - batch.start)

    async def on_ack(self, msg: Any) -> None:
        """A PubAck (or an error answer) for one message of a batch."""
        now = time.monotonic()
        _, batch_token, topic_token = msg.subject.rsplit(".", 2)
        batch_id = int(batch_token)
        batch = self.outstanding.get(batch_id)
        if batch is None:  # already timed out
            return
        data = msg.data
        if not data or _ERROR_MARK in data:  # an error, or a 503 "no responders" status
            batch.errors += 1
            self._error(data.decode(errors="replace") or f"no stream for {msg.subject}")
        else:
            batch.acked += 1
            self.timeline.add(now, 1, self.sizes[int(topic_token)])
        if batch.acked + batch.errors == batch.count:
            self._finish(batch_id, batch, now)

    async def _pong(self, batch_id: int) -> None:
        """Core NATS: the batch is done when the server answers the PING sent after it."""
        try:
            await self.nc.flush(timeout=max(1, math.ceil(self.spec.ack_timeout)))
        except Exception as exc:  # a timeout or a lost connection: the batch is not confirmed
            batch = self.outstanding.get(batch_id)
            if batch is not None:
                self._expire(batch_id, batch)
                self._error(f"flush: {exc!r}", 0)
            return
        batch = self.outstanding.get(batch_id)
        if batch is not None:
            now = time.monotonic()
            batch.acked = batch.count
            self.timeline.add(now, batch.count, batch.nbytes)
            self._finish(batch_id, batch, now)

    def _expire(self, batch_id: int, batch: _Batch) -> None:
        del self.outstanding[batch_id]
        self.outstanding_msgs -= batch.count
        self.outstanding_bytes -= batch.nbytes
        self.report.acked += batch.acked
        self.report.timeouts += batch.count - batch.acked - batch.errors

    def expire_old(self, now: float) -> None:
        limit = now - self.spec.ack_timeout
        for batch_id, batch in list(self.outstanding.items()):
            if batch.start > limit:
                break  # batches are in start order
            self._expire(batch_id, batch)

    async def send_tick(self, batch_id: int, elapsed: float, scheduled: list[int]) -> None:
        """Send every message due by `elapsed` as one batch."""
        spec, report, nc = self.spec, self.report, self.nc
        start = time.monotonic()
        in_window = spec.warmup <= elapsed
        batch = _Batch(start, 0, 0, in_window)
        self.outstanding[batch_id] = batch
        for i, topic in enumerate(spec.topics):
            due = due_messages(topic.rate, topic.phase, elapsed)
            n = due - scheduled[i]
            if n <= 0:
                continue
            scheduled[i] = due
            behind = n - max(1, math.ceil(topic.rate * spec.max_backlog))
            if behind > 0:  # the producer fell behind: those are lost to the offered load
                report.skipped_late += behind
                n -= behind
            size = topic.size
            if (
                self.outstanding_msgs + n > spec.max_outstanding_msgs
                or self.outstanding_bytes + n * size > spec.max_outstanding_bytes
            ):
                report.skipped_backpressure += n  # like a full producer buffer
                continue
            payload = self.payloads[size]
            subject = topic.subject
            # PubAcks come back to <inbox>.<batch>.<topic>: the batch and the message size
            reply = f"{spec.inbox}.{batch_id}.{i}" if spec.jetstream else ""
            for _ in range(n):
                try:
                    await nc.publish(subject, payload, reply=reply)
                except Exception as exc:
                    self._error(f"publish {subject}: {exc!r}")
                    batch.errors += 1
                batch.count += 1
                batch.nbytes += size
            self.outstanding_msgs += n
            self.outstanding_bytes += n * size
        report.sent += batch.count - batch.errors
        report.sent_bytes += batch.nbytes
        if batch.count == 0:
            del self.outstanding[batch_id]
        elif batch.errors == batch.count:
            self._finish(batch_id, batch, time.monotonic())
        elif not spec.jetstream:
            task = asyncio.get_running_loop().create_task(self._pong(batch_id))
            self.flushes.add(task)
            task.add_done_callback(self.flushes.discard)

    async def run(self, start_at: float) -> ProducerReport:
        spec = self.spec
        scheduled = [0] * len(spec.topics)
        self.timeline.start = start_at
        await asyncio.sleep(max(0.0, start_at - time.monotonic()))
        tick = 0
        while True:
            now = time.monotonic()
            elapsed = min(now - start_at, spec.seconds)
            if now - (start_at + tick * spec.tick) > spec.tick:
                self.report.late_ticks += 1
            await self.send_tick(tick, elapsed, scheduled)
            self.expire_old(time.monotonic())
            if elapsed >= spec.seconds:
                break
            tick = max(tick + 1, int((time.monotonic() - start_at) / spec.tick))
            await asyncio.sleep(max(0.0, start_at + tick * spec.tick - time.monotonic()))
        deadline = time.monotonic() + spec.ack_timeout
        while self.outstanding and time.monotonic() < deadline:
            await asyncio.sleep(0.005)
        self.expire_old(math.inf)
        self.report.acked_timeline = self.timeline.as_dict()
        return self.report


async def _connect(url: str, name: str, disconnects: list[int]) -> Any:
    """A connection that counts its disconnections in ``disconnects[0]`` (the server cuts
    off a client that reads too slowly: a *slow consumer*, whose messages in flight are lost)."""
    import nats

    async def quiet(exc: Exception) -> None:  # counted where it matters, not printed
        return None

    async def disconnected() -> None:
        disconnects[0] += 1

    return await nats.connect(
        url,
        name=name,  # shows in the server's log and /connz
        skip_subject_validation=True,
        pending_size=32 * 1024 * 1024,
        max_reconnect_attempts=3,
        error_cb=quiet,
        disconnected_cb=disconnected,
        connect_timeout=5,
    )


async def _produce(spec: ProducerSpec, ready: QueueLike, start_at: Any) -> ProducerReport:
    disconnects = [0]
    nc = await _connect(spec.url, f"pubsub-producer-{spec.index}", disconnects)
    try:
        for topic in spec.topics:
            if topic.size > nc.max_payload:
                raise ValueError(
                    f"topic {topic.subject}: messages of {topic.size} B exceed the broker's "
                    f"max_payload of {nc.max_payload} B"
                )
        producer = _Producer(spec, nc)
        if spec.jetstream:
            await nc.subscribe(
                f"{spec.inbox}.*.*",
                cb=producer.on_ack,
                pending_msgs_limit=0,
                pending_bytes_limit=0,
            )
        await nc.flush()
        ready.put(("ready", "producer", spec.index, None))
        while start_at.value <= 0:
            await asyncio.sleep(0.005)
        report = await producer.run(start_at.value)
        report.disconnects = disconnects[0]
        return report
    finally:
        await nc.close()


def producer_main(spec: ProducerSpec, results: QueueLike, start_at: Any) -> None:
    """Process entry point: run one producer, put ("report", "producer", i, dict) on `results`."""
    try:
        report = asyncio.run(_produce(spec, results, start_at))
        results.put(("report", "producer", spec.index, report.as_dict()))
    except BaseException:
        results.put(("error", "producer", spec.index, traceback.format_exc()))


async def _consume(
    spec: ConsumerSpec, ready: QueueLike, stop: EventLike, counts: CounterArray, start_at: Any
) -> dict[str, Any]:
    from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy

    disconnects = [0]
    nc = await _connect(spec.url, f"pubsub-consumer-{spec.index}", disconnects)
    delivered = 0
    delivered_bytes = 0
    timeline = Timeline(spec.seconds)

    async def on_message(msg: Any) -> None:
        nonlocal delivered, delivered_bytes
        size = len(msg.data)
        delivered += 1
        delivered_bytes += size
        timeline.add(time.monotonic(), 1, size)

    try:
        if spec.streams is not None:
            js = nc.jetstream()
            for subject, stream in zip(spec.subjects, spec.streams, strict=True):
                # flow control: a consumer that falls behind is paused by the server
                # instead of being cut off as a slow consumer (which would lose messages)
                await js.subscribe(
                    subject,
                    stream=stream,
                    cb=on_message,
                    manual_ack=True,
                    flow_control=True,
                    idle_heartbeat=2.0,
                    config=ConsumerConfig(
                        deliver_policy=DeliverPolicy.ALL,
                        ack_policy=AckPolicy.NONE,
                    ),
                    pending_msgs_limit=0,
                    pending_bytes_limit=0,
                )
        else:
            for subject in spec.subjects:
                await nc.subscribe(
                    subject, cb=on_message, pending_msgs_limit=0, pending_bytes_limit=0
                )
        await nc.flush()
        ready.put(("ready", "consumer", spec.index, None))
        while not stop.is_set():
            if start_at.value > 0:
                timeline.start = start_at.value
            counts[spec.index] = delivered
            await asyncio.sleep(0.005)
        counts[spec.index] = delivered
        return {
            "index": spec.index,
            "delivered": delivered,
            "delivered_bytes": delivered_bytes,
            "delivered_timeline": timeline.as_dict(),
            "disconnects": disconnects[0],
        }
    finally:
        await nc.close()


def consumer_main(
    spec: ConsumerSpec, results: QueueLike, stop: EventLike, counts: CounterArray, start_at: Any
) -> None:
    """Process entry point: read until `stop`, put ("report", "consumer", i, dict)."""
    try:
        report = asyncio.run(_consume(spec, results, stop, counts, start_at))
        results.put(("report", "consumer", spec.index, report))
    except BaseException:
        results.put(("error", "consumer", spec.index, traceback.format_exc()))


def split_round_robin(items: Sequence[T], parts: int) -> list[list[T]]:
    """`items` dealt into at most `parts` non-empty lists, in turn."""
    parts = max(1, min(parts, len(items)))
    return [list(items[i::parts]) for i in range(parts)]


__all__ = [
    "BIN_S",
    "ConsumerSpec",
    "ProducerReport",
    "ProducerSpec",
    "Timeline",
    "TopicLoad",
    "consumer_main",
    "due_messages",
    "producer_main",
    "split_round_robin",
    "window_sum",
]
