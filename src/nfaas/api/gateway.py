"""The invoke path: ``/function/{name}[.{namespace}][/sub/path]``, any method, as raw ASGI.

This is the hot path, so it bypasses the framework: parse, authorise, read the body within
``max_body``, hand the request to the function's pool, write the answer.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from nfaas.api.metrics import Metrics
from nfaas.control.auth import Principal
from nfaas.control.invoke import invoke_pool
from nfaas.control.platform import DEFAULT_NAMESPACE, Platform
from nfaas.events.calls import CallMessage
from nfaas.events.plane import ASYNC_RUNTIMES
from nfaas.events.queue import BadCallId, CallNotFound, CallStateConflict, new_call_id
from nfaas.node.logs import FunctionKey
from nfaas.node.pool import FunctionPool
from nfaas.sandbox.base import Request

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
PREFIX = "/function/"
ASYNC_PREFIX = "/async-function/"
TEXT = [(b"content-type", b"text/plain; charset=utf-8")]


class BodyTooLarge(Exception):
    pass


async def _read_body(receive: Receive, limit: int, declared: int) -> bytes:
    if declared > limit:
        raise BodyTooLarge
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        if chunk:
            size += len(chunk)
            if size > limit:
                raise BodyTooLarge
            chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def _plain(send: Send, status: int, text: str, extra: list[tuple[bytes, bytes]] = ()) -> None:  # type: ignore[assignment]
    body = text.encode()
    await send({"type": "http.response.start", "status": status, "headers": [*TEXT, *extra]})
    await send({"type": "http.response.body", "body": body})


# Framing is the gateway's business, not the function's.
HOP_BY_HOP = {"content-length", "transfer-encoding", "connection", "keep-alive", "upgrade"}
_TOKEN_CHARS = frozenset(
    b"!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
)


def checked_headers(headers: list[tuple[str, str]]) -> list[tuple[bytes, bytes]] | None:
    """The function's response headers as bytes, or None if any is not valid HTTP."""
    out = []
    for name, value in headers:
        if name.lower() in HOP_BY_HOP:
            continue
        try:
            raw_name, raw_value = name.encode("ascii"), value.encode("latin-1")
        except UnicodeEncodeError:
            return None
        if (
            not raw_name
            or not set(raw_name) <= _TOKEN_CHARS
            or b"\r" in raw_value
            or b"\n" in raw_value
        ):
            return None
        out.append((raw_name.lower(), raw_value))
    return out


class Gateway:
    def __init__(self, platform: Platform, metrics: Metrics) -> None:
        self.platform = platform
        self.metrics = metrics

    def _principal(self, headers: list[tuple[bytes, bytes]]) -> tuple[Principal | None, bool]:
        """(principal, presented): a presented token that does not verify is a 401."""
        for name, value in headers:
            if name == b"authorization":
                scheme, _, token = value.decode("latin-1").partition(" ")
                if scheme.lower() != "bearer" or not token:
                    return None, True
                return self.platform.tokens.verify(token.strip()), True
        return None, False

    async def _target(
        self, scope: Scope, prefix: str, send: Send
    ) -> tuple[Principal | None, FunctionKey, FunctionPool, str] | None:
        """Who asks, for which function, and the sub-path; None once an error was sent."""
        target, _, sub = scope["path"][len(prefix) :].partition("/")
        name, _, namespace = target.partition(".")
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        principal, presented = self._principal(headers)
        if presented and principal is None:
            await _plain(send, 401, "invalid or revoked token", [(b"www-authenticate", b"Bearer")])
            return None
        if not namespace:
            namespace = (
                principal.namespace if principal and not principal.is_admin else DEFAULT_NAMESPACE
            )
        key = (namespace, name)
        pool = self.platform.agent.pools.get(key)
        if pool is not None and not pool.spec.public:
            if principal is None:
                await _plain(
                    send,
                    401,
                    "this function needs a bearer token",
                    [(b"www-authenticate", b"Bearer")],
                )
                return None
            if not principal.may_access(namespace):
                pool = None
        if pool is None:
            await _plain(send, 404, f"function {name!r} not found")
            return None
        return principal, key, pool, sub

    async def _request(
        self, scope: Scope, receive: Receive, send: Send, pool: FunctionPool, sub: str
    ) -> Request | None:
        """The request as the function will see it; None once a 413 was sent."""
        declared = 0
        str_headers: list[tuple[str, str]] = []
        for k, v in scope["headers"]:
            if k == b"content-length":
                declared = int(v) if v.isdigit() else 0
            elif k == b"authorization":
                continue  # a platform token is never handed to function code
            str_headers.append((k.decode("latin-1"), v.decode("latin-1")))
        try:
            body = await _read_body(receive, pool.spec.limits.max_body, declared)
        except BodyTooLarge:
            await _plain(
                send, 413, f"request body exceeds max_body ({pool.spec.limits.max_body} bytes)"
            )
            return None
        return Request(
            scope["method"], "/" + sub, scope["query_string"].decode("latin-1"), str_headers, body
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["path"].startswith(ASYNC_PREFIX):
            await self.asynchronous(scope, receive, send)
            return
        accepted = time.monotonic()
        found = await self._target(scope, PREFIX, send)
        if found is None:
            return
        _, key, pool, sub = found
        request = await self._request(scope, receive, send, pool, sub)
        if request is None:
            self.metrics.observe_invocation(key, 413, time.monotonic() - accepted)
            return
        outcome = await invoke_pool(pool, request, accepted)
        status = outcome.status
        if outcome.error:
            extra = [(k.encode(), v.encode()) for k, v in outcome.headers]
            await _plain(send, status, outcome.error, extra)
        else:
            out = checked_headers(outcome.headers)
            if out is None or not 200 <= status <= 599:
                status = 502
                await _plain(send, 502, "function returned an invalid HTTP status or header")
            else:
                elapsed = time.monotonic() - accepted
                out.append((b"x-duration-seconds", f"{elapsed:.6f}".encode()))
                if outcome.cold:
                    out.append((b"x-nfaas-cold-start", b"1"))
                await send({"type": "http.response.start", "status": status, "headers": out})
                await send({"type": "http.response.body", "body": outcome.body})
        self.metrics.observe_invocation(key, status, time.monotonic() - accepted)

    # -- async ---------------------------------------------------------------------------
    async def asynchronous(self, scope: Scope, receive: Receive, send: Send) -> None:
        """POST /async-function/{name}: 202 + X-Call-Id once the call is stored durably.
        DELETE /async-function/{call-id}: cancel a call that has not started."""
        if scope["method"] == "DELETE" and "/" not in scope["path"][len(ASYNC_PREFIX) :]:
            await self._cancel(scope, send)
            return
        if scope["method"] != "POST":
            await _plain(
                send,
                405,
                "use POST to queue a call (DELETE /async-function/{call-id} cancels one)",
                [(b"allow", b"POST, DELETE")],
            )
            return
        found = await self._target(scope, ASYNC_PREFIX, send)
        if found is None:
            return
        _, key, pool, sub = found
        if pool.spec.runtime not in ASYNC_RUNTIMES:
            await _plain(send, 400, f"a {pool.spec.runtime} function has no handler to call")
            return
        request = await self._request(scope, receive, send, pool, sub)
        if request is None:
            return
        wanted = {k.lower(): v for k, v in request.headers}
        callback = wanted.get("x-callback-url", "")
        if callback and not _http_url(callback):
            await _plain(send, 400, f"X-Callback-Url {callback!r} is not an http(s) URL")
            return
        call_id = wanted.get("x-call-id") or new_call_id()
        message = CallMessage(
            id=call_id,
            namespace=key[0],
            function=key[1],
            method=request.method,
            path=request.path,
            query=request.query,
            headers=[(k, v) for k, v in request.headers if k.lower() not in _NOT_QUEUED],
            body=request.body,
            callback=callback,
            accepted=time.time(),
        )
        try:
            await self.platform.events.calls.accept(message)
        except BadCallId as exc:
            await _plain(send, 400, str(exc))
            return
        except Exception as exc:
            await _plain(
                send,
                503,
                f"call not queued, the bus is unavailable: {exc}",
                [(b"retry-after", b"1")],
            )
            return
        await send(
            {
                "type": "http.response.start",
                "status": 202,
                "headers": [*TEXT, (b"content-length", b"0"), (b"x-call-id", call_id.encode())],
            }
        )
        await send({"type": "http.response.body", "body": b""})

    async def _cancel(self, scope: Scope, send: Send) -> None:
        call_id = scope["path"][len(ASYNC_PREFIX) :]
        principal, _ = self._principal(scope["headers"])
        if principal is None:
            await _plain(
                send,
                401,
                "cancelling a call needs a bearer token",
                [(b"www-authenticate", b"Bearer")],
            )
            return
        visible = None if principal.is_admin else {principal.namespace}
        try:
            record = await self.platform.events.calls.cancel(call_id, visible)
        except CallNotFound:
            await _plain(send, 404, f"call {call_id!r} not found")
            return
        except CallStateConflict as exc:
            await _plain(send, 409, str(exc))
            return
        await _plain(send, 200, f"call {record.id} cancelled")


_NOT_QUEUED = {"x-callback-url", "content-length", "host", "connection"}


def _http_url(url: str) -> bool:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname)
