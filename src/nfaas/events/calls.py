"""Async calls: what is queued (CallMessage) and what is known about each (CallRecord).

A call's record lives in a JetStream key-value bucket keyed by call id. Its state changes only
by compare-and-set on the entry's revision, so a cancel and a dispatch racing for the same
queued call cannot both win, and a call redelivered after a crash sees whether it already ran.
"""

from __future__ import annotations

import time
from collections.abc import Iterable

import msgspec
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NoKeysError, NotFoundError
from nats.js.kv import KeyValue

QUEUED, RUNNING, RETRYING = "queued", "running", "retrying"
SUCCEEDED, DEAD, CANCELLED = "succeeded", "dead", "cancelled"
FINAL = (SUCCEEDED, DEAD, CANCELLED)
RESULT_KEEP = 64 * 1024  # bytes of a result kept for `nfaas calls show`


class CallMessage(msgspec.Struct, frozen=True):
    """An invocation waiting in a queue: everything needed to run it later."""

    id: str
    namespace: str
    function: str
    method: str = "POST"
    path: str = "/"
    query: str = ""
    headers: list[tuple[str, str]] = []
    body: bytes = b""
    callback: str = ""
    accepted: float = 0.0  # epoch seconds
    source: str = "http"  # http | cron | nats | mqtt | topic | replay


class CallRecord(msgspec.Struct):
    id: str
    namespace: str
    function: str
    state: str = QUEUED
    source: str = "http"
    attempts: int = 0
    accepted: float = 0.0
    started: float = 0.0
    finished: float = 0.0
    status: int = 0
    duration: float = 0.0
    error: str = ""
    next_attempt: float = 0.0
    result: bytes = b""
    result_headers: list[tuple[str, str]] = []
    callback: str = ""
    callback_state: str = ""  # pending | delivered | failed
    callback_attempts: int = 0
    callback_error: str = ""
    replays: int = 0

    @classmethod
    def for_message(cls, message: CallMessage) -> CallRecord:
        return cls(
            id=message.id,
            namespace=message.namespace,
            function=message.function,
            source=message.source,
            accepted=message.accepted,
            callback=message.callback,
            callback_state="pending" if message.callback else "",
        )

    def to_dict(self) -> dict[str, object]:
        data: dict[str, object] = msgspec.to_builtins(self)
        result = self.result
        data["result"] = result.decode("utf-8", "replace") if result else ""
        return data


_encode = msgspec.msgpack.Encoder().encode
_decode_record = msgspec.msgpack.Decoder(CallRecord).decode
_decode_message = msgspec.msgpack.Decoder(CallMessage).decode


def encode(item: CallMessage | CallRecord) -> bytes:
    return _encode(item)


def decode_message(data: bytes) -> CallMessage:
    return _decode_message(data)


class Conflict(Exception):
    """The record changed since it was read (someone else moved the call on)."""


class CallStore:
    def __init__(self, kv: KeyValue) -> None:
        self.kv = kv

    async def get(self, call_id: str) -> tuple[CallRecord, int] | None:
        try:
            entry = await self.kv.get(call_id)
        except (KeyNotFoundError, NotFoundError):
            return None
        if entry.value is None:
            return None
        return _decode_record(entry.value), entry.revision or 0

    async def create(self, record: CallRecord) -> int:
        try:
            return await self.kv.create(record.id, _encode(record))
        except KeyWrongLastSequenceError:
            raise Conflict(record.id) from None

    async def update(self, record: CallRecord, revision: int) -> int:
        try:
            return await self.kv.update(record.id, _encode(record), last=revision)
        except KeyWrongLastSequenceError:
            raise Conflict(record.id) from None

    async def put(self, record: CallRecord) -> int:
        return await self.kv.put(record.id, _encode(record))

    async def all(self) -> list[CallRecord]:
        try:
            keys: Iterable[str] = await self.kv.keys()
        except NoKeysError:
            return []
        out = []
        for key in keys:
            found = await self.get(key)
            if found is not None:
                out.append(found[0])
        return out


def now() -> float:
    return time.time()
