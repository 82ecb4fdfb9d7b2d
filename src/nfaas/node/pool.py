"""A function's instances on this node: routing requests to free slots, cold starts, queueing.

Each instance serves up to ``target_concurrency`` requests at once. A request that finds no
free slot waits in a bounded FIFO queue; at zero instances it also starts one (the request
waits for it, it is not dropped). Routing packs requests onto the most recently used instance
so that surplus instances fall idle and the keep-alive policy can stop them.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from nfaas.core.spec import FunctionSpec
from nfaas.node.coldstart import BACKGROUND_TRIGGERS, ColdStart
from nfaas.node.logs import FunctionKey, LogBook
from nfaas.node.shells import ShellPool
from nfaas.sandbox.base import (
    CodeBundle,
    Instance,
    InstanceHooks,
    InvokeTimeout,
    LoadFailed,
    LoadTimings,
    Request,
    Response,
    Shell,
    WorkerDied,
)

KEEP_RECORDS = 200
MAX_BACKOFF = 60.0
WAKE_REFILL_AFTER = 0.2  # seconds: past the calls of the chain that woke the function


class Overloaded(Exception):
    """Every slot is busy and the queue is full, or the wait ran out (429)."""

    def __init__(self, retry_after: float) -> None:
        super().__init__(f"function is at capacity; retry after {retry_after:.0f}s")
        self.retry_after = retry_after


class CrashLooping(Exception):
    """Recent instances failed to start; new ones are held back until ``retry_at`` (503 / 500)."""

    def __init__(self, reason: str, retry_after: float, load_error: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        self.load_error = load_error


@dataclass(eq=False)
class Slot:
    instance: Instance
    started: float
    inflight: int = 0
    served: int = 0
    last_used: float = field(default_factory=time.monotonic)
    paused: bool = False
    record: ColdStart | None = None


class FunctionPool:
    def __init__(
        self,
        key: FunctionKey,
        spec: FunctionSpec,
        bundle: CodeBundle,
        shells: ShellPool,
        logs: LogBook,
        on_cold_start: Callable[[FunctionKey, ColdStart], None],
        queue_limit: int = 1024,
    ) -> None:
        self.key = key
        self.spec = spec
        self.bundle = bundle
        self.shells = shells
        self.logs = logs
        self.on_cold_start = on_cold_start
        self.queue_limit = queue_limit
        self.slots: list[Slot] = []
        self.starting = 0
        self.waiters: deque[asyncio.Future[Slot]] = deque()
        self.records: deque[ColdStart] = deque(maxlen=KEEP_RECORDS)
        self.resumes: deque[float] = deque(maxlen=KEEP_RECORDS)  # seconds each resume took
        self.failures = 0
        self.last_error = ""
        self.last_error_is_load = False
        self.retry_at = 0.0
        self.invocations = 0
        self.closed = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._cleanups: set[asyncio.Task[None]] = set()  # stopping instances that died
        self._gone_early: dict[str, str] = {}  # instance id -> why it went while loading

    # -- routing -------------------------------------------------------------------------
    @property
    def capacity(self) -> int:
        return self.spec.scale.target_concurrency

    def concurrency(self) -> int:
        """Requests in flight plus requests waiting: what the autoscaler sees."""
        return sum(slot.inflight for slot in self.slots) + len(self.waiters)

    def _free_slot(self) -> Slot | None:
        cap = self.capacity
        for slot in self.slots:  # most recently used first
            if slot.inflight < cap and not slot.paused:
                return slot
        return None

    def _paused_slot(self) -> Slot | None:
        return next((slot for slot in self.slots if slot.paused), None)

    async def _resume(self, slot: Slot) -> None:
        slot.paused = False  # before the await: concurrent requests may share the slot
        started = time.monotonic()
        await slot.instance.resume()
        self.resumes.append(time.monotonic() - started)

    async def pause_idle(self, idle_for: float) -> int:
        """Freeze instances idle for ``idle_for`` seconds; the next request thaws one."""
        now = time.monotonic()
        paused = 0
        for slot in list(self.slots):
            if not slot.paused and slot.inflight == 0 and now - slot.last_used >= idle_for:
                slot.paused = True
                await slot.instance.pause()
                paused += 1
        return paused

    def _take(self, slot: Slot) -> Slot:
        slot.inflight += 1
        if self.slots[0] is not slot:
            self.slots.remove(slot)
            self.slots.insert(0, slot)
        return slot

    def _release(self, slot: Slot) -> None:
        slot.inflight -= 1
        slot.last_used = time.monotonic()
        if slot in self.slots:
            self._hand_over(slot)

    def _hand_over(self, slot: Slot) -> None:
        """Give free capacity of ``slot`` to waiting requests, oldest first."""
        while self.waiters and slot.inflight < self.capacity:
            waiter = self.waiters.popleft()
            if not waiter.done():
                slot.inflight += 1
                waiter.set_result(slot)

    async def invoke(
        self, request: Request, accepted: float, cause: str = "request"
    ) -> tuple[Response, bool]:
        """Serve one request; returns the response and whether it waited for a cold start
        (recorded with ``cause`` as its trigger: request, async, nats, mqtt, topic, cron…)."""
        if self.closed:
            raise WorkerDied("function was removed")
        slot = self._free_slot()
        cold = False
        if slot is not None:
            self._take(slot)
        elif (paused := self._paused_slot()) is not None:
            slot = self._take(paused)
            await self._resume(slot)
        else:
            cold = not self.slots
            slot = await self._wait_for_slot(accepted, cause)
        self.invocations += 1
        try:
            response = await slot.instance.invoke(request, self.spec.limits.timeout)
        except InvokeTimeout:
            self._log(
                slot.instance.id, "[nfaas] request exceeded the timeout; replacing the instance"
            )
            await self._retire(slot)
            raise
        finally:
            self._release(slot)
        slot.served += 1
        self.failures = 0
        if slot.record is not None and not slot.record.first_response:
            slot.record.first_response = time.monotonic()
            self._finish_record(slot.record)
        return response, cold

    async def _wait_for_slot(self, accepted: float, cause: str) -> Slot:
        now = time.monotonic()
        if now < self.retry_at and not self.slots and not self.starting:
            raise CrashLooping(self.last_error, self.retry_at - now, self.last_error_is_load)
        if len(self.waiters) >= self.queue_limit:
            raise Overloaded(self._retry_after())
        waiter: asyncio.Future[Slot] = asyncio.get_running_loop().create_future()
        self.waiters.append(waiter)
        if not self.slots and not self.starting:
            self.start_instance(cause, accepted)
        try:
            return await asyncio.wait_for(waiter, self.spec.limits.timeout)
        except TimeoutError:
            raise Overloaded(self._retry_after()) from None
        finally:
            if not waiter.done():
                waiter.cancel()
            with contextlib.suppress(ValueError):
                self.waiters.remove(waiter)

    def _retry_after(self) -> float:
        return max(1.0, min(self.spec.limits.timeout, 30.0))

    # -- instance lifecycle --------------------------------------------------------------
    def live(self) -> int:
        return len(self.slots) + self.starting

    def start_instance(self, trigger: str, accepted: float | None = None) -> bool:
        """Begin a cold start in the background, if ``max`` allows another instance."""
        if self.closed or self.live() >= self.spec.scale.max:
            return False
        if time.monotonic() < self.retry_at:
            return False
        self.starting += 1
        task = asyncio.get_running_loop().create_task(self._start(trigger, accepted))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _start(self, trigger: str, accepted: float | None) -> None:
        now = time.monotonic()
        record = ColdStart(instance_id="", trigger=trigger, accepted=accepted or now, scheduled=now)
        spec, bundle = self.spec, self.bundle
        try:
            shell, prepared = await self.shells.acquire(spec.limits)
            record.instance_id = shell.id
            record.shell = "prepared" if prepared else "fresh"
            record.spawned = time.monotonic()
            holder: list[Slot] = []
            hooks = self._hooks(shell.id, holder)
            timings = LoadTimings(spawned=record.spawned)
            instance = await self._load(shell, spec, bundle, timings, hooks)
            record.loaded = timings.loaded or time.monotonic()
            record.shipped = timings.shipped or record.loaded
        except Exception as exc:
            self.shells.refill()
            self.starting -= 1
            self._gone_early.pop(record.instance_id, None)
            record.error = str(exc)
            self._note_failure(str(exc), isinstance(exc, LoadFailed))
            self.records.append(record)
            return
        self.starting -= 1
        slot = Slot(instance=instance, started=time.monotonic(), record=record)
        holder.append(slot)
        gone = self._gone_early.pop(shell.id, "")
        if self.closed or spec is not self.spec:
            self.shells.refill()
            await instance.stop()
            self._wake_waiters_after_loss()
            return
        record.ready = time.monotonic()
        self.slots.insert(0, slot)
        if not instance.alive:  # died as soon as it had loaded: as if just after
            self.shells.refill()
            record.error = gone or "instance exited as it started"
            self.records.append(record)
            self._on_exit(holder, record.error)
            return
        self._on_ready(slot)
        self._hand_over(slot)
        if trigger == "wake":
            # started ahead of the calls a chain is about to make: preparing its replacement
            # shell now would take CPU from that chain, so it waits until the chain is done
            asyncio.get_running_loop().call_later(WAKE_REFILL_AFTER, self.shells.refill)
        elif trigger in BACKGROUND_TRIGGERS or not slot.inflight:
            self.shells.refill()  # a caller's cold start refills after its first response

    def _hooks(self, instance_id: str, holder: list[Slot]) -> InstanceHooks:
        """How the instance reports back; ``holder`` gets its slot once it has one."""

        def on_exit(reason: str) -> None:
            if not holder:  # still loading: ``_start`` takes it from here
                self._gone_early[instance_id] = reason
            self._on_exit(holder, reason)

        return InstanceHooks(on_log=lambda text: self._log(instance_id, text), on_exit=on_exit)

    async def _load(
        self,
        shell: Shell,
        spec: FunctionSpec,
        bundle: CodeBundle,
        timings: LoadTimings,
        hooks: InstanceHooks,
    ) -> Instance:
        return await shell.load(spec, self.key[0], bundle, timings, hooks)

    def _on_ready(self, slot: Slot) -> None:
        """The instance can serve; the cold start is complete at its first response."""

    def maintain(self) -> None:
        """Called on every control-loop tick; pools with standing work override it."""

    def _note_failure(self, error: str, is_load_error: bool) -> None:
        backoff = self._back_off(error, is_load_error)
        self._log(
            "-", f"[nfaas] instance failed to start ({error}); next attempt in {backoff:.1f}s"
        )
        self._fail_waiters()

    def _back_off(self, error: str, is_load_error: bool) -> float:
        """Count a failure and hold new instances back: 0.5 s, doubling to MAX_BACKOFF."""
        self.failures += 1
        self.last_error = error
        self.last_error_is_load = is_load_error
        backoff = min(MAX_BACKOFF, 0.5 * 2 ** (self.failures - 1))
        self.retry_at = time.monotonic() + backoff
        return backoff

    def _fail_waiters(self) -> None:
        if self.slots or self.starting:
            return
        retry_after = max(0.0, self.retry_at - time.monotonic())
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(
                    CrashLooping(self.last_error, retry_after, self.last_error_is_load)
                )

    def _wake_waiters_after_loss(self) -> None:
        if self.waiters and not self.slots and not self.starting:
            self.start_instance("replacement")

    def _on_exit(self, holder: list[Slot], reason: str) -> None:
        if not holder:
            return
        slot = holder[0]
        if slot not in self.slots:
            return
        self.slots.remove(slot)
        self._clean_up(slot.instance)
        if slot.served == 0 and slot.inflight == 0:  # died before it was given any work
            self._note_failure(f"instance died before serving: {reason}", False)
        self._wake_waiters_after_loss()

    def _clean_up(self, instance: Instance) -> None:
        """Stop an instance that died by itself: what it held (its workdir, a container's
        cgroup, veth and address, its uid) is released only by ``stop``."""
        task = asyncio.get_running_loop().create_task(instance.stop())
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)

    async def _retire(self, slot: Slot) -> None:
        if slot in self.slots:
            self.slots.remove(slot)
        await slot.instance.stop()
        self._wake_waiters_after_loss()

    async def stop_idle(self, idle_for: float, keep: int) -> int:
        """Stop instances idle for ``idle_for`` seconds or more, keeping at least ``keep``."""
        now = time.monotonic()
        stopped = 0
        for slot in list(reversed(self.slots)):  # least recently used first
            if len(self.slots) <= keep:
                break
            if slot.inflight == 0 and now - slot.last_used >= idle_for:
                self.slots.remove(slot)
                await slot.instance.stop()
                stopped += 1
        return stopped

    def wake(self) -> bool:
        """Start an instance in the background if none runs or starts (a caller is about to
        come); never stops one. Whether an instance was started."""
        return self.live() == 0 and self.start_instance("wake")

    async def scale_to(self, replicas: int) -> None:
        """Start or stop instances now to reach ``replicas`` (stopping only idle ones)."""
        replicas = max(0, min(replicas, self.spec.scale.max))
        while self.live() < replicas and self.start_instance("scale"):
            pass
        if len(self.slots) > replicas:
            await self.stop_idle(0.0, replicas)

    def _finish_record(self, record: ColdStart) -> None:
        if record.trigger != "wake":
            self.shells.refill()
        self.records.append(record)
        self.on_cold_start(self.key, record)

    def _log(self, instance_id: str, text: str) -> None:
        self.logs.write(self.key, instance_id, text)

    async def update(self, spec: FunctionSpec, bundle: CodeBundle) -> None:
        """New code or spec: later requests go to new instances; idle old ones stop now."""
        self.spec, self.bundle = spec, bundle
        self.failures, self.retry_at, self.last_error = 0, 0.0, ""
        old = list(self.slots)
        self.slots.clear()
        for slot in old:
            self._drain_then_stop(slot)

    def _drain_then_stop(self, slot: Slot) -> None:
        async def drain() -> None:
            while slot.inflight:
                await asyncio.sleep(0.05)
            await slot.instance.stop()

        task = asyncio.get_running_loop().create_task(drain())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self) -> None:
        self.closed = True
        for task in list(self._tasks):
            task.cancel()
        slots, self.slots = self.slots, []
        for slot in slots:
            await slot.instance.stop()
        while self.waiters:
            waiter = self.waiters.popleft()
            if not waiter.done():
                waiter.set_exception(WorkerDied("function was removed"))
        if self._cleanups:
            await asyncio.gather(*list(self._cleanups), return_exceptions=True)

    def describe(self) -> dict[str, object]:
        now = time.monotonic()
        return {
            "replicas": len(self.slots),
            "starting": self.starting,
            "inflight": sum(s.inflight for s in self.slots),
            "queued": len(self.waiters),
            "invocations": self.invocations,
            "last_error": self.last_error,
            "crash_loop_retry_in": round(max(0.0, self.retry_at - now), 3),
            "paused": sum(1 for s in self.slots if s.paused),
            "resumes": len(self.resumes),
            "resume_ms_p50": round(sorted(self.resumes)[len(self.resumes) // 2] * 1000, 3)
            if self.resumes
            else None,
            "instances": [self._describe_slot(s, now) for s in self.slots],
        }

    def _describe_slot(self, slot: Slot, now: float) -> dict[str, object]:
        stats = slot.instance.stats()
        return {
            "id": slot.instance.id,
            "pid": slot.instance.pid,
            "inflight": slot.inflight,
            "served": slot.served,
            "idle_seconds": round(now - slot.last_used, 3),
            "paused": slot.paused,
            "pss_bytes": stats.pss,
            # tier-specific figures, e.g. a microVM's VMM overhead beside the guest's RAM
            **{f"{name}_bytes": int(value) for name, value in stats.extra.items()},
        }
