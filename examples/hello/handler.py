"""hello: the smallest useful function.

POST (or GET) a name as the request body and get ``Hello, <name>!`` back as text/plain;
an empty body greets the world.
"""

from __future__ import annotations

import json

_TEXT = {"content-type": "text/plain; charset=utf-8"}


def handle(event, context):
    body = getattr(event, "body", None) or b""
    if isinstance(body, str):
        text = body
    else:
        try:
            text = bytes(body).decode("utf-8")
        except (TypeError, UnicodeDecodeError):
            return {
                "statusCode": 400,
                "body": json.dumps({"error": "body must be UTF-8 text", "field": "body"}),
                "headers": {"content-type": "application/json"},
            }
    name = text.strip() or "world"
    return {"statusCode": 200, "body": f"Hello, {name}!", "headers": dict(_TEXT)}
