"""The event plane: the bus, the async call queue, triggers, cron and callbacks, together.

The control plane tells it which functions exist (``function_deployed`` / ``_removed``) and
how to invoke one; it does the rest: per-function consumers for async calls (with that
function's concurrency), trigger consumers, cron fires (queued as async calls, so they get the
same retries) and the callback sender.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from nats.aio.msg import Msg

from nfaas.core.cron import next_fire, parse_cron
from nfaas.core.delivery import Retry, effective_concurrency
from nfaas.core.spec import FunctionSpec
from nfaas.core.triggers import Trigger
from nfaas.events import calls as C
from nfaas.events import names
from nfaas.events.bus import Bus
from nfaas.events.callbacks import CallbackSender
from nfaas.events.consumer import ConsumerLoop, ConsumerSpec, Slots
from nfaas.events.deliver import Counters, Deliverer
from nfaas.events.natsserver import NatsServer, NatsServerConfig
from nfaas.events.outcome import Invoker
from nfaas.events.queue import AsyncCalls
from nfaas.events.router import Router
from nfaas.events.topics import Topics
from nfaas.node.logs import FunctionKey

log = logging.getLogger("nfaas.events")
ASYNC_RUNTIMES = ("python", "nf")  # runtimes with a handler to call
CALLBACK_CONCURRENCY = 16
REFRESH_EVERY = 10.0  # topics made outside nfaas (nats CLI) reach triggers this late at most


@dataclass(frozen=True)
class EventsConfig:
    nats_url: str | None = None  # None: run our own nats-server
    store_dir: Path | None = None  # its JetStream storage
    mqtt_port: int | None = None  # its MQTT listener; None: none; 0: a free port


@dataclass
class FunctionEvents:
    spec: FunctionSpec
    slots: Slots
    calls: ConsumerLoop | None = None
    cron: list[asyncio.Task[None]] = field(default_factory=list)


class EventPlane:
    def __init__(self, config: EventsConfig, invoke: Invoker) -> None:
        self.config = config
        self.invoke = invoke
        self.server: NatsServer | None = None
        self.bus: Bus | None = None
        self.functions: dict[FunctionKey, FunctionEvents] = {}
        self._deliverer: Deliverer | None = None
        self._calls: AsyncCalls | None = None
        self._topics: Topics | None = None
        self._router: Router | None = None
        self._callbacks: CallbackSender | None = None
        self._callback_loop: ConsumerLoop | None = None
        self._refresher: asyncio.Task[None] | None = None

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        url = self.config.nats_url
        if url is None:
            assert self.config.store_dir is not None
            mqtt = self.config.mqtt_port
            if mqtt == 0:
                from nfaas.events.natsserver import free_tcp_port

                mqtt = free_tcp_port()
            self.server = NatsServer(NatsServerConfig(self.config.store_dir, mqtt_port=mqtt))
            await self.server.start()
            url = self.server.platform_url
        self.bus = Bus(url)
        await self.bus.connect()
        self._deliverer = Deliverer(self.bus, self.invoke, self._retry_of)
        self._calls = AsyncCalls(self.bus, self._deliverer)
        self._topics = Topics(self.bus)
        self._router = Router(self.bus, self._slots_of, self._trigger_handler)
        self._callbacks = CallbackSender(self._deliverer.store)
        self._callback_loop = ConsumerLoop(
            self.bus,
            ConsumerSpec(names.CALLBACKS_STREAM, "callbacks"),
            Slots(CALLBACK_CONCURRENCY),
            self._callbacks.handle,
        )
        await self._callback_loop.ensure(fresh=True)
        self._callback_loop.start()
        self._refresher = asyncio.get_running_loop().create_task(self._refresh_forever())

    async def stop(self) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
        loops = [f.calls for f in self.functions.values() if f.calls is not None]
        for events in self.functions.values():
            for task in events.cron:
                task.cancel()
        for loop in loops:
            await loop.stop()
        if self._router is not None:
            await self._router.stop()
        if self._callback_loop is not None:
            await self._callback_loop.stop()
        for loop in loops:
            await loop.drain()
        if self._callbacks is not None:
            await self._callbacks.close()
        if self.bus is not None:
            with contextlib.suppress(Exception):
                await self.bus.close()
        if self.server is not None:
            await self.server.stop()

    async def _refresh_forever(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_EVERY)
            with contextlib.suppress(Exception):
                await self.router.refresh()

    # -- parts ---------------------------------------------------------------------------
    @property
    def calls(self) -> AsyncCalls:
        assert self._calls is not None, "event plane not started"
        return self._calls

    @property
    def topics(self) -> Topics:
        assert self._topics is not None, "event plane not started"
        return self._topics

    @property
    def router(self) -> Router:
        assert self._router is not None, "event plane not started"
        return self._router

    def _retry_of(self, key: FunctionKey) -> Retry:
        events = self.functions.get(key)
        return events.spec.retry if events else Retry()

    def _slots_of(self, key: FunctionKey) -> Slots:
        return self.functions[key].slots

    def _trigger_handler(self, key: FunctionKey, trigger: Trigger):  # type: ignore[no-untyped-def]
        deliverer = self._deliverer
        assert deliverer is not None
        batched = trigger.batch_size > 1

        async def handle(msgs: list[Msg]) -> None:
            await deliverer.trigger(key, trigger.kind, msgs, batched)

        return handle

    # -- functions -----------------------------------------------------------------------
    async def function_deployed(self, key: FunctionKey, spec: FunctionSpec) -> None:
        if spec.runtime not in ASYNC_RUNTIMES:
            return
        limit = effective_concurrency(spec.queue, spec.scale.max, spec.scale.target_concurrency)
        events = self.functions.get(key)
        if events is None:
            events = FunctionEvents(spec, Slots(limit))
            self.functions[key] = events
        else:
            events.spec = spec
            events.slots.limit = limit
        for task in events.cron:
            task.cancel()
        events.cron = [
            asyncio.get_running_loop().create_task(self._cron(key, index, trigger))
            for index, trigger in enumerate(spec.triggers)
            if trigger.kind == "cron"
        ]
        if events.calls is None:
            assert self.bus is not None and self._deliverer is not None
            loop = ConsumerLoop(
                self.bus,
                ConsumerSpec(
                    names.CALLS_STREAM,
                    names.consumer_name("calls", key),
                    (names.calls_filter(key),),
                ),
                events.slots,
                self._deliverer.call,
            )
            # fresh: calls delivered to a previous nfaas process and never acknowledged
            # (it was killed) come back now, not after the acknowledgement timeout
            await loop.ensure(fresh=True)
            loop.start()
            events.calls = loop
        await self.router.set_function(key, spec.triggers)

    async def function_removed(self, key: FunctionKey) -> None:
        events = self.functions.pop(key, None)
        if events is None:
            return
        for task in events.cron:
            task.cancel()
        if events.calls is not None:
            # the consumer goes; queued calls stay in the stream for a function re-created
            # under the same name, and expire with it otherwise
            await events.calls.stop(delete=True)
        await self.router.remove_function(key)

    async def _cron(self, key: FunctionKey, index: int, trigger: Trigger) -> None:
        schedule = parse_cron(trigger.source)
        tag = hashlib.sha256(f"{key}{index}{trigger.source}".encode()).hexdigest()[:8]
        while True:
            fire = next_fire(schedule, datetime.now(UTC))
            await asyncio.sleep(max(0.0, (fire - datetime.now(UTC)).total_seconds()))
            # the id comes from the fire time: a restart in the same instant fires once
            message = C.CallMessage(
                id=f"cron-{tag}-{int(fire.timestamp() * 1000)}",
                namespace=key[0],
                function=key[1],
                body=trigger.body.encode(),
                accepted=fire.timestamp(),
                source="cron",
            )
            try:
                await self.calls.accept(message)
            except Exception as exc:
                log.warning("cron fire for %s/%s not queued: %s", *key, exc)

    # -- reporting -----------------------------------------------------------------------
    def describe(self, key: FunctionKey) -> dict[str, object]:
        events = self.functions.get(key)
        if events is None or self._deliverer is None:
            return {}
        counters = self._deliverer.totals(key)
        return {
            "concurrency": events.slots.limit,
            "in_flight": events.calls.running if events.calls else 0,
            "calls_error": events.calls.error if events.calls else "",
            "accepted": counters.accepted,
            "succeeded": counters.succeeded,
            "retried": counters.retried,
            "dead": counters.dead,
            "triggers": self.router.describe(key),
        }

    def counters(self) -> list[tuple[FunctionKey, str, Counters]]:
        """(function, "call" or "trigger", counters) for every function that had deliveries."""
        if self._deliverer is None:
            return []
        return [(key, kind, c) for (key, kind), c in sorted(self._deliverer.counters.items())]

    def in_flight(self) -> dict[FunctionKey, int]:
        """Deliveries (calls and trigger messages) running now, per function."""
        return {key: events.slots.busy for key, events in self.functions.items()}

    def info(self) -> dict[str, object]:
        server = self.server
        return {
            "bus": self.bus.info() if self.bus else {},
            "nats_server": {
                "pid": server.pid,
                "url": server.url,
                "mqtt": server.mqtt_url,
                "restarts": server.restarts,
            }
            if server
            else None,
            "events_subjects": self.router.events_subjects if self._router else [],
            "callbacks": {
                "delivered": self._callbacks.delivered if self._callbacks else 0,
                "failed": self._callbacks.failed if self._callbacks else 0,
            },
        }
