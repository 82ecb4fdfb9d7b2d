"""dcmCreate: set up monitoring for the topics of the request.

    fetch-topic -> create-topic (only the missing ones) -> dcs-create -> consumer-start (async)

Each step is one call for all the topics still going; a topic that fails a step is reported
with that step and the status it got, and goes no further; the others carry on. Running it
again converges on the same state (every step is idempotent). 200 when every topic is set up,
502 otherwise, 400 (nothing done) for a malformed name.

On a new instance's first chain, the later steps are woken as soon as the first step's request
is sent, so that their cold starts overlap it (mon.chain_wake; docs/monitoring.md, "Waking the
steps").
"""

from __future__ import annotations

from typing import Any

import mon

# The steps, in the order they are called (what mon.chain_wake wakes). Not consumer-start:
# the chain does not wait for it (202), and the platform's async call starts it anyway.
STEPS = ("fetch-topic", "create-topic", "dcs-create")


def handle(event: Any, context: Any) -> dict[str, Any]:
    start = mon.start_chain(event, STEPS)
    if isinstance(start, dict):
        return start
    api, wake, results, fetched = start.api, start.wake, start.results, start.fetched
    missing = []
    for topic in fetched:
        if results[topic.name]["steps"][-1].get("exists"):
            mon.skipped(results, topic, "create-topic", "exists")
        else:
            missing.append(topic)
    created = mon.chain_step(api, "create-topic", missing, results, wake)
    ready = [t for t in fetched if t not in missing or t in created]
    stored = mon.chain_step(api, "dcs-create", ready, results, wake)
    if stored:
        try:
            call_id = api.call_async(
                "consumer-start", {"topics": [t.name for t in stored]}, "consumer-start"
            )
        except mon.StepFailed as exc:
            for topic in stored:
                results[topic.name]["steps"].append(
                    {"step": "consumer-start", "status": exc.status}
                )
                results[topic.name].update(ok=False, **exc.to_json())
        else:
            for topic in stored:
                results[topic.name]["steps"].append(
                    {"step": "consumer-start", "status": 202, "call_id": call_id}
                )
    return mon.report(list(results.values()))
