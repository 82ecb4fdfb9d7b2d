"""The async call queue: accept (durably), cancel, list, show and replay calls.

``accept`` returns only after JetStream has acknowledged the stored call, so the 202 the
gateway sends means the call survives a crash of nfaas or of nats-server. The call id is the
message's ``Nats-Msg-Id``: a client that re-sends its accept with the same ``X-Call-Id``
within the duplicate window gets one call, not two.
"""

from __future__ import annotations

import contextlib
import re
import time
import uuid

from nats.js.errors import NotFoundError

from nfaas.events import calls as C
from nfaas.events import names
from nfaas.events.bus import Bus
from nfaas.events.deliver import Deliverer
from nfaas.node.logs import FunctionKey

CALL_ID_RE = re.compile(r"^[A-Za-z0-9_-]{1,100}$")


class CallNotFound(LookupError):
    pass


class CallStateConflict(Exception):
    """The call is not in a state that allows this (e.g. cancel a running call) (409)."""


class BadCallId(ValueError):
    pass


def new_call_id() -> str:
    return uuid.uuid4().hex


class AsyncCalls:
    def __init__(self, bus: Bus, deliverer: Deliverer) -> None:
        self.bus = bus
        self.deliverer = deliverer
        self.store = deliverer.store
        self.accepted = 0

    async def accept(self, message: C.CallMessage) -> int:
        """Store the call; returns its stream sequence once the server has it on disk."""
        if not CALL_ID_RE.match(message.id):
            raise BadCallId(f"call id {message.id!r}: use 1-100 letters, digits, '-' or '_'")
        key = (message.namespace, message.function)
        ack = await self.bus.js.publish(
            names.call_subject(key, message.id),
            C.encode(message),
            headers={"Nats-Msg-Id": message.id},
        )
        self.accepted += 1
        if not ack.duplicate:
            self.deliverer.count(key).accepted += 1
        return int(ack.seq)

    async def queued_message(self, key: FunctionKey, call_id: str) -> tuple[C.CallMessage, int]:
        try:
            raw = await self.bus.js.get_last_msg(
                names.CALLS_STREAM, names.call_subject(key, call_id)
            )
        except NotFoundError:
            raise CallNotFound(call_id) from None
        assert raw.data is not None and raw.seq is not None
        return C.decode_message(raw.data), raw.seq

    async def cancel(self, call_id: str, visible: set[str] | None = None) -> C.CallRecord:
        """Cancel a call still waiting (queued, or between retries). ``visible``: namespaces
        the caller may see (None: all)."""
        message, seq, _ = await self._find_waiting(call_id, visible)
        found = await self.store.get(call_id)
        if found is None:
            record = C.CallRecord.for_message(message)
            record.state = C.CANCELLED
            record.finished = time.time()
            try:
                await self.store.create(record)
            except C.Conflict:
                raise CallStateConflict(f"call {call_id} has just started") from None
        else:
            record, revision = found
            if record.state not in (C.QUEUED, C.RETRYING):
                raise CallStateConflict(f"call {call_id} is {record.state}; it cannot be cancelled")
            record.state = C.CANCELLED
            record.finished = time.time()
            try:
                await self.store.update(record, revision)
            except C.Conflict:
                raise CallStateConflict(f"call {call_id} has just started") from None
        # delivered meanwhile: the dispatcher sees "cancelled" and drops it
        with contextlib.suppress(NotFoundError):
            await self.bus.js.delete_msg(names.CALLS_STREAM, seq)
        return record

    async def _find_waiting(
        self, call_id: str, visible: set[str] | None
    ) -> tuple[C.CallMessage, int, FunctionKey]:
        if not CALL_ID_RE.match(call_id):
            raise CallNotFound(call_id)
        try:
            raw = await self.bus.js.get_last_msg(names.CALLS_STREAM, f"nfaas.calls.*.*.{call_id}")
        except NotFoundError:
            found = await self.store.get(call_id)
            if found is not None and (visible is None or found[0].namespace in visible):
                raise CallStateConflict(
                    f"call {call_id} is {found[0].state}; it cannot be cancelled"
                ) from None
            raise CallNotFound(call_id) from None
        assert raw.data is not None and raw.seq is not None and raw.subject is not None
        key, _ = names.key_from_subject(raw.subject)
        if visible is not None and key[0] not in visible:
            raise CallNotFound(call_id)
        return C.decode_message(raw.data), raw.seq, key

    async def show(self, call_id: str, visible: set[str] | None = None) -> C.CallRecord:
        if not CALL_ID_RE.match(call_id):
            raise CallNotFound(call_id)
        found = await self.store.get(call_id)
        if found is not None:
            record = found[0]
        else:
            message, _, _ = await self._find_waiting(call_id, visible)
            record = C.CallRecord.for_message(message)
        if visible is not None and record.namespace not in visible:
            raise CallNotFound(call_id)
        return record

    async def list(
        self,
        visible: set[str] | None = None,
        function: FunctionKey | None = None,
        state: str | None = None,
        limit: int = 100,
    ) -> list[C.CallRecord]:
        records = await self.store.all()
        out = [
            r
            for r in records
            if (visible is None or r.namespace in visible)
            and (function is None or (r.namespace, r.function) == function)
            and (state is None or r.state == state)
        ]
        out.sort(key=lambda r: r.accepted, reverse=True)
        return out[:limit]

    async def replay(self, call_id: str, visible: set[str] | None = None) -> C.CallRecord:
        """Queue a dead call again, with a fresh attempt budget and the same call id."""
        record = await self.show(call_id, visible)
        if record.state != C.DEAD:
            raise CallStateConflict(f"call {call_id} is {record.state}; only dead calls replay")
        key = (record.namespace, record.function)
        try:
            raw = await self.bus.js.get_last_msg(
                names.DEAD_STREAM, names.dead_subject(key, call_id)
            )
        except NotFoundError:
            raise CallStateConflict(
                f"call {call_id}: its dead letter has expired; nothing to replay"
            ) from None
        assert raw.data is not None
        message = C.decode_message(raw.data)
        record.state = C.QUEUED
        record.attempts = 0
        record.replays += 1
        record.error = ""
        record.callback_state = "pending" if record.callback else ""
        await self.store.put(record)
        await self.bus.js.publish(
            names.call_subject(key, call_id),
            C.encode(message),
            headers={"Nats-Msg-Id": f"{call_id}-replay-{record.replays}"},
        )
        return record
