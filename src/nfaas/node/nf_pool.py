"""The instances of a `runtime: nf` function: ports opened for each, packets as activity.

An NF instance gets its ports from the node (claimed here, handed over with SCM_RIGHTS; see
`nfaas.nf.ports.claim`). Several instances share an AF_PACKET interface through a
PACKET_FANOUT group (flow hash), so `scale.max > 1` spreads flows over them. An instance is
busy while packets flow: its reports (about once a second) keep it from being stopped as
idle, and their counters add up here into per-function totals for /metrics, which survive
instances coming and going. NF instances are never paused (their packet loop must run).

At zero instances (`scale.min: 0`), the node keeps the next instance's ports open and
watches them: the first packet on any of them starts an instance, which takes over those
very sockets, so the packets that woke it are processed rather than lost.
"""

from __future__ import annotations

import asyncio
import time
import zlib
from pathlib import Path
from typing import Any

from nfaas.core.spec import FunctionSpec
from nfaas.nf.ports import PortError
from nfaas.nf.ports.claim import PortClaim, claim_port
from nfaas.node.pool import FunctionPool, Slot
from nfaas.sandbox.base import CodeBundle, Instance, InstanceHooks, LoadFailed, LoadTimings, Shell
from nfaas.worker.protocol import Report

# (what, name, kind, counter, reason): flat keys of an NF's cumulative counters
CounterKey = tuple[str, str, str, str, str]
OPERATOR_COUNTERS = ("packets_in", "packets_out", "bytes_in", "bytes_out", "errors")


def fanout_group(key: tuple[str, str], port: str) -> int:
    """The PACKET_FANOUT group of one port of a function: 16 bits, the same on every start.
    Each port needs its own: a group holds sockets of one interface only."""
    return zlib.crc32(f"{key[0]}/{key[1]}/{port}".encode()) & 0xFFFF


def flatten(report: Report) -> dict[CounterKey, int]:
    flat: dict[CounterKey, int] = {}
    for row in report.operators:
        name, kind = str(row["operator"]), str(row["kind"])
        for counter in OPERATOR_COUNTERS:
            flat["operator", name, kind, counter, ""] = int(row.get(counter) or 0)
        for reason, count in (row.get("drops") or {}).items():
            flat["operator", name, kind, "drops", str(reason)] = int(count)
    for port, stats in report.ports.items():
        for counter, value in stats.items():
            flat["port", port, "", counter, ""] = int(value)
    return flat


class NfPool(FunctionPool):
    def __init__(self, *args: Any, capture_dir: Path, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.capture_dir = capture_dir
        self.totals: dict[CounterKey, int] = {}
        self._seen: dict[str, dict[CounterKey, int]] = {}  # per instance: its last report
        self._doorbell: list[PortClaim] = []
        self._watched: list[int] = []
        self.doorbell_error = ""

    # -- ports ---------------------------------------------------------------------------
    def claim_ports(self) -> list[PortClaim]:
        spec = self.spec
        claims: list[PortClaim] = []
        try:
            for name, url in spec.ports.items():
                group = fanout_group(self.key, name) if spec.scale.max > 1 else None
                claims.append(
                    claim_port(name, url, capture_dir=self.capture_dir, fanout_group=group)
                )
        except BaseException:
            for claim in claims:
                claim.close()
            raise
        return claims

    async def _load(
        self,
        shell: Shell,
        spec: FunctionSpec,
        bundle: CodeBundle,
        timings: LoadTimings,
        hooks: InstanceHooks,
    ) -> Instance:
        claims = self._take_doorbell()
        if not claims:
            try:
                claims = self.claim_ports()
            except (PortError, OSError) as exc:
                await shell.discard()
                raise LoadFailed(f"cannot open ports: {exc}") from None
        try:
            return await shell.load(spec, self.key[0], bundle, timings, hooks, ports=claims)
        finally:
            for claim in claims:  # the instance holds its own copies now
                claim.close()

    def _on_ready(self, slot: Slot) -> None:
        # An NF's work is its packets: its cold start ends when its loop runs, not at a
        # first HTTP response (it may never get one).
        record = slot.record
        if record is not None:
            record.first_response = record.ready
            self._finish_record(record)

    # -- waking on the first packet --------------------------------------------------------
    def maintain(self) -> None:
        """At zero, keep the next instance's ports open and ring on the first packet."""
        if self.closed or self.live() or self._doorbell or self.spec.scale.min:
            return
        if time.monotonic() < self.retry_at:
            return
        try:
            claims = self.claim_ports()
        except (PortError, OSError) as exc:
            if str(exc) != self.doorbell_error:
                self._log("-", f"[nfaas] cannot watch the ports for traffic: {exc}")
            self.doorbell_error = str(exc)
            self.retry_at = time.monotonic() + 5.0
            return
        self.doorbell_error = ""
        loop = asyncio.get_running_loop()
        self._doorbell = claims
        for claim in claims:
            if claim.watchable:
                loop.add_reader(claim.fds[0], self._ring)
                self._watched.append(claim.fds[0])

    def _ring(self) -> None:
        self._unwatch()
        self.start_instance("packet")

    def _unwatch(self) -> None:
        loop = asyncio.get_running_loop()
        for fd in self._watched:
            loop.remove_reader(fd)
        self._watched = []

    def _take_doorbell(self) -> list[PortClaim]:
        self._unwatch()
        claims, self._doorbell = self._doorbell, []
        return claims

    # -- activity and counters --------------------------------------------------------------
    def _hooks(self, instance_id: str, holder: list[Slot]) -> InstanceHooks:
        base = super()._hooks(instance_id, holder)

        def on_report(report: Report) -> None:
            self._count(instance_id, report)
            if holder:
                holder[0].last_used = time.monotonic()  # packets flowed: not idle

        return InstanceHooks(base.on_log, base.on_exit, on_report)

    def _count(self, instance_id: str, report: Report) -> None:
        now = flatten(report)
        before = self._seen.get(instance_id, {})
        totals = self.totals
        for key, value in now.items():
            delta = value - before.get(key, 0)
            totals[key] = totals.get(key, 0) + (delta if delta >= 0 else value)
        self._seen[instance_id] = now

    async def pause_idle(self, idle_for: float) -> int:
        return 0  # a frozen NF would stop forwarding

    async def update(self, spec: FunctionSpec, bundle: CodeBundle) -> None:
        for claim in self._take_doorbell():  # opened for the old spec's ports
            claim.close()
        await super().update(spec, bundle)

    async def close(self) -> None:
        for claim in self._take_doorbell():
            claim.close()
        await super().close()

    def describe(self) -> dict[str, object]:
        info = super().describe()
        info["ports"] = dict(self.spec.ports)
        info["nf_counters"] = [
            {"what": k[0], "name": k[1], "kind": k[2], "counter": k[3], "reason": k[4], "value": v}
            for k, v in sorted(self.totals.items())
        ]
        info["watching_for_packets"] = bool(self._watched)
        return info
