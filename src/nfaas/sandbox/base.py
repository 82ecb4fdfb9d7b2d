"""The sandbox-driver interface every isolation tier implements.

``Driver.prepare()`` makes a function-less shell; ``Shell.load()`` turns it into an
``Instance`` of one function; the instance serves ``invoke`` until ``stop``. Pause/resume
freeze an idle instance. Failures surface as the exceptions below, which the gateway maps
to HTTP status codes.
"""

from __future__ import annotations

import abc
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from nfaas.core.spec import FunctionSpec, Limits

if TYPE_CHECKING:
    from nfaas.nf.ports.claim import PortClaim


class SandboxError(Exception):
    """Base of everything a sandbox can fail with."""


class WorkerDied(SandboxError):
    """The instance went away while a request was in flight (502)."""


class InvokeTimeout(SandboxError):
    """The handler ran past the function's timeout (504)."""


class LoadFailed(SandboxError):
    """The function's code could not be loaded into the shell."""


class HandlerError(SandboxError):
    """The handler raised; carries the exception type and message (500)."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message}")
        self.kind = kind
        self.message = message


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    body: bytes


@dataclass(frozen=True)
class Response:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


@dataclass(frozen=True)
class CodeBundle:
    """A function's code: unpacked read-only on the node, and the archive it came from
    (shipped over the stream to sandboxes that cannot see the node's files)."""

    sha256: str
    code_dir: str
    deps_dir: str = ""
    archive: str = ""
    deps_archive: str = ""  # deps_dir zipped, for sandboxes that cannot see the node's files


@dataclass
class LoadTimings:
    """Monotonic timestamps (seconds) of the phases of turning a shell into an instance."""

    spawned: float = 0.0
    shipped: float = 0.0  # the code is in place in the sandbox (limits, uid applied)
    loaded: float = 0.0  # the handler is imported


@dataclass(frozen=True)
class InstanceHooks:
    """How an instance reports back: each line it logs, and (once) that it has gone."""

    on_log: Callable[[str], None]
    on_exit: Callable[[str], None]
    on_report: Callable[[Any], None] | None = None  # an NF's counters (protocol.Report)


@dataclass
class InstanceStats:
    pid: int
    rss: int
    pss: int
    uss: int
    cpu_seconds: float
    extra: dict[str, float] = field(default_factory=dict)


class Instance(abc.ABC):
    id: str
    pid: int
    program_pid: int = 0  # runtime command: the program's pid on the node (the worker's child)
    address: str = ""  # network: bridged: the instance's own address on the node's bridge

    @abc.abstractmethod
    async def invoke(self, request: Request, timeout: float) -> Response: ...

    @abc.abstractmethod
    async def pause(self) -> None: ...

    @abc.abstractmethod
    async def resume(self) -> None: ...

    @abc.abstractmethod
    async def stop(self) -> None: ...

    @abc.abstractmethod
    def stats(self) -> InstanceStats: ...

    @property
    @abc.abstractmethod
    def alive(self) -> bool: ...


class Shell(abc.ABC):
    id: str
    shape: Hashable = None  # what the shell was sized for (see ``Driver.shape``)

    @abc.abstractmethod
    async def load(
        self,
        spec: FunctionSpec,
        namespace: str,
        bundle: CodeBundle,
        timings: LoadTimings,
        hooks: InstanceHooks,
        ports: Sequence[PortClaim] = (),
    ) -> Instance:
        """Load the function into this shell; the shell is consumed either way.

        ``ports``: an NF function's ports, opened by the node; their descriptors go to the
        instance (tiers that cannot pass descriptors raise LoadFailed)."""

    @abc.abstractmethod
    async def discard(self) -> None: ...

    @property
    @abc.abstractmethod
    def alive(self) -> bool: ...


class Driver(abc.ABC):
    name: str

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def prepare(self, ahead: bool = True, shape: Hashable = None) -> Shell:
        """A function-less shell. ``ahead``: made for the pool, so it may spend time warming
        up; otherwise a request is waiting for it and it should be ready as soon as it can.
        ``shape``: from ``self.shape(limits)``; None is the driver's default size."""

    def shape(self, limits: Limits) -> Hashable:
        """The size a shell must be made with to hold a function with these limits.

        Only a shell of the same shape can take the function. Tiers that apply every limit at
        load time (process, container) have a single shape, None; a microVM's memory and vCPUs
        are fixed when it boots."""
        return None

    @abc.abstractmethod
    async def close(self) -> None: ...

    def info(self) -> dict[str, object]:
        return {"driver": self.name}
