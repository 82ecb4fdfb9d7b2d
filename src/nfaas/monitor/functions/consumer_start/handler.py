"""Start collecting a topic: label it ``monitoring.collect=<namespace>``, which puts it under
the ``consumer`` function's ``topics:`` trigger (the platform starts delivering its records,
from the first one stored). dcm-create calls this asynchronously, as the original dcsCreate
started its Kafka consumer. Idempotent: a topic already labelled is left alone, and a topic
deleted meanwhile has nothing left to collect.
"""

from __future__ import annotations

from typing import Any

import mon


def start(api: Any, topic: Any) -> dict[str, Any]:
    found = api.topic(topic.name, "get-topic")
    if found is None:
        return {"outcome": "gone"}
    key, value = api.config.collect_label
    labels = dict(found.get("labels") or {})
    if labels.get(key) == value:
        return {"outcome": "collecting"}
    settings = mon.current_settings(found)
    settings["labels"] = {**labels, key: value}
    api.update_topic(topic.name, settings, "label-topic")
    return {"outcome": "started"}


def handle(event: Any, context: Any) -> dict[str, Any]:
    return mon.per_topic(event, start)
