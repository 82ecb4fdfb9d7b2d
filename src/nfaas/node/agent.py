"""The node agent: one pool per deployed function, over the sandbox drivers of this node."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

from nfaas.core.spec import FunctionSpec
from nfaas.node.coldstart import ColdStart
from nfaas.node.command_pool import CommandPool
from nfaas.node.logs import FunctionKey, LogBook
from nfaas.node.nf_pool import NfPool
from nfaas.node.pool import FunctionPool
from nfaas.node.shells import ShellPool
from nfaas.sandbox.base import CodeBundle, Driver, Request, Response, SandboxError
from nfaas.sandbox.container import ContainerDriver
from nfaas.sandbox.microvm import MicroVmDriver
from nfaas.sandbox.process import ProcessDriver

log = logging.getLogger("nfaas.node")
POOL_KINDS: dict[str, type[FunctionPool]] = {"nf": NfPool, "command": CommandPool}


class UnknownFunction(KeyError):
    pass


class NodeAgent:
    def __init__(
        self,
        data_dir: Path,
        on_cold_start: Callable[[FunctionKey, ColdStart], None] = lambda key, rec: None,
        queue_limit: int = 1024,
        shell_pool: int = 2,
        container_pool: int = 1,
        oci_runtime: str = "runc",
        microvm_pool: int = 1,
        guest_kernel: str | None = None,
    ) -> None:
        self.drivers: dict[str, Driver] = {
            "process": ProcessDriver(data_dir),
            "container": ContainerDriver(data_dir, oci_runtime),
            "microvm": MicroVmDriver(data_dir, guest_kernel),
        }
        sizes = {"process": shell_pool, "container": container_pool, "microvm": microvm_pool}
        self.shells = {name: ShellPool(d, sizes[name]) for name, d in self.drivers.items()}
        # tiers this node cannot offer, and why (e.g. no OCI runtime installed)
        self.unavailable: dict[str, str] = {}
        self.data_dir = data_dir
        self.logs = LogBook(data_dir / "logs")
        self.pools: dict[FunctionKey, FunctionPool] = {}
        self.on_cold_start = on_cold_start
        self.queue_limit = queue_limit
        self.started_at = time.time()

    async def start(self) -> None:
        for name, driver in list(self.drivers.items()):
            try:
                await driver.start()
            except SandboxError as exc:
                if name == "process":
                    raise
                log.warning("isolation %r is not available on this node: %s", name, exc)
                self.unavailable[name] = str(exc)
                del self.drivers[name]
                del self.shells[name]
        for shells in self.shells.values():
            shells.refill()

    def check_isolation(self, isolation: str) -> None:
        if isolation not in self.drivers:
            reason = self.unavailable.get(isolation, "no driver")
            raise SandboxError(f"isolation {isolation!r} is not available on this node: {reason}")

    async def deploy(self, key: FunctionKey, spec: FunctionSpec, bundle: CodeBundle) -> None:
        pool = self.pools.get(key)
        kind = POOL_KINDS.get(spec.runtime, FunctionPool)
        if pool is not None and type(pool) is kind:
            await pool.update(spec, bundle)
            return
        if pool is not None:  # the runtime changed: a pool of the other kind takes over
            await pool.close()
        args = (key, spec, bundle, self.shells[spec.isolation], self.logs, self.on_cold_start)
        if kind is NfPool:
            captures = self.data_dir / "captures" / key[0]
            self.pools[key] = NfPool(*args, self.queue_limit, capture_dir=captures)
        else:
            self.pools[key] = kind(*args, self.queue_limit)
        if kind is CommandPool:
            self.pools[key].maintain()  # a service starts at deploy, not at a first request

    def pool(self, key: FunctionKey) -> FunctionPool:
        pool = self.pools.get(key)
        if pool is None:
            raise UnknownFunction(key)
        return pool

    async def invoke(
        self, key: FunctionKey, request: Request, accepted: float
    ) -> tuple[Response, bool]:
        return await self.pool(key).invoke(request, accepted)

    async def remove(self, key: FunctionKey) -> None:
        pool = self.pools.pop(key, None)
        if pool is not None:
            await pool.close()
        self.logs.forget(key)

    async def close(self) -> None:
        for pool in list(self.pools.values()):
            await pool.close()
        self.pools.clear()
        for shells in self.shells.values():
            await shells.close()
        for driver in self.drivers.values():
            await driver.close()
        self.logs.close()
