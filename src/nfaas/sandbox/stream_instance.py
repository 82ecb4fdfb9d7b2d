"""What every stream-connected instance shares: invoking over the worker protocol."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from nfaas.sandbox.base import (
    HandlerError,
    Instance,
    InvokeTimeout,
    LoadTimings,
    Request,
    Response,
    WorkerDied,
)
from nfaas.sandbox.stream import WorkerStream
from nfaas.worker.protocol import Error, Invoke, Loaded, Message, Result


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
