"""deleteKafkaTopic: delete each topic of the request (a missing topic is a success).

POST {"topics": [names]} -> 200 {"ok": true, "results": [{"topic", "ok", "outcome":
"deleted" | "absent"}]}; 400 for a malformed name; 502 naming the step when the platform fails.
"""

from __future__ import annotations

from typing import Any

import mon


def delete(api: Any, topic: Any) -> dict[str, Any]:
    return {"outcome": api.delete_topic(topic.name, "delete-topic")}


def handle(event: Any, context: Any) -> dict[str, Any]:
    return mon.per_topic(event, delete)
