"""What every stream-connected shell and instance shares: the load exchange, invoking."""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Sequence
from typing import Any

from nfaas.core.spec import FunctionSpec
from nfaas.nf.ports.claim import PortClaim
from nfaas.sandbox.base import (
    HandlerError,
    Instance,
    InstanceHooks,
    InvokeTimeout,
    LoadFailed,
    LoadTimings,
    Request,
    Response,
    SandboxError,
    Shell,
    WorkerDied,
)
from nfaas.sandbox.stream import WorkerStream
from nfaas.worker.protocol import Error, Invoke, Load, Loaded, Message, PortBinding, Result

# runtime command: programs are found in the system's directories, then in the platform's
# virtualenv (which the container tier binds read-only), e.g. the nats-server it ships.
COMMAND_PATH = f"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:{sys.prefix}/bin"


def rlimits_for(
    spec: FunctionSpec, *, memory: bool = True, processes: bool = True
) -> dict[str, int]:
    """The worker's rlimits from the function's limits; a tier whose cgroup already bounds
    memory or processes leaves those out."""
    limits = spec.limits
    rlimits = {"cpu_time": max(1, int(limits.cpu_time)), "open_files": limits.open_files, "core": 0}
    if memory:
        rlimits["memory"] = limits.memory
    if processes:
        rlimits["processes"] = limits.processes
    return rlimits


def note_loaded(timings: LoadTimings, reply: Message) -> None:
    """Stamp ``loaded`` now and ``shipped`` from the worker's own account of its import."""
    timings.loaded = time.monotonic()
    imported = reply.import_seconds if isinstance(reply, Loaded) else 0.0
    timings.shipped = timings.loaded - imported


def _expire(fut: asyncio.Future[Any]) -> None:
    if not fut.done():
        fut.set_exception(InvokeTimeout("handler exceeded its timeout"))


class StreamInstance(Instance):
    """An instance reached through a WorkerStream; tiers add pause/resume/stop/stats."""

    def __init__(self, instance_id: str, pid: int, stream: WorkerStream) -> None:
        self.id = instance_id
        self.pid = pid
        self._stream = stream

    @property
    def alive(self) -> bool:
        return not self._stream.closed

    async def invoke(self, request: Request, timeout: float) -> Response:
        stream = self._stream
        request_id = stream.next_id()
        fut = stream.request(
            Invoke(
                request_id,
                request.method,
                request.path,
                request.query,
                request.headers,
                request.body,
            )
        )
        timer = asyncio.get_running_loop().call_later(timeout, _expire, fut)
        try:
            reply = await fut
        except asyncio.CancelledError:
            stream.forget(request_id)
            raise
        except WorkerDied as exc:
            raise WorkerDied(self.death_reason(str(exc))) from None
        finally:
            timer.cancel()
        if isinstance(reply, Result):
            return Response(reply.status, reply.headers, reply.body)
        if isinstance(reply, Error):
            raise HandlerError(reply.kind, reply.message)
        raise WorkerDied(f"unexpected reply {type(reply).__name__}")

    def death_reason(self, reason: str) -> str:
        """Why the instance died, as precisely as the tier can tell."""
        return reason


class StreamShell(Shell):
    """A shell reached through a WorkerStream: the instance's hooks, the lines it printed
    before a function owned it (kept for error messages), and the load exchange."""

    def __init__(self, shell_id: str) -> None:
        self.id = shell_id
        self.stream: WorkerStream | None = None
        self._hooks: InstanceHooks | None = None
        self._early: list[str] = []

    @property
    def alive(self) -> bool:
        return self.stream is not None and not self.stream.closed

    def _lost(self, reason: str) -> None:
        if self._hooks is not None:
            self._hooks.on_exit(reason)

    def _line(self, text: str) -> None:
        if self._hooks is not None:
            self._hooks.on_log(text)
        else:
            self._early.append(text)

    def early_output(self, lines: int = 12) -> str:
        return " | ".join(self._early[-lines:])

    def begin_load(
        self,
        spec: FunctionSpec,
        namespace: str,
        hooks: InstanceHooks,
        *,
        code_dir: str,
        workdir: str,
        uid: int,
        rlimits: dict[str, int],
        deps_dir: str = "",
        bundle: bytes = b"",
        deps: bytes = b"",
        extra_env: dict[str, str] | None = None,
        ports: Sequence[PortClaim] = (),
    ) -> tuple[WorkerStream, Load]:
        """The function takes over the shell; returns its stream and the load frame to send."""
        stream = self.stream
        if stream is None or stream.closed:
            raise LoadFailed("shell is gone")
        self._hooks = hooks
        stream.on_report = hooks.on_report
        env = {
            "PATH": COMMAND_PATH if spec.runtime == "command" else "/usr/local/bin:/usr/bin:/bin",
            "HOME": workdir,
            "LANG": "C.UTF-8",
            **spec.env,
            "NFAAS_FUNCTION": spec.name,
            "NFAAS_NAMESPACE": namespace,
            "NFAAS_INSTANCE": self.id,
            **(extra_env or {}),
        }
        load = Load(
            id=stream.next_id(),
            code_dir=code_dir,
            function_name=spec.name,
            namespace=namespace,
            instance_id=self.id,
            workdir=workdir,
            env=env,
            uid=uid,
            gid=uid,
            rlimits=rlimits,
            concurrency=spec.scale.target_concurrency,
            deps_dir=deps_dir,
            bundle=bundle,
            deps=deps,
            runtime=spec.runtime,
            ports=[PortBinding(claim.name, claim.url, claim.info) for claim in ports],
            command=list(spec.command),
        )
        return stream, load

    async def finish_load(
        self,
        stream: WorkerStream,
        load: Load,
        timings: LoadTimings,
        timeout: float,
        ports: Sequence[PortClaim] = (),
    ) -> Loaded:
        """Send the port descriptors (if any) and the load frame, and wait for the worker's
        answer; on failure the shell is discarded."""
        try:
            if ports:
                stream.attach([fd for claim in ports for fd in claim.fds])
            reply = await asyncio.wait_for(stream.request(load), timeout)
        except (TimeoutError, SandboxError) as exc:
            await self.discard()
            raise LoadFailed(f"worker did not load: {str(exc) or 'timed out'}") from None
        note_loaded(timings, reply)
        if not isinstance(reply, Loaded) or not reply.ok:
            await self.discard()
            raise LoadFailed(reply.error if isinstance(reply, Loaded) else "unexpected reply")
        return reply
