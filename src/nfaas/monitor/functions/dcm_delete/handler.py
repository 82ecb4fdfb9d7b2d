"""dcmDelete: tear down monitoring for the topics of the request.

    fetch-topic -> dcs-delete -> delete-topic (only the ones that exist)

The store is removed even when the topic is already gone, so that a run interrupted between
the two steps is finished by the next one. Deleting the topic also ends its consumer (the
platform drops the trigger's binding). 200 when every topic is torn down, 502 naming the
failed step otherwise, 400 (nothing done) for a malformed name.
"""

from __future__ import annotations

from typing import Any

import mon


def handle(event: Any, context: Any) -> dict[str, Any]:
    try:
        topics = mon.topics_from_request(event)
        api = mon.monitor()
    except mon.BadRequest as exc:
        return mon.respond(400, exc.body)
    except mon.StepFailed as exc:
        return mon.respond(500, exc.to_json())
    results = mon.chain_results(topics)
    fetched = mon.chain_step(api, "fetch-topic", topics, results)
    exists = {t.name for t in fetched if results[t.name]["steps"][-1].get("exists")}
    unstored = mon.chain_step(api, "dcs-delete", fetched, results)
    doomed = []
    for topic in unstored:
        if topic.name in exists:
            doomed.append(topic)
        else:
            mon.skipped(results, topic, "delete-topic", "absent")
    mon.chain_step(api, "delete-topic", doomed, results)
    return mon.report(list(results.values()))
