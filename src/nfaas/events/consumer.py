"""A pull loop over one durable JetStream consumer, bounded by its function's free slots.

The loop asks the server only for as many messages as the function can run now, so messages
wait in the stream (durably), not in our memory; and every function has its own loops and
slots, so a slow function's backlog never holds up another's.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from nats.aio.msg import Msg
from nats.errors import ConnectionClosedError, NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from nfaas.events.bus import Bus

log = logging.getLogger("nfaas.events")
ACK_WAIT = 10.0  # unacknowledged this long -> redelivered; long calls send in-progress beats
FETCH_WAIT = 1.0
Handler = Callable[[list[Msg]], Awaitable[None]]


@dataclass(frozen=True)
class ConsumerSpec:
    stream: str
    durable: str
    filters: tuple[str, ...] = ()
    batch_size: int = 1  # messages handed to one handler call
    batch_wait: float = 1.0  # seconds to wait for a batch to fill
    # messages stored from this time on (a trigger's "from: new"); None: all the stream holds
    start_time: datetime.datetime | None = None


class Slots:
    """A function's concurrency: how many deliveries may run at once, over all its loops."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.busy = 0
        self._changed = asyncio.Condition()

    @property
    def free(self) -> int:
        return max(0, self.limit - self.busy)

    async def wait_free(self) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.busy < self.limit)

    async def take(self) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.busy < self.limit)
            self.busy += 1

    async def give(self) -> None:
        async with self._changed:
            self.busy -= 1
            self._changed.notify_all()


class ConsumerLoop:
    def __init__(self, bus: Bus, spec: ConsumerSpec, slots: Slots, handler: Handler) -> None:
        self.bus = bus
        self.spec = spec
        self.slots = slots
        self.handler = handler
        self.error = ""
        self.delivered = 0
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._running: set[asyncio.Task[None]] = set()

    @property
    def running(self) -> int:
        """Deliveries in progress now."""
        return len(self._running)

    def config(self) -> ConsumerConfig:
        spec = self.spec
        filters = list(spec.filters)
        return ConsumerConfig(
            durable_name=spec.durable,
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=ACK_WAIT,
            max_deliver=-1,  # attempts are counted by the platform, per its retry policy
            max_ack_pending=max(64, self.slots.limit * max(spec.batch_size, 1) * 2),
            deliver_policy=DeliverPolicy.ALL
            if spec.start_time is None
            else DeliverPolicy.BY_START_TIME,
            opt_start_time=spec.start_time,
            filter_subject=filters[0] if len(filters) == 1 else None,
            filter_subjects=filters if len(filters) > 1 else None,
        )

    async def ensure(self, fresh: bool = False) -> None:
        """Create the durable consumer (``fresh``: drop the old one first, so that messages
        delivered to a previous process and never acknowledged come back at once)."""
        js = self.bus.js
        config = self.config()
        if fresh:
            with contextlib.suppress(NotFoundError):
                await js.delete_consumer(self.spec.stream, self.spec.durable)
        else:
            try:
                existing = await js.consumer_info(self.spec.stream, self.spec.durable)
            except NotFoundError:
                pass
            else:
                # where a consumer starts is fixed once it exists (the server refuses a change)
                config.deliver_policy = existing.config.deliver_policy
                config.opt_start_time = existing.config.opt_start_time
        await js.add_consumer(self.spec.stream, config)

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self, delete: bool = False) -> None:
        # The flag, not only the cancellation: nats-py's next_msg can swallow a cancel that
        # arrives with a message, and the loop would go on fetching.
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            done, _ = await asyncio.wait({self._task}, timeout=3 * FETCH_WAIT)
            if not done:
                log.warning("consumer %s did not stop in time", self.spec.durable)
        if delete:
            with contextlib.suppress(Exception):
                await self.bus.js.delete_consumer(self.spec.stream, self.spec.durable)

    async def drain(self) -> None:
        """Wait for the deliveries in progress (used at shutdown, after stop)."""
        if self._running:
            await asyncio.wait(self._running, timeout=5)

    async def _run(self) -> None:
        backoff = 0.2
        while not self._stopping:
            try:
                await self.bus.connected.wait()
                sub = await self.bus.js.pull_subscribe_bind(
                    self.spec.durable, stream=self.spec.stream
                )
                self.error = ""
                try:
                    await self._pull(sub)
                finally:
                    # messages the subscription still holds go back to the server now
                    with contextlib.suppress(Exception):
                        await sub.unsubscribe()
            except asyncio.CancelledError:
                raise
            except NotFoundError:
                # The consumer is gone (server state lost, or deleted by hand): make it again.
                await self._recreate()
            except (ConnectionClosedError, NoRespondersError, NatsTimeout, OSError) as exc:
                self.error = f"{type(exc).__name__}: {exc}"
            except Exception as exc:
                self.error = f"{type(exc).__name__}: {exc}"
                log.warning("consumer %s: %s", self.spec.durable, self.error)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    async def _recreate(self) -> None:
        try:
            await self.ensure()
        except Exception as exc:
            self.error = f"cannot create consumer: {exc}"

    async def _pull(self, sub: object) -> None:
        # Fetch only when a slot is free, and no more than the free slots: the rest wait in
        # the stream, where other loops of the same function can still get at them.
        batch = self.spec.batch_size
        while not self._stopping:
            await self.slots.wait_free()
            msgs = await self._fetch(sub, min(max(self.slots.free, 1) * batch, 256))
            if self._stopping:
                for msg in msgs:  # not started: someone else may have them at once
                    with contextlib.suppress(Exception):
                        await msg.nak()
                return
            for i in range(0, len(msgs), batch):
                group = msgs[i : i + batch]
                self.delivered += len(group)
                task = asyncio.get_running_loop().create_task(self._deliver(group))
                self._running.add(task)
                task.add_done_callback(self._running.discard)

    async def _fetch(self, sub: object, count: int) -> list[Msg]:
        fetch = sub.fetch  # type: ignore[attr-defined]
        if self.spec.batch_size == 1:
            while not self._stopping:
                try:
                    msgs: list[Msg] = await fetch(count, timeout=FETCH_WAIT)
                    return msgs
                except (TimeoutError, NatsTimeout):
                    continue
            return []
        # A batch: wait up to batch_wait after the first message for the rest to come.
        got: list[Msg] = []
        deadline = 0.0
        while len(got) < count and not self._stopping:
            wait = FETCH_WAIT if not got else deadline - time.monotonic()
            if got and wait <= 0:
                break
            try:
                got += await fetch(count - len(got), timeout=max(wait, 0.01))
            except (TimeoutError, NatsTimeout):
                if got:
                    break
                continue
            if deadline == 0.0:
                deadline = time.monotonic() + self.spec.batch_wait
        return got

    async def _deliver(self, msgs: list[Msg]) -> None:
        # another loop of this function may have filled the slots since the fetch: wait,
        # telling the server the messages are in hand meanwhile
        async with in_progress(msgs):
            await self.slots.take()
        try:
            await self.handler(msgs)
        except Exception as exc:
            log.warning("delivery on %s failed: %s", self.spec.durable, exc)
        finally:
            await self.slots.give()


@contextlib.asynccontextmanager
async def in_progress(msgs: list[Msg], every: float = ACK_WAIT / 3):  # type: ignore[no-untyped-def]
    """Tell the server the messages are still being worked on, so a long call is not
    redelivered to someone else while it runs."""

    async def beat() -> None:
        while True:
            await asyncio.sleep(every)
            for msg in msgs:
                with contextlib.suppress(Exception):
                    await msg.in_progress()

    task = asyncio.get_running_loop().create_task(beat())
    try:
        yield
    finally:
        task.cancel()
