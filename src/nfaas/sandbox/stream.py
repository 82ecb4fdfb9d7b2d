"""The node side of the worker stream: requests multiplexed by id over one connection."""

from __future__ import annotations

import asyncio
import itertools
import os
import socket
from collections.abc import Callable
from typing import Any

from nfaas.sandbox.base import WorkerDied
from nfaas.worker.protocol import (
    Attach,
    Exited,
    FrameBuffer,
    Message,
    ProtocolError,
    Report,
    encode,
)


class WorkerStream(asyncio.Protocol):
    """Sends frames and resolves the future waiting for each reply id."""

    def __init__(self, on_lost: Callable[[str], None]) -> None:
        self._on_lost = on_lost
        self._frames = FrameBuffer()
        self._pending: dict[int, asyncio.Future[Message]] = {}
        self._ids = itertools.count(1)
        self._transport: asyncio.Transport | None = None
        self.closed = False
        self.on_report: Callable[[Any], None] | None = None  # an NF instance's counters
        self.exit_reason = ""  # a command instance's last word: how its program ended

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
            if isinstance(msg, Report):
                if self.on_report is not None:
                    self.on_report(msg)
                continue
            if isinstance(msg, Exited):
                self.exit_reason = msg.reason
                continue
            fut = pending.pop(msg.id, None)
            if fut is not None and not fut.done():
                fut.set_result(msg)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(self.exit_reason or "worker closed its stream")

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

    def attach(self, fds: list[int]) -> None:
        """Send file descriptors to the worker (SCM_RIGHTS on an Attach frame).

        Written straight to the socket, beside the transport: call it only when nothing is
        queued in the transport (before a Load), so the frames stay in order."""
        transport = self._transport
        if self.closed or transport is None:
            raise WorkerDied("worker stream is closed")
        if transport.get_write_buffer_size():
            raise WorkerDied("cannot attach descriptors while frames are queued")
        raw = transport.get_extra_info("socket")
        # uvloop hands out a pseudo-socket without sendmsg: use a real one on a duplicate
        sock = socket.socket(fileno=os.dup(raw.fileno()))
        try:
            frame = encode(Attach(0, len(fds)))
            sent = sock.sendmsg([frame], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, _ints(fds))])
        finally:
            sock.close()
        if sent != len(frame):
            raise WorkerDied(f"attach frame cut short ({sent} of {len(frame)} bytes)")

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


def _ints(values: list[int]) -> bytes:
    import array

    return array.array("i", values).tobytes()


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
