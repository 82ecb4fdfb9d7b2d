"""The single-node platform: registry, bundles, tokens, node agent and the scaling loop."""

from __future__ import annotations

import asyncio
import logging
import os
import stat
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nfaas.control.auth import ALL_NAMESPACES, Principal, TokenStore
from nfaas.control.autoscaler import Kpa
from nfaas.control.bundles import BundleError, BundleStore
from nfaas.control.invoke import cold_start_cause, invoke_pool
from nfaas.control.registry import FunctionRecord, Registry
from nfaas.core.spec import FunctionSpec, SpecError, validate_name, validate_spec
from nfaas.events.outcome import Outcome
from nfaas.events.plane import EventPlane, EventsConfig
from nfaas.node.agent import NodeAgent
from nfaas.node.coldstart import ColdStart, percentiles
from nfaas.node.logs import FunctionKey
from nfaas.sandbox.base import Request, SandboxError
from nfaas.sandbox.volumes import remove_volume, volumes_root

log = logging.getLogger("nfaas.control")
DEFAULT_NAMESPACE = "default"
NAMESPACE_PATH = ("namespace",)


class NotFound(LookupError):
    """No such function visible to the caller (404: existence is never disclosed)."""


class Conflict(Exception):
    """The function already exists (POST) (409)."""


class Forbidden(Exception):
    """The caller's token does not allow this (403)."""


@dataclass(frozen=True)
class PlatformConfig:
    data_dir: Path
    tick: float = 0.1
    queue_limit: int = 1024
    stable_window: float = 60.0
    panic_window: float = 6.0
    shell_pool: int = 2
    container_pool: int = 1
    oci_runtime: str = "runc"
    microvm_pool: int = 1
    guest_kernel: str | None = None
    nats_url: str | None = None  # None: run and supervise a local nats-server
    mqtt_port: int | None = 1883  # the local nats-server's MQTT listener; 0: any free port


def check_reachable(data_dir: Path) -> None:
    """Instances run under other uids; they must be able to traverse to their code."""
    if os.getuid() != 0:
        return
    for folder in [data_dir.resolve(), *data_dir.resolve().parents]:
        mode = folder.stat().st_mode
        if not mode & stat.S_IXOTH:
            raise RuntimeError(
                f"data directory {data_dir} is not reachable by unprivileged instance uids: "
                f"{folder} has mode {stat.filemode(mode)} (needs o+x); choose another --data"
            )


class Platform:
    def __init__(self, config: PlatformConfig) -> None:
        self.config = config
        # Platform state (SQLite and its WAL, bundles, logs) is for the platform alone:
        # instances run as other uids. What instances must read is opened up explicitly.
        os.umask(0o077)
        data = config.data_dir
        data.mkdir(parents=True, exist_ok=True)
        data.chmod(0o711)
        check_reachable(data)
        self.registry = Registry(data / "state.db")
        self.tokens = TokenStore(self.registry)
        self.bundles = BundleStore(data)
        self.cold_start_listeners: list[Callable[[FunctionKey, ColdStart], None]] = []
        self.agent = NodeAgent(
            data,
            self._cold_start,
            config.queue_limit,
            config.shell_pool,
            config.container_pool,
            config.oci_runtime,
            config.microvm_pool,
            config.guest_kernel,
        )
        self.scalers: dict[FunctionKey, Kpa] = {}
        self.events = EventPlane(
            EventsConfig(config.nats_url, data / "nats", config.mqtt_port), self._invoke
        )
        self.started_at = time.time()
        self._loop_task: asyncio.Task[None] | None = None
        self.admin_token_path = data / "admin.token"

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        self._ensure_admin_token()
        await self.agent.start()
        await self.events.start()
        for record in self.registry.list_functions():
            if record.spec.isolation not in self.agent.drivers:
                log.warning(
                    "%s/%s needs isolation %r, which this node cannot offer now; not started",
                    record.namespace,
                    record.spec.name,
                    record.spec.isolation,
                )
                continue
            bundle = await asyncio.to_thread(self.bundles.unpack, record.bundle)
            key = (record.namespace, record.spec.name)
            await self.agent.deploy(key, record.spec, bundle)
            self.scalers[key] = self._new_kpa()
            await self.events.function_deployed(key, record.spec)
        self._loop_task = asyncio.get_running_loop().create_task(self._control_loop())

    async def stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
        await self.events.stop()
        await self.agent.close()
        self.registry.close()

    def _ensure_admin_token(self) -> None:
        if self.admin_token_path.exists():
            return
        _, token = self.tokens.create(ALL_NAMESPACES)
        fd = os.open(self.admin_token_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(token + "\n")

    async def _invoke(self, key: FunctionKey, request: Request) -> Outcome:
        """The event plane's way in: the same pool and statuses as the gateway's."""
        pool = self.agent.pools.get(key)
        if pool is None:
            raise LookupError(f"function {key[1]!r} not found")
        return await invoke_pool(pool, request, time.monotonic(), cold_start_cause(request))

    def _new_kpa(self) -> Kpa:
        return Kpa(self.config.stable_window, self.config.panic_window)

    def _cold_start(self, key: FunctionKey, record: ColdStart) -> None:
        for listener in self.cold_start_listeners:
            listener(key, record)

    async def _control_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.tick)
            now = time.monotonic()
            for key, pool in list(self.agent.pools.items()):
                scale = pool.spec.scale
                kpa = self.scalers.setdefault(key, self._new_kpa())
                demand = pool.concurrency()
                kpa.record(now, demand)
                want = kpa.desired(
                    now, len(pool.slots), scale.target_concurrency, scale.min, scale.max
                )
                # Scale out only while there is demand now: an idle function is left to the
                # keep-alive policy, so the two never fight over an instance.
                if demand == 0:
                    want = scale.min
                while pool.live() < want and pool.start_instance("autoscaler"):
                    pass
                await pool.stop_idle(scale.idle_timeout, keep=scale.min)
                pool.maintain()
                if scale.pause_after:
                    await pool.pause_idle(scale.pause_after)

    # -- names and access ----------------------------------------------------------------
    def namespace_for(self, principal: Principal | None, requested: str | None) -> str:
        if principal is not None and not principal.is_admin:
            if requested and requested != principal.namespace:
                raise NotFound(f"namespace {requested!r} not found")
            return principal.namespace
        namespace = requested or DEFAULT_NAMESPACE
        validate_name(namespace, NAMESPACE_PATH)
        return namespace

    def lookup(
        self, principal: Principal | None, name: str, namespace: str | None
    ) -> FunctionRecord:
        ns = self.namespace_for(principal, namespace)
        record = self.registry.get_function(ns, name)
        if record is None:
            raise NotFound(f"function {name!r} not found")
        return record

    # -- management ----------------------------------------------------------------------
    async def upload_bundle(self, data: bytes) -> str:
        return await asyncio.to_thread(self.bundles.put, data)

    async def deploy(
        self,
        principal: Principal,
        name: str,
        namespace: str | None,
        raw_spec: Mapping[str, Any],
        bundle: str,
        mode: str,
    ) -> FunctionRecord:
        """``mode`` is "create" (409 if present), "update" (404 if absent) or "upsert"."""
        ns = self.namespace_for(principal, namespace)
        spec = validate_spec(name, raw_spec)
        if not principal.is_admin and any(
            url.startswith(("afpacket:", "tap:")) for url in spec.ports.values()
        ):
            raise Forbidden(
                "binding network interfaces (afpacket:, tap: ports) needs an admin token"
            )
        try:
            self.agent.check_isolation(spec.isolation)
        except SandboxError as exc:
            raise SpecError(("isolation",), str(exc)) from None
        if not self.bundles.has(bundle):
            raise SpecError(
                ("bundle",), f"unknown bundle {bundle!r}: upload it to /system/bundles first"
            )
        existing = self.registry.get_function(ns, name)
        if mode == "create" and existing is not None:
            raise Conflict(f"function {name!r} already exists in namespace {ns!r}")
        if mode == "update" and existing is None:
            raise NotFound(f"function {name!r} not found")
        code = await asyncio.to_thread(self.bundles.unpack, bundle)
        if spec.runtime != "command" and not (Path(code.code_dir) / "handler.py").is_file():
            # checked here, not at upload: a command function's bundle needs none
            raise SpecError(
                ("bundle",), f"bundle has no handler.py at its top level (runtime {spec.runtime})"
            )
        record = self.registry.put_function(ns, spec, bundle)
        await self.agent.deploy((ns, name), spec, code)
        self.scalers.setdefault((ns, name), self._new_kpa())
        await self.events.function_deployed((ns, name), spec)
        return record

    async def remove(self, principal: Principal, name: str, namespace: str | None) -> None:
        record = self.lookup(principal, name, namespace)
        key = (record.namespace, name)
        self.registry.delete_function(*key)
        self.scalers.pop(key, None)
        await self.events.function_removed(key)
        await self.agent.remove(key)
        # its instances are stopped: its volume (if it ever had one) goes with it
        await asyncio.to_thread(remove_volume, volumes_root(self.config.data_dir), key)

    def wake(self, principal: Principal, name: str, namespace: str | None) -> bool:
        """Start an instance of a function at zero, ahead of calls about to come (a chain's
        later steps); never stops one. Whether one was started."""
        record = self.lookup(principal, name, namespace)
        pool = self.agent.pools.get((record.namespace, name))
        return pool is not None and pool.wake()

    def list(self, principal: Principal, namespace: str | None) -> list[FunctionRecord]:
        if principal.is_admin and namespace is None:
            return self.registry.list_functions()
        return self.registry.list_functions(self.namespace_for(principal, namespace))

    async def scale(
        self, principal: Principal, name: str, namespace: str | None, replicas: int
    ) -> None:
        record = self.lookup(principal, name, namespace)
        if replicas < 0 or replicas > record.spec.scale.max:
            raise SpecError(
                ("replicas",), f"must be between 0 and the function's max ({record.spec.scale.max})"
            )
        await self.agent.pool((record.namespace, name)).scale_to(replicas)

    def status(self, record: FunctionRecord) -> dict[str, Any]:
        key = (record.namespace, record.spec.name)
        pool = self.agent.pools.get(key)
        runtime: dict[str, object] = pool.describe() if pool else {}
        records = list(pool.records) if pool else []
        kpa = self.scalers.get(key)
        return {
            **runtime,
            "cold_starts": [r.to_dict() for r in records[-10:]],
            "cold_start_percentiles_ms": percentiles(records),
            "panicking": bool(kpa and kpa.panicking(time.monotonic())),
            "events": self.events.describe(key),
            "shell_pool": self.agent.shells[spec_tier].info()
            if (spec_tier := record.spec.isolation) in self.agent.shells
            else None,
        }

    def info(self) -> dict[str, Any]:
        return {
            "provider": {"provider": "nfaas", "orchestration": "nfaas-node", "version": _version()},
            "version": {"release": _version()},
            "arch": os.uname().machine,
            "started_at": self.started_at,
            "functions": len(self.agent.pools),
            "instances": sum(len(p.slots) for p in self.agent.pools.values()),
            "drivers": [
                {**driver.info(), "shell_pool": self.agent.shells[name].info()}
                for name, driver in self.agent.drivers.items()
            ],
            "unavailable": self.agent.unavailable,
            "events": self.events.info(),
        }


def _version() -> str:
    from nfaas import __version__

    return __version__


__all__ = [
    "BundleError",
    "Conflict",
    "Forbidden",
    "FunctionSpec",
    "NotFound",
    "Platform",
    "PlatformConfig",
    "SpecError",
]
