"""dcmDelete: tear down monitoring for the topics of the request.

    fetch-topic -> dcs-delete -> delete-topic (only the ones that exist)

The store is removed even when the topic is already gone, so that a run interrupted between
the two steps is finished by the next one. Deleting the topic also ends its consumer (the
platform drops the trigger's binding). 200 when every topic is torn down, 502 naming the
failed step otherwise, 400 (nothing done) for a malformed name.

On a new instance's first chain, the later steps are woken as soon as the first step's request
is sent, so that their cold starts overlap it (mon.chain_wake; docs/monitoring.md, "Waking the
steps").
"""

from __future__ import annotations

from typing import Any

import mon

STEPS = ("fetch-topic", "dcs-delete", "delete-topic")  # in the order they are called


def handle(event: Any, context: Any) -> dict[str, Any]:
    start = mon.start_chain(event, STEPS)
    if isinstance(start, dict):
        return start
    api, wake, results, fetched = start.api, start.wake, start.results, start.fetched
    exists = {t.name for t in fetched if results[t.name]["steps"][-1].get("exists")}
    unstored = mon.chain_step(api, "dcs-delete", fetched, results, wake)
    doomed = []
    for topic in unstored:
        if topic.name in exists:
            doomed.append(topic)
        else:
            mon.skipped(results, topic, "delete-topic", "absent")
    mon.chain_step(api, "delete-topic", doomed, results, wake)
    return mon.report(list(results.values()))
