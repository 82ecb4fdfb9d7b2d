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
from nfaas.control.platform import DEFAULT_NAMESPACE, Platform
from nfaas.node.pool import CrashLooping, Overloaded
from nfaas.sandbox.base import HandlerError, InvokeTimeout, Request, WorkerDied

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
PREFIX = "/function/"
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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        accepted = time.monotonic()
        target, _, sub = scope["path"][len(PREFIX) :].partition("/")
        name, _, namespace = target.partition(".")
        headers: list[tuple[bytes, bytes]] = scope["headers"]
        principal, presented = self._principal(headers)
        if presented and principal is None:
            await _plain(send, 401, "invalid or revoked token", [(b"www-authenticate", b"Bearer")])
            return
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
                return
            if not principal.may_access(namespace):
                pool = None
        if pool is None:
            await _plain(send, 404, f"function {name!r} not found")
            return
        declared = 0
        str_headers: list[tuple[str, str]] = []
        for k, v in headers:
            if k == b"content-length":
                declared = int(v) if v.isdigit() else 0
            elif k == b"authorization":
                continue  # a platform token is never handed to function code
            str_headers.append((k.decode("latin-1"), v.decode("latin-1")))
        try:
            body = await _read_body(receive, pool.spec.limits.max_body, declared)
        except BodyTooLarge:
            self.metrics.observe_invocation(key, 413, time.monotonic() - accepted)
            await _plain(
                send, 413, f"request body exceeds max_body ({pool.spec.limits.max_body} bytes)"
            )
            return
        request = Request(
            scope["method"], "/" + sub, scope["query_string"].decode("latin-1"), str_headers, body
        )
        status = 500
        try:
            response, cold = await pool.invoke(request, accepted)
        except HandlerError as exc:
            await _plain(send, 500, f"function raised {exc.kind}: {exc.message}")
        except InvokeTimeout:
            status = 504
            await _plain(
                send, 504, f"function exceeded its timeout of {pool.spec.limits.timeout:g}s"
            )
        except WorkerDied as exc:
            status = 502
            await _plain(send, 502, f"function instance died during the request: {exc}")
        except Overloaded as exc:
            status = 429
            await _plain(
                send, 429, str(exc), [(b"retry-after", str(int(exc.retry_after)).encode())]
            )
        except CrashLooping as exc:
            retry = [(b"retry-after", str(max(1, int(exc.retry_after + 0.999))).encode())]
            if exc.load_error:
                await _plain(send, 500, f"function failed to load: {exc.reason}", retry)
            else:
                status = 503
                await _plain(send, 503, f"function is failing to start: {exc.reason}", retry)
        else:
            out = checked_headers(response.headers)
            if out is None or not 200 <= response.status <= 599:
                status = 502
                await _plain(send, 502, "function returned an invalid HTTP status or header")
            else:
                status = response.status
                elapsed = time.monotonic() - accepted
                out.append((b"x-duration-seconds", f"{elapsed:.6f}".encode()))
                if cold:
                    out.append((b"x-nfaas-cold-start", b"1"))
                await send({"type": "http.response.start", "status": status, "headers": out})
                await send({"type": "http.response.body", "body": response.body})
        self.metrics.observe_invocation(key, status, time.monotonic() - accepted)
