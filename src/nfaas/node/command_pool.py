"""The instances of a `runtime: command` function: a program kept running as a service.

A command function (a broker such as nats-server or Mosquitto) is not invoked: it serves its
own protocol on its own ports, so HTTP requests get 400. Its instances start at deploy and keep
running: the pool wants ``max(1, scale.min)`` of them, or what ``nfaas scale`` last asked for,
never stops one for being idle and never pauses one. Each instance's worker runs the program
as its child (``nfaas.worker.command``); when the program ends, the instance is gone and the
pool starts another after a back-off that doubles from 0.5 s to 60 s while programs keep
ending soon after they start (crash-loop protection), back to 0.5 s once one has run for
``STABLE_AFTER``. Stopping (remove, update, scale down) sends the program SIGTERM and kills
the instance ``STOP_GRACE`` later if it is still there.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import time
from collections import deque
from typing import Any

from nfaas.core.spec import FunctionSpec
from nfaas.node.pool import FunctionPool, Slot
from nfaas.sandbox.base import CodeBundle, Request, Response
from nfaas.sandbox.procstats import read_stats

TIERS = ("process", "container")  # a microVM guest has only the platform's image, no program
STOP_GRACE = 2.0
STABLE_AFTER = 10.0  # seconds a program must run for its exit not to count as a crash loop
KEEP_EXITS = 20
NO_HTTP = b"a command function serves its own protocol on its own ports; it has no HTTP handler\n"


def service_replicas(spec: FunctionSpec) -> int:
    """How many instances a command function runs when nobody has scaled it."""
    return min(max(1, spec.scale.min), spec.scale.max)


class CommandPool(FunctionPool):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.wanted = service_replicas(self.spec)
        self.restarts = 0
        self.exits: deque[dict[str, object]] = deque(maxlen=KEEP_EXITS)
        # replica numbers: an instance that replaces one takes its number (and its count)
        self.replica_of: dict[Slot, int] = {}
        self.replica_restarts: dict[int, int] = {}
        self._trigger = "deploy"  # why the next instance starts, for its cold-start record

    # -- no HTTP ---------------------------------------------------------------------------
    async def invoke(
        self, request: Request, accepted: float, cause: str = "request"
    ) -> tuple[Response, bool]:
        return Response(400, [("content-type", "text/plain; charset=utf-8")], NO_HTTP), False

    # -- keeping the wanted number running ---------------------------------------------------
    def refused(self) -> str:
        """Why this function cannot run on its isolation tier; empty when it can."""
        isolation = self.spec.isolation
        if isolation in TIERS:
            return ""
        return (
            f"runtime command runs in isolation process or container, not {isolation!r}: "
            "the guest image holds only the platform's worker, not the program"
        )

    def maintain(self) -> None:
        if self.closed:
            return
        reason = self.refused()
        if reason:
            if self.last_error != reason:
                self.last_error, self.last_error_is_load = reason, True
                self._log("-", f"[nfaas] {reason}")
            return
        while self.live() < self.wanted and self.start_instance(self._trigger):
            pass

    def start_instance(self, trigger: str, accepted: float | None = None) -> bool:
        if self.live() >= self.wanted or self.refused():
            return False
        # the platform's loop asks for scale.min as "autoscaler"; say why it really starts
        return super().start_instance(self._trigger if trigger == "autoscaler" else trigger)

    def _note_failure(self, error: str, is_load_error: bool) -> None:
        self._trigger = "restart"
        super()._note_failure(error, is_load_error)

    def _on_ready(self, slot: Slot) -> None:
        record = slot.record
        if record is not None:  # its work is its own protocol: no first HTTP response
            record.first_response = record.ready
            self._finish_record(record)
        used = set(self.replica_of.values())
        self.replica_of[slot] = next(i for i in itertools.count() if i not in used)
        if len(self.slots) > self.wanted:  # scaled down while it was starting
            self._stop_later(slot)

    def _on_exit(self, holder: list[Slot], reason: str) -> None:
        if not holder or holder[0] not in self.slots:
            return  # not one of ours any more: stopped on purpose
        slot = holder[0]
        self.slots.remove(slot)
        replica = self.replica_of.pop(slot, 0)
        ran = time.monotonic() - slot.started
        self.restarts += 1
        self.replica_restarts[replica] = self.replica_restarts.get(replica, 0) + 1
        self.exits.append(
            {
                "instance": slot.instance.id,
                "replica": replica,
                "reason": reason,
                "ran_seconds": round(ran, 3),
                "at": time.time(),
            }
        )
        if ran >= STABLE_AFTER:
            self.failures = 0  # it served for a while: a fresh start, not a crash loop
        backoff = self._back_off(f"{reason} after {ran:.1f}s", False)
        self._trigger = "restart"
        self._log(
            slot.instance.id, f"[nfaas] {reason} after {ran:.1f}s; restarting in {backoff:.1f}s"
        )
        self._clean_up(slot.instance)

    # -- stopping ------------------------------------------------------------------------------
    async def _stop(self, slot: Slot) -> None:
        """SIGTERM to the program, then the instance is stopped (killed if still there)."""
        if slot in self.slots:
            self.slots.remove(slot)
        self.replica_of.pop(slot, None)
        instance = slot.instance
        if instance.program_pid and instance.alive:
            with contextlib.suppress(ProcessLookupError):
                os.kill(instance.program_pid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_GRACE
            while instance.alive and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        await instance.stop()

    def _stop_later(self, slot: Slot) -> None:
        task = asyncio.get_running_loop().create_task(self._stop(slot))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def stop_idle(self, idle_for: float, keep: int) -> int:
        return 0  # a service is never idle as far as the platform can tell

    async def pause_idle(self, idle_for: float) -> int:
        return 0  # a frozen broker would drop its clients

    async def scale_to(self, replicas: int) -> None:
        self.wanted = max(0, min(replicas, self.spec.scale.max))
        self.failures, self.retry_at = 0, 0.0  # asked for by a person: try now
        self._trigger = "scale"
        self.maintain()
        by_replica = sorted(self.slots, key=lambda slot: self.replica_of.get(slot, 0))
        await asyncio.gather(*(self._stop(slot) for slot in by_replica[self.wanted :]))

    async def update(self, spec: FunctionSpec, bundle: CodeBundle) -> None:
        """New code or spec: the old programs stop first (they may hold the ports the new ones
        listen on), then the new ones start."""
        self.spec, self.bundle = spec, bundle
        self.failures, self.retry_at, self.last_error = 0, 0.0, ""
        self.wanted = service_replicas(spec)
        self.restarts = 0
        self.replica_restarts.clear()
        old, self.slots = self.slots, []
        await asyncio.gather(*(self._stop(slot) for slot in old))
        self._trigger = "deploy"
        self.maintain()

    async def close(self) -> None:
        self.closed = True
        slots, self.slots = self.slots, []
        # starts under way finish first (and stop what they started, seeing ``closed``):
        # cancelled halfway, a program could be left running
        await asyncio.gather(
            *(self._stop(slot) for slot in slots), *list(self._tasks), return_exceptions=True
        )
        await super().close()

    # -- what describe shows -----------------------------------------------------------------
    def state(self) -> str:
        if self.refused():
            return "refused"
        if len(self.slots) >= self.wanted:
            return "running" if self.wanted else "stopped"
        if time.monotonic() < self.retry_at:
            return "crash-loop"
        return "starting"

    def describe(self) -> dict[str, object]:
        info = super().describe()
        info["instances"] = [
            self._describe_slot(slot, time.monotonic())
            for slot in sorted(self.slots, key=lambda slot: self.replica_of.get(slot, 0))
        ]
        info.update(
            state=self.state(),
            command=list(self.spec.command),
            wanted=self.wanted,
            restarts=self.restarts,
            exits=list(self.exits),
        )
        return info

    def _describe_slot(self, slot: Slot, now: float) -> dict[str, object]:
        instance = slot.instance
        replica = self.replica_of.get(slot, 0)
        return {
            **super()._describe_slot(slot, now),
            "pid": instance.program_pid,  # what a person looks for: the program
            "worker_pid": instance.pid,
            "replica": replica,
            "state": "running" if instance.alive else "exited",
            "restarts": self.replica_restarts.get(replica, 0),
            "uptime_seconds": round(now - slot.started, 3),
            "address": instance.address,
            "program_pss_bytes": read_stats(instance.program_pid).pss
            if instance.program_pid
            else 0,
        }
