"""fetchKafkaTopic: whether each topic of the request exists.

POST {"topics": [names]} -> 200 {"ok": true, "results": [{"topic", "ok", "exists",
"messages"}]}; 400 for a malformed name; 502 naming the step when the platform fails.
"""

from __future__ import annotations

from typing import Any

import mon


def fetch(api: Any, topic: Any) -> dict[str, Any]:
    found = api.topic(topic.name, "get-topic")
    return {
        "exists": found is not None,
        "messages": found["state"]["messages"] if found else 0,
    }


def handle(event: Any, context: Any) -> dict[str, Any]:
    return mon.per_topic(event, fetch)
