"""What one invocation came to, as the event plane sees it, and how it asks for one."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from nfaas.node.logs import FunctionKey
from nfaas.sandbox.base import Request


@dataclass(frozen=True)
class Outcome:
    status: int
    body: bytes = b""
    headers: list[tuple[str, str]] = field(default_factory=list)
    retry_after: float | None = None  # the function's (or the pool's) Retry-After
    error: str = ""  # why the platform, not the handler, produced the status
    cold: bool = False

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


# (function, request) -> outcome; raises LookupError when the function does not exist.
Invoker = Callable[[FunctionKey, Request], Awaitable[Outcome]]
