"""dcsCreate: the data collection store of each topic: a persisted topic ``dcs.<name>`` with
retention limits (MONITOR_STORE_MAX_AGE, MONITOR_STORE_MAX_BYTES), labelled with the
experiment and metric so that ``query`` finds it. An existing store is a success.
"""

from __future__ import annotations

from typing import Any

import mon


def create_store(api: Any, topic: Any) -> dict[str, Any]:
    outcome = api.create_topic(topic.store, api.store_settings(topic), "create-store")
    return {"store": topic.store, "outcome": outcome}


def handle(event: Any, context: Any) -> dict[str, Any]:
    return mon.per_topic(event, create_store)
