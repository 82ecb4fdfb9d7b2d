"""Prepared shells: function-less sandboxes made ahead of demand (LightVM's split toolstack).

A cold start takes a ready shell and only loads the function into it; the pool refills in
the background, so preparing is off the request path.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque

from nfaas.core.spec import Limits
from nfaas.sandbox.base import Driver, SandboxError, Shell

log = logging.getLogger("nfaas.shells")


class ShellPool:
    def __init__(self, driver: Driver, size: int) -> None:
        self.driver = driver
        self.size = size
        self.shape = driver.shape(Limits())  # the pool holds shells for default-sized functions
        self.ready: deque[Shell] = deque()
        self.filling = 0
        self.taken_ready = 0
        self.taken_fresh = 0
        self.closed = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def acquire(self, limits: Limits) -> tuple[Shell, bool]:
        """A shell that fits ``limits``, and whether it came prepared from the pool.

        The caller calls ``refill()`` once its cold start is over: preparing the next shell
        while this one loads would compete with it for the CPU.
        """
        shape = self.driver.shape(limits)
        while shape == self.shape and self.ready:
            shell = self.ready.popleft()
            if shell.alive:
                self.taken_ready += 1
                return shell, True
        self.taken_fresh += 1
        return await self.driver.prepare(ahead=False, shape=shape), False

    def refill(self) -> None:
        while not self.closed and len(self.ready) + self.filling < self.size:
            self.filling += 1
            task = asyncio.get_running_loop().create_task(self._fill())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _fill(self) -> None:
        try:
            self.ready.append(await self.driver.prepare(ahead=True, shape=self.shape))
        except (SandboxError, OSError) as exc:
            log.warning("could not prepare a %s shell: %s", self.driver.name, exc)
        finally:
            self.filling -= 1

    async def close(self) -> None:
        self.closed = True
        for task in list(self._tasks):
            task.cancel()
        while self.ready:
            await self.ready.popleft().discard()

    def info(self) -> dict[str, object]:
        return {
            "target": self.size,
            "shape": None if self.shape is None else str(self.shape),
            "ready": len(self.ready),
            "filling": self.filling,
            "taken_ready": self.taken_ready,
            "taken_fresh": self.taken_fresh,
        }
