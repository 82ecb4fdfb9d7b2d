"""createKafkaTopic: create each topic of the request (a topic that exists is a success).

POST {"topics": [names]} -> 200 {"ok": true, "results": [{"topic", "ok", "outcome":
"created" | "exists"}]}; 400 for a malformed name; 502 naming the step when the platform fails.
"""

from __future__ import annotations

from typing import Any

import mon


def create(api: Any, topic: Any) -> dict[str, Any]:
    return {"outcome": api.create_topic(topic.name, api.topic_settings(topic), "create-topic")}


def handle(event: Any, context: Any) -> dict[str, Any]:
    return mon.per_topic(event, create)
