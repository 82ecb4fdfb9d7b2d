"""dcsDelete: remove the data collection store of each topic (a missing store is a success)."""

from __future__ import annotations

from typing import Any

import mon


def delete_store(api: Any, topic: Any) -> dict[str, Any]:
    return {"store": topic.store, "outcome": api.delete_topic(topic.store, "delete-store")}


def handle(event: Any, context: Any) -> dict[str, Any]:
    return mon.per_topic(event, delete_store)
