"""The node side of the worker stream: requests multiplexed by id over one connection."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Callable

from nfaas.sandbox.base import WorkerDied
from nfaas.worker.protocol import FrameBuffer, Message, ProtocolError, encode


class WorkerStream(asyncio.Protocol):
    """Sends frames and resolves the future waiting for each reply id."""

    def __init__(self, on_lost: Callable[[str], None]) -> None:
        self._on_lost = on_lost
        self._frames = FrameBuffer()
        self._pending: dict[int, asyncio.Future[Message]] = {}
        self._ids = itertools.count(1)
        self._transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            messages = self._frames.feed(data)
        except ProtocolError as exc:
            self._fail(f"protocol error: {exc}")
            return
        pending = self._pending
        for msg in messages:
            fut = pending.pop(msg.id, None)
            if fut is not None and not fut.done():
                fut.set_result(msg)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail("worker closed its stream")

    def _fail(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(WorkerDied(reason))
        if self._transport is not None:
            self._transport.close()
        self._on_lost(reason)

    def next_id(self) -> int:
        return next(self._ids)

    def request(self, msg: Message) -> asyncio.Future[Message]:
        """Send ``msg``; the returned future gets the reply carrying the same id."""
        fut: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        if self.closed or self._transport is None:
            fut.set_exception(WorkerDied("worker stream is closed"))
            return fut
        self._pending[msg.id] = fut
        self._transport.write(encode(msg))
        return fut

    def expect(self, message_id: int) -> asyncio.Future[Message]:
        """A future for a message the peer will send unasked (e.g. a guest's hello)."""
        fut: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        if self.closed:
            fut.set_exception(WorkerDied("worker stream is closed"))
        else:
            self._pending[message_id] = fut
        return fut

    def forget(self, request_id: int) -> None:
        self._pending.pop(request_id, None)

    def close(self) -> None:
        self._fail("stream closed by the node")


class LineReader(asyncio.Protocol):
    """Splits a log pipe into lines."""

    def __init__(self, on_line: Callable[[str], None]) -> None:
        self._on_line = on_line
        self._partial = b""

    def data_received(self, data: bytes) -> None:
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            # a guest's console is a terminal: its lines end in CR LF
            self._on_line(line.rstrip(b"\r").decode(errors="replace"))

    def connection_lost(self, exc: Exception | None) -> None:
        if self._partial:
            self._on_line(self._partial.decode(errors="replace"))
            self._partial = b""
