"""X-Callback-Url: the result of an async call POSTed to the caller's URL, durably.

The result is queued on the bus before the call is acknowledged, so a crash cannot lose it; a
callback that fails (connection refused, non-2xx) is retried with backoff and, when the
attempts are spent, recorded on the call (``callback_state: failed`` and the last error), never
silently dropped. The headers are OpenFaaS's: X-Call-Id, X-Duration-Seconds,
X-Function-Status, X-Function-Name, X-Start-Time.
"""

from __future__ import annotations

import logging

import httpx
import msgspec
from nats.aio.msg import Msg

from nfaas.core.delivery import Retry
from nfaas.events import calls as C
from nfaas.events.deliver import CallbackMessage

log = logging.getLogger("nfaas.events")
CALLBACK_RETRY = Retry(attempts=5, on_status=(), backoff=1.0, max_backoff=30.0)
CALLBACK_TIMEOUT = 10.0
_decode = msgspec.msgpack.Decoder(CallbackMessage).decode
_PASS = {"content-type"}


def callback_headers(job: CallbackMessage) -> dict[str, str]:
    headers = {k: v for k, v in job.headers if k.lower() in _PASS}
    headers.update(
        {
            "X-Call-Id": job.call_id,
            "X-Function-Name": job.function,
            "X-Function-Status": str(job.status),
            "X-Duration-Seconds": f"{job.duration:.6f}",
            "X-Start-Time": str(int(job.started * 1e9)),
        }
    )
    return headers


class CallbackSender:
    def __init__(self, store: C.CallStore, retry: Retry = CALLBACK_RETRY) -> None:
        self.store = store
        self.retry = retry
        self.client = httpx.AsyncClient(timeout=CALLBACK_TIMEOUT, follow_redirects=False)
        self.delivered = 0
        self.failed = 0

    async def close(self) -> None:
        await self.client.aclose()

    async def handle(self, msgs: list[Msg]) -> None:
        (msg,) = msgs
        job = _decode(msg.data)
        attempt = msg.metadata.num_delivered or 1
        error = ""
        try:
            answer = await self.client.post(
                job.url, content=job.body, headers=callback_headers(job)
            )
            if 200 <= answer.status_code < 300:
                await self._record(job, "delivered", attempt, "")
                self.delivered += 1
                await msg.ack()
                return
            error = f"callback answered HTTP {answer.status_code}"
        except httpx.HTTPError as exc:
            error = f"callback failed: {type(exc).__name__}: {exc}"
        if attempt < self.retry.attempts:
            await self._record(job, "pending", attempt, error)
            await msg.nak(delay=self.retry.delay(attempt))
            return
        log.warning("callback for call %s to %s gave up: %s", job.call_id, job.url, error)
        await self._record(job, "failed", attempt, error)
        self.failed += 1
        await msg.ack()

    async def _record(self, job: CallbackMessage, state: str, attempts: int, error: str) -> None:
        for _ in range(5):  # the dispatcher may be writing the same record: compare-and-set
            found = await self.store.get(job.call_id)
            if found is None:
                return
            record, revision = found
            record.callback_state = state
            record.callback_attempts = attempts
            record.callback_error = error
            try:
                await self.store.update(record, revision)
                return
            except C.Conflict:
                continue
