"""The node agent: one pool per deployed function, over the sandbox drivers of this node."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

from nfaas.core.spec import FunctionSpec
from nfaas.node.coldstart import ColdStart
from nfaas.node.logs import FunctionKey, LogBook
from nfaas.node.pool import FunctionPool
from nfaas.node.shells import ShellPool
from nfaas.sandbox.base import CodeBundle, Driver, Request, Response
from nfaas.sandbox.process import ProcessDriver


class UnknownFunction(KeyError):
    pass


class NodeAgent:
    def __init__(
        self,
        data_dir: Path,
        on_cold_start: Callable[[FunctionKey, ColdStart], None] = lambda key, rec: None,
        queue_limit: int = 1024,
        shell_pool: int = 2,
    ) -> None:
        self.drivers: dict[str, Driver] = {"process": ProcessDriver(data_dir)}
        self.shells = {name: ShellPool(d, shell_pool) for name, d in self.drivers.items()}
        self.logs = LogBook(data_dir / "logs")
        self.pools: dict[FunctionKey, FunctionPool] = {}
        self.on_cold_start = on_cold_start
        self.queue_limit = queue_limit
        self.started_at = time.time()

    async def start(self) -> None:
        for driver in self.drivers.values():
            await driver.start()
        for shells in self.shells.values():
            shells.refill()

    async def deploy(self, key: FunctionKey, spec: FunctionSpec, bundle: CodeBundle) -> None:
        pool = self.pools.get(key)
        if pool is not None:
            await pool.update(spec, bundle)
            return
        self.pools[key] = FunctionPool(
            key,
            spec,
            bundle,
            self.shells[spec.isolation],
            self.logs,
            self.on_cold_start,
            self.queue_limit,
        )

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
