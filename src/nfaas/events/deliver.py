"""Running queued work: one async call, or one (batch of) trigger message(s), with retries.

At-least-once: a message is acknowledged only after its outcome is recorded. A failed attempt
whose status the function's retry policy names is negatively acknowledged with the backoff
delay (the server redelivers it then); when the attempts are spent, or the status is not
retryable, the call goes to the dead letters. A call redelivered after a crash finds its record
and is not run again once it has finished; handlers get ``X-Call-Id`` to deduplicate the window
between their side effect and our record.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import msgspec
from nats.aio.msg import Msg

from nfaas.core.delivery import Retry
from nfaas.events import calls as C
from nfaas.events import names
from nfaas.events.bus import Bus
from nfaas.events.consumer import in_progress
from nfaas.events.outcome import Invoker, Outcome
from nfaas.node.logs import FunctionKey
from nfaas.sandbox.base import Request

log = logging.getLogger("nfaas.events")


@dataclass
class Counters:
    """What happened to one function's deliveries of one kind (async calls or trigger messages)."""

    accepted: int = 0  # calls stored (async calls only)
    succeeded: int = 0
    retried: int = 0
    dead: int = 0
    skipped: int = 0  # redelivered after it had finished: not run again


class CallbackMessage(msgspec.Struct, frozen=True):
    call_id: str
    namespace: str
    function: str
    url: str
    status: int
    body: bytes
    headers: list[tuple[str, str]]
    duration: float
    started: float


def _request(message: C.CallMessage, attempt: int) -> Request:
    headers = [(k, v) for k, v in message.headers if k.lower() not in _OURS]
    headers += [
        ("X-Call-Id", message.id),
        ("X-Nfaas-Attempt", str(attempt)),
        ("X-Nfaas-Source", message.source),
    ]
    return Request(message.method, message.path, message.query, headers, message.body)


_OURS = {"x-call-id", "x-nfaas-attempt", "x-nfaas-source"}


class Deliverer:
    """Runs deliveries for every function; the per-function policy comes from ``spec_of``."""

    def __init__(self, bus: Bus, invoke: Invoker, retry_of: Callable[[FunctionKey], Retry]):
        self.bus = bus
        self.invoke = invoke
        self.retry_of = retry_of
        self.store = C.CallStore(bus.calls_kv)
        self.counters: dict[tuple[FunctionKey, str], Counters] = {}  # kind: "call", "trigger"

    def count(self, key: FunctionKey, kind: str = "call") -> Counters:
        return self.counters.setdefault((key, kind), Counters())

    def totals(self, key: FunctionKey) -> Counters:
        """A function's counters over both kinds."""
        out = Counters()
        for kind in ("call", "trigger"):
            found = self.counters.get((key, kind))
            if found is not None:
                for field in dataclasses.fields(Counters):
                    value = getattr(out, field.name) + getattr(found, field.name)
                    setattr(out, field.name, value)
        return out

    # -- async calls ---------------------------------------------------------------------
    async def call(self, msgs: list[Msg]) -> None:
        (msg,) = msgs
        try:
            message = C.decode_message(msg.data)
        except msgspec.DecodeError as exc:
            # only the platform publishes here; whatever this is, retrying cannot help
            log.error("dropping an undecodable message on %s: %s", msg.subject, exc)
            await msg.term()
            return
        key = (message.namespace, message.function)
        record, revision = await self._record_of(message)
        if record.state in C.FINAL:
            # finished before a crash took the acknowledgement with it: do not run it again
            self.count(key).skipped += 1
            if record.state != C.CANCELLED and record.callback_state == "pending":
                await self._queue_callback(record)
            await msg.ack()
            return
        record.attempts += 1
        record.state = C.RUNNING
        record.started = time.time()
        try:
            revision = await self.store.update(record, revision)
        except C.Conflict:
            latest = await self.store.get(message.id)
            if latest is not None and latest[0].state == C.CANCELLED:
                await msg.ack()
            return  # someone else moved it on; the server redelivers it if it still waits
        async with in_progress([msg]):
            outcome = await self._invoke(key, _request(message, record.attempts))
        await self._settle(msg, message, record, outcome)

    async def _record_of(self, message: C.CallMessage) -> tuple[C.CallRecord, int]:
        """The call's record and revision, made now if this is its first delivery."""
        while True:
            found = await self.store.get(message.id)
            if found is not None:
                return found
            record = C.CallRecord.for_message(message)
            try:
                return record, await self.store.create(record)
            except C.Conflict:
                continue  # made meanwhile (a cancel): read it

    async def _invoke(self, key: FunctionKey, request: Request) -> Outcome:
        try:
            return await self.invoke(key, request)
        except LookupError:
            return Outcome(404, error=f"function {key[1]!r} no longer exists")

    async def _settle(
        self, msg: Msg, message: C.CallMessage, record: C.CallRecord, outcome: Outcome
    ) -> None:
        key = (message.namespace, message.function)
        retry = self.retry_of(key)
        record.status = outcome.status
        record.finished = time.time()
        record.duration = record.finished - record.started
        record.error = outcome.error
        if outcome.ok:
            record.state = C.SUCCEEDED
            record.result = outcome.body[: C.RESULT_KEEP]
            record.result_headers = outcome.headers
            await self.store.put(record)
            self.count(key).succeeded += 1
            await self._queue_callback(record, outcome)
            await msg.ack()
            return
        if retry.retryable(outcome.status) and record.attempts < retry.attempts:
            delay = retry.delay(record.attempts, outcome.retry_after)
            record.state = C.RETRYING
            record.next_attempt = time.time() + delay
            await self.store.put(record)
            self.count(key).retried += 1
            await msg.nak(delay=delay)
            return
        record.state = C.DEAD
        record.result = (outcome.body or outcome.error.encode())[: C.RESULT_KEEP]
        await self.dead_letter(message, f"{outcome.status} {outcome.error}".strip())
        await self.store.put(record)
        self.count(key).dead += 1
        await self._queue_callback(record, outcome)
        await msg.ack()

    async def dead_letter(self, message: C.CallMessage, reason: str) -> None:
        key = (message.namespace, message.function)
        await self.bus.js.publish(
            names.dead_subject(key, message.id),
            C.encode(message),
            headers={"Nats-Msg-Id": f"dead-{message.id}-{int(time.time())}", "Reason": reason},
        )

    async def _queue_callback(self, record: C.CallRecord, outcome: Outcome | None = None) -> None:
        if not record.callback:
            return
        body = outcome.body if outcome is not None else record.result
        if outcome is not None and outcome.error:
            body = outcome.error.encode()
        headers = outcome.headers if outcome is not None else record.result_headers
        job = CallbackMessage(
            call_id=record.id,
            namespace=record.namespace,
            function=record.function,
            url=record.callback,
            status=record.status,
            body=body,
            headers=headers,
            duration=record.duration,
            started=record.started,
        )
        await self.bus.js.publish(
            names.callback_subject((record.namespace, record.function), record.id),
            msgspec.msgpack.encode(job),
            headers={"Nats-Msg-Id": f"cb-{record.id}-{record.replays}"},
        )

    # -- trigger messages ----------------------------------------------------------------
    async def trigger(
        self, key: FunctionKey, source: str, msgs: list[Msg], batched: bool = False
    ) -> None:
        message = trigger_call(key, source, msgs, batched)
        attempt = max(m.metadata.num_delivered or 1 for m in msgs)
        async with in_progress(msgs):
            outcome = await self._invoke(key, _request(message, attempt))
        if outcome.ok:
            self.count(key, "trigger").succeeded += 1
            for msg in msgs:
                await msg.ack()
            return
        retry = self.retry_of(key)
        if retry.retryable(outcome.status) and attempt < retry.attempts:
            self.count(key, "trigger").retried += 1
            delay = retry.delay(attempt, outcome.retry_after)
            for msg in msgs:
                await msg.nak(delay=delay)
            return
        # poison: record it where `nfaas calls` finds it, then let the stream move on
        record = C.CallRecord.for_message(message)
        record.state, record.attempts, record.status = C.DEAD, attempt, outcome.status
        record.error = outcome.error
        record.finished = time.time()
        record.result = (outcome.body or outcome.error.encode())[: C.RESULT_KEEP]
        await self.dead_letter(message, f"{outcome.status} {outcome.error}".strip())
        await self.store.put(record)
        self.count(key, "trigger").dead += 1
        for msg in msgs:
            await msg.term()


def trigger_call(
    key: FunctionKey, source: str, msgs: list[Msg], batched: bool = False
) -> C.CallMessage:
    """The invocation a trigger delivery makes: one message as the body, or (for a batched
    trigger, even when only one message came) a JSON batch."""
    first = msgs[0]
    meta = first.metadata
    # unique per function and message: two functions failing on one message are two calls
    tag = hashlib.sha256(f"{key[0]}\0{key[1]}\0{meta.stream}".encode()).hexdigest()[:10]
    call_id = f"{_safe(key[1])[:40]}-{tag}-{meta.sequence.stream}"
    if not batched:
        headers = [(k, v) for k, v in (first.headers or {}).items() if not k.startswith("Nats-")]
        headers += [
            ("X-Nfaas-Subject", first.subject),
            ("X-Nfaas-Stream", meta.stream),
            ("X-Nfaas-Sequence", str(meta.sequence.stream)),
        ]
        body = first.data
    else:
        headers = [("Content-Type", "application/json"), ("X-Nfaas-Batch", str(len(msgs)))]
        body = json.dumps({"messages": [_message_json(m) for m in msgs]}).encode()
    return C.CallMessage(
        id=call_id,
        namespace=key[0],
        function=key[1],
        headers=headers,
        body=body,
        accepted=time.time(),
        source=source,
    )


def _message_json(msg: Msg) -> dict[str, object]:
    try:
        data: dict[str, object] = {"data": msg.data.decode("utf-8"), "encoding": "utf-8"}
    except UnicodeDecodeError:
        data = {"data": base64.b64encode(msg.data).decode(), "encoding": "base64"}
    return {
        "subject": msg.subject,
        "sequence": msg.metadata.sequence.stream,
        **data,
        "headers": {k: v for k, v in (msg.headers or {}).items() if not k.startswith("Nats-")},
    }


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "_" for c in text)
