"""Trigger routing: which stream each trigger reads, kept up to date as topics come and go.

A trigger reads durable streams, never plain subscriptions, so that a message published while
the function is at zero (or while nfaas restarts) waits for it, and is acknowledged only after
the handler succeeded:

- ``topic: name`` reads that topic's stream; ``topics: {labels}`` every topic whose labels
  match (a consumer per topic, added when a matching topic appears);
- ``nats: subject`` / ``mqtt: filter`` read the topic whose subjects cover the subject, or
  else the platform's events stream, which captures the subjects no topic holds.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from nats.aio.msg import Msg
from nats.js.api import RetentionPolicy, StorageType, StreamConfig, StreamInfo
from nats.js.errors import APIError, NotFoundError

from nfaas.core.subjects import subject_covers, subjects_overlap
from nfaas.core.triggers import Trigger
from nfaas.events import names
from nfaas.events.bus import Bus
from nfaas.events.consumer import ConsumerLoop, ConsumerSpec, Slots
from nfaas.events.topics import Topic, Topics, all_streams, topic_from_stream
from nfaas.node.logs import FunctionKey

log = logging.getLogger("nfaas.events")
NO_SUBJECTS = "nfaas.events.none"  # a stream needs a subject; this one nobody publishes to
TriggerHandler = Callable[[FunctionKey, Trigger], Callable[[list[Msg]], Awaitable[None]]]


@dataclass(frozen=True)
class Binding:
    """One trigger of one function reading one stream."""

    key: FunctionKey
    index: int
    trigger: Trigger
    stream: str
    filters: tuple[str, ...]
    start_time: datetime.datetime | None = None  # None: all the stream holds ("from: all")

    @property
    def durable(self) -> str:
        return names.consumer_name(
            "trg", self.key, str(self.index), self.trigger.describe(), self.stream, *self.filters
        )


@dataclass(frozen=True)
class TopicStream:
    topic: Topic
    stream: str


class Router:
    def __init__(
        self, bus: Bus, slots_of: Callable[[FunctionKey], Slots], handler: TriggerHandler
    ) -> None:
        self.bus = bus
        self.slots_of = slots_of
        self.handler = handler
        self.functions: dict[FunctionKey, tuple[Trigger, ...]] = {}
        self.loops: dict[str, tuple[Binding, ConsumerLoop]] = {}
        self.problems: dict[FunctionKey, list[str]] = {}
        self.events_subjects: list[str] = []
        # when each trigger (function, index, description) was first deployed
        self.since: dict[tuple[FunctionKey, int, str], datetime.datetime] = {}
        self._lock = asyncio.Lock()

    async def set_function(self, key: FunctionKey, triggers: tuple[Trigger, ...]) -> None:
        streamed = tuple(t for t in triggers if t.kind != "cron")
        if streamed:
            self.functions[key] = streamed
        else:
            self.functions.pop(key, None)
        # "from: new" starts where the trigger was first deployed (kept across redeploys)
        now = datetime.datetime.now(datetime.UTC)
        current = {(key, index, trigger.describe()) for index, trigger in enumerate(streamed)}
        self.since = {k: v for k, v in self.since.items() if k[0] != key or k in current}
        for trigger_id in current:
            self.since.setdefault(trigger_id, now)
        await self.refresh()

    async def remove_function(self, key: FunctionKey) -> None:
        self.functions.pop(key, None)
        self.since = {k: v for k, v in self.since.items() if k[0] != key}
        await self.refresh()

    async def refresh(self) -> None:
        async with self._lock:
            streams = await all_streams(self.bus.js)
            topics = topic_streams(streams)
            problems: dict[FunctionKey, list[str]] = {}
            bindings: list[Binding] = []
            wanted: list[str] = []
            for key, triggers in self.functions.items():
                for index, trigger in enumerate(triggers):
                    since = self.since[(key, index, trigger.describe())]
                    start = None if trigger.start == "all" else since
                    found, subjects, trouble = resolve(key, index, trigger, topics, start)
                    bindings += found
                    wanted += subjects
                    problems.setdefault(key, []).extend(trouble)
            refused = await self._ensure_events_stream(wanted, streams)
            for binding in bindings:
                if binding.stream == names.EVENTS_STREAM and set(binding.filters) & refused:
                    problems.setdefault(binding.key, []).append(
                        f"trigger {binding.index} ({binding.trigger.describe()}): its subject "
                        "overlaps another trigger's or a topic's; make a topic that covers both"
                    )
            bindings = [
                b
                for b in bindings
                if not (b.stream == names.EVENTS_STREAM and set(b.filters) & refused)
            ]
            self.problems = {k: v for k, v in problems.items() if v}
            await self._apply(bindings)

    async def create_topic(self, topics: Topics, topic: Topic) -> dict[str, object]:
        """Create a topic, taking over the subjects it covers from the events stream.

        Triggers that listened on those subjects move to the topic; what the events stream
        already holds for them is still delivered (their old consumers drain it). A topic that
        would cut into a trigger's wider subject (``a.b`` under ``a.>``) stays a conflict.
        """
        async with self._lock:
            current, _ = _events_and_taken(await all_streams(self.bus.js))
            held = [s for s in current or [] if s != NO_SUBJECTS]
            covered = [s for s in held if any(subject_covers(t, s) for t in topic.subjects)]
            if covered:
                # two streams cannot hold one subject: it leaves the events stream first
                await self._events_stream_with([s for s in held if s not in covered])
            try:
                created = await topics.create(topic)
            except BaseException:
                if covered:
                    await self._events_stream_with(held)
                raise
        await self.refresh()
        return created

    async def _ensure_events_stream(self, wanted: list[str], streams: list[StreamInfo]) -> set[str]:
        """The events stream holds ``wanted`` (minus subjects another one covers); returns
        the subjects it cannot take (they overlap another stream's).

        The new subject list is worked out here and set in one update, and only when it
        changes: the stream never passes through a list that lacks a subject it keeps, since
        a message published on a subject no stream holds is lost.
        """
        subjects: list[str] = []
        for subject in sorted(set(wanted), key=lambda s: (s.count("*") + s.count(">"), s)):
            if not any(subject_covers(have, subject) for have in subjects):
                subjects = [s for s in subjects if not subject_covers(subject, s)] + [subject]
        for _ in range(3):
            current, taken = _events_and_taken(streams)
            accepted = [s for s in subjects if not any(subjects_overlap(s, t) for t in taken)]
            if current is not None and set(current) == set(accepted or [NO_SUBJECTS]):
                break
            if await self._events_stream_with(accepted):
                break
            # a stream made meanwhile took some subject: look again
            streams = await all_streams(self.bus.js)
        else:
            accepted = [s for s in (current or []) if s != NO_SUBJECTS]
        self.events_subjects = accepted
        return {w for w in wanted if not any(subject_covers(a, w) for a in accepted)}

    async def _events_stream_with(self, subjects: list[str]) -> bool:
        config = StreamConfig(
            name=names.EVENTS_STREAM,
            subjects=subjects or [NO_SUBJECTS],
            retention=RetentionPolicy.INTEREST,  # kept until every trigger reading it acked
            storage=StorageType.FILE,
            max_bytes=2 * 1024**3,
            duplicate_window=120.0,
        )
        js = self.bus.js
        try:
            try:
                await js.stream_info(names.EVENTS_STREAM)
            except NotFoundError:
                await js.add_stream(config)
            else:
                await js.update_stream(config)
        except APIError as exc:
            log.warning("events stream cannot take %s: %s", subjects, exc.description)
            return False
        return True

    async def _apply(self, bindings: list[Binding]) -> None:
        wanted = {b.durable: b for b in bindings}
        for durable in list(self.loops):
            if durable not in wanted:
                old, loop = self.loops[durable]
                if old.key in self.functions and await self._backlog(old):
                    continue  # a topic took its subject over: it drains what it captured first
                del self.loops[durable]
                await loop.stop(delete=True)
        for durable, binding in wanted.items():
            running = self.loops.get(durable)
            if running is not None:
                if running[0] == binding:
                    continue
                # the same consumer with new batch settings: a new loop, at the same place
                del self.loops[durable]
                await running[1].stop()
            trigger = binding.trigger
            spec = ConsumerSpec(
                stream=binding.stream,
                durable=durable,
                filters=binding.filters,
                batch_size=trigger.batch_size,
                batch_wait=trigger.batch_wait,
                start_time=binding.start_time,
            )
            loop = ConsumerLoop(
                self.bus,
                spec,
                self.slots_of(binding.key),
                self.handler(binding.key, trigger),
            )
            try:
                await loop.ensure()
            except APIError as exc:
                self.problems.setdefault(binding.key, []).append(
                    f"trigger {binding.index} ({trigger.describe()}): {exc.description}"
                )
                continue
            loop.start()
            self.loops[durable] = (binding, loop)

    async def _backlog(self, binding: Binding) -> bool:
        """Does an events-stream consumer still have messages to deliver or acknowledge?"""
        if binding.stream != names.EVENTS_STREAM:
            return False
        try:
            info = await self.bus.js.consumer_info(binding.stream, binding.durable)
        except (NotFoundError, APIError):
            return False
        return bool(info.num_pending or info.num_ack_pending)

    def describe(self, key: FunctionKey) -> dict[str, object]:
        return {
            "consumers": [
                {
                    "trigger": b.trigger.describe(),
                    "stream": b.stream,
                    "filters": list(b.filters),
                    "delivered": loop.delivered,
                    "error": loop.error,
                }
                for b, loop in self.loops.values()
                if b.key == key
            ],
            "problems": self.problems.get(key, []),
        }

    async def stop(self) -> None:
        for _, loop in self.loops.values():
            await loop.stop()
        for _, loop in self.loops.values():
            await loop.drain()


def topic_streams(streams: list[StreamInfo]) -> list[TopicStream]:
    out = []
    for info in streams:
        topic = topic_from_stream(info)
        if topic is not None and info.config.name:
            out.append(TopicStream(topic, info.config.name))
    return out


def _events_and_taken(streams: list[StreamInfo]) -> tuple[list[str] | None, list[str]]:
    """The events stream's subjects (None: no such stream yet), and every other stream's."""
    current: list[str] | None = None
    taken: list[str] = []
    for info in streams:
        if info.config.name == names.EVENTS_STREAM:
            current = list(info.config.subjects or [])
        else:
            taken += info.config.subjects or []
    return current, taken


def resolve(
    key: FunctionKey,
    index: int,
    trigger: Trigger,
    topics: list[TopicStream],
    start: datetime.datetime | None = None,
) -> tuple[list[Binding], list[str], list[str]]:
    """(bindings, subjects the events stream must capture, problems) for one trigger.

    Topics are the function's namespace's only; a subject inside another namespace's topic
    is theirs, and a problem here.
    """
    where = f"trigger {index} ({trigger.describe()})"
    ours = [ts for ts in topics if ts.topic.namespace == key[0]]

    def bind(stream: str, *filters: str) -> Binding:
        return Binding(key, index, trigger, stream, filters, start)

    if trigger.kind == "topic":
        for ts in ours:
            if ts.topic.name == trigger.source:
                return [bind(ts.stream)], [], []
        return (
            [],
            [],
            [f"{where}: topic {trigger.source!r} does not exist (yet) in namespace {key[0]!r}"],
        )
    if trigger.kind == "topics":
        matched = [
            bind(ts.stream)
            for ts in ours
            if all(ts.topic.labels.get(k) == v for k, v in trigger.labels.items())
        ]
        return matched, [], []
    bindings, events, problems = [], [], []
    for subject in trigger.subjects:
        covering = [
            ts for ts in topics if any(subject_covers(have, subject) for have in ts.topic.subjects)
        ]
        if covering and covering[0].topic.namespace == key[0]:
            bindings.append(bind(covering[0].stream, subject))
            continue
        if covering:
            problems.append(
                f"{where}: subject {subject!r} belongs to topic {covering[0].topic.name!r} of "
                "another namespace"
            )
            continue
        touching = [
            ts.topic.name
            for ts in topics
            if any(subjects_overlap(have, subject) for have in ts.topic.subjects)
        ]
        if touching:
            problems.append(
                f"{where}: subject {subject!r} overlaps topic(s) {', '.join(touching)} without "
                "being inside one; use a topic trigger, or a subject within the topic"
            )
            continue
        events.append(subject)
        bindings.append(bind(names.EVENTS_STREAM, subject))
    return bindings, events, problems
