"""OpenFaaS python3-http semantics: the event and context a handler sees, and its return value."""

from __future__ import annotations

import json
import sys
from typing import Any
from urllib.parse import parse_qsl


class Event:
    """What ``handle(event, context)`` receives."""

    __slots__ = ("body", "headers", "method", "path", "query")

    def __init__(
        self, body: bytes, headers: dict[str, str], method: str, query: dict[str, str], path: str
    ) -> None:
        self.body = body
        self.headers = headers
        self.method = method
        self.query = query
        self.path = path


class Context:
    """Who is running: the function, its namespace and instance, and its environment."""

    __slots__ = ("env", "function_name", "graph", "instance_id", "namespace")

    def __init__(
        self, function_name: str, namespace: str, instance_id: str, env: dict[str, str]
    ) -> None:
        self.function_name = function_name
        self.namespace = namespace
        self.instance_id = instance_id
        self.env = env
        self.graph: Any = None  # runtime nf: the running Graph (its counters, operators)

    def log(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)


def make_event(
    method: str, path: str, query: str, headers: list[tuple[str, str]], body: bytes
) -> Event:
    return Event(
        body=body,
        headers={k.lower(): v for k, v in headers},
        method=method,
        query=dict(parse_qsl(query, keep_blank_values=True)),
        path=path,
    )


TEXT = "text/plain; charset=utf-8"
JSON = "application/json"
BINARY = "application/octet-stream"


def _body_bytes(body: Any) -> tuple[bytes, str]:
    if body is None:
        return b"", TEXT
    if isinstance(body, bytes | bytearray | memoryview):
        return bytes(body), BINARY
    if isinstance(body, str):
        return body.encode(), TEXT
    return json.dumps(body, separators=(",", ":")).encode(), JSON


def to_response(value: Any) -> tuple[int, list[tuple[str, str]], bytes]:
    """(status, headers, body) from whatever the handler returned.

    A dict with ``statusCode`` is a full response; anything else is the body: str as text,
    bytes as binary, other values as JSON.
    """
    if isinstance(value, dict) and "statusCode" in value:
        status = int(value["statusCode"])
        body, content_type = _body_bytes(value.get("body"))
        headers = [(str(k), str(v)) for k, v in (value.get("headers") or {}).items()]
        if not any(k.lower() == "content-type" for k, _ in headers):
            headers.append(("content-type", content_type))
        return status, headers, body
    body, content_type = _body_bytes(value)
    return 200, [("content-type", content_type)], body
