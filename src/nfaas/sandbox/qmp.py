"""A minimal QEMU Machine Protocol client: enough to stop and continue a guest."""

from __future__ import annotations

import asyncio
import json
from typing import Any


class QmpError(Exception):
    pass


class Qmp:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._lock = asyncio.Lock()

    @classmethod
    async def connect(cls, path: str) -> Qmp:
        reader, writer = await asyncio.open_unix_connection(path)
        qmp = cls(reader, writer)
        await qmp._read_reply()  # the greeting
        await qmp.execute("qmp_capabilities")
        return qmp

    async def _read_reply(self) -> dict[str, Any]:
        while True:
            line = await self._reader.readline()
            if not line:
                raise QmpError("QMP connection closed")
            message: dict[str, Any] = json.loads(line)
            if "event" not in message:  # events arrive in between; we do not need them
                return message

    async def execute(self, command: str, **arguments: Any) -> Any:
        async with self._lock:
            request: dict[str, Any] = {"execute": command}
            if arguments:
                request["arguments"] = arguments
            self._writer.write(json.dumps(request).encode() + b"\n")
            await self._writer.drain()
            reply = await self._read_reply()
        if "error" in reply:
            raise QmpError(f"{command}: {reply['error'].get('desc', reply['error'])}")
        return reply.get("return")

    def close(self) -> None:
        self._writer.close()
