"""kafkaConsumer: every record of every collected topic into its store, and the experiment's
dashboard when its first record arrives.

The platform invokes this through the ``topics: {monitoring.collect: <namespace>}`` trigger,
with a batch (``{"messages": [...]}``, header X-Nfaas-Batch) or a single message (the body,
headers X-Nfaas-Subject / X-Nfaas-Sequence). Every record of the delivery is stored; a
delivery is acknowledged only after a 2xx, so a failure (502 naming the step) brings the whole
delivery back, and each record's message id (``<topic>:<sequence>``) keeps the store from
holding it twice.

The dashboard is made exactly once per experiment, even when two instances see the
experiment's first records at the same time or a delivery comes back: the dashboards topic
keeps one message per experiment subject, it is read before writing, and the write carries
the message id ``dashboard-<expId>``, which the platform deduplicates.
"""

from __future__ import annotations

import base64
import json
from typing import Any

import mon

# experiments whose dashboard this instance has seen: no read for them on every batch
_known: set[str] = set()


class Record:
    __slots__ = ("data", "sequence", "subject")

    def __init__(self, subject: str, sequence: int, data: bytes) -> None:
        self.subject = subject
        self.sequence = sequence
        self.data = data


def records_of(event: Any) -> list[Record]:
    """The records of one delivery: a batch, or one message."""
    headers = event.headers
    if "x-nfaas-batch" in headers:
        batch = mon.request_json(event)
        messages = batch.get("messages") if isinstance(batch, dict) else None
        if not isinstance(messages, list):
            raise mon.BadRequest({"error": 'a batch must be {"messages": [...]}'})
        out = []
        for index, message in enumerate(messages):
            try:
                raw = message["data"]
                data = (
                    base64.b64decode(raw) if message.get("encoding") == "base64" else raw.encode()
                )
                out.append(Record(str(message["subject"]), int(message["sequence"]), data))
            except (KeyError, TypeError, ValueError, AttributeError) as exc:
                raise mon.BadRequest(
                    {"error": f"batch message {index} is malformed: {type(exc).__name__}: {exc}"}
                ) from None
        return out
    subject = headers.get("x-nfaas-subject")
    sequence = headers.get("x-nfaas-sequence", "")
    if not subject or not sequence.isdigit():
        raise mon.BadRequest(
            {
                "error": "not a trigger delivery: no X-Nfaas-Batch, nor X-Nfaas-Subject and "
                "X-Nfaas-Sequence headers"
            }
        )
    return [Record(subject, int(sequence), event.body or b"")]


def dashboard_of(api: Any, topic: Any, sequence: int) -> dict[str, Any]:
    panels = []
    for store in api.stores(topic.exp_id):
        source = mon.parse_topic(store["labels"][mon.SOURCE_LABEL])
        panels.append(
            {
                "metric": source.metric,
                "site": source.site,
                "type": source.type,
                "topic": source.name,
                "store": store["name"],
            }
        )
    return {
        "experiment": topic.exp_id,
        "use_case": topic.use_case,
        "title": f"{topic.use_case} experiment {topic.exp_id}",
        "created": mon.now_iso(),
        "first_message": {"topic": topic.name, "sequence": sequence},
        "panels": panels,
    }


def ensure_dashboard(api: Any, topic: Any, sequence: int) -> str:
    """ "created", or why not: "known" (seen by this instance), "exists", "duplicate"."""
    exp_id = topic.exp_id
    if exp_id in _known:
        return "known"
    config = api.config
    subject = config.dashboard_subject(exp_id)
    if api.read(config.dashboards_topic, "read-dashboard", subject=subject, limit=1):
        _known.add(exp_id)
        return "exists"
    stored = api.publish(
        config.dashboards_topic,
        json.dumps(dashboard_of(api, topic, sequence)).encode(),
        "create-dashboard",
        subject=subject,
        msg_id=f"dashboard-{exp_id}",
    )
    _known.add(exp_id)
    return "duplicate" if stored.get("duplicate") else "created"


def handle(event: Any, context: Any) -> dict[str, Any]:
    try:
        records = records_of(event)
        api = mon.monitor()
    except mon.BadRequest as exc:
        return mon.respond(400, exc.body)
    except mon.StepFailed as exc:
        return mon.respond(500, exc.to_json())
    stored = 0
    ignored: list[dict[str, Any]] = []  # not a monitoring topic: nothing to store it in
    dropped: list[dict[str, Any]] = []  # the store is gone: the experiment is being deleted
    failed: list[dict[str, Any]] = []
    first: dict[str, tuple[Any, int]] = {}
    for record in records:
        try:
            topic = mon.parse_topic(record.subject)
        except mon.TopicNameError as exc:
            ignored.append(
                {"subject": record.subject, "sequence": record.sequence, **exc.to_json()}
            )
            continue
        try:
            api.publish(
                topic.store,
                record.data,
                "store-record",
                msg_id=f"{topic.name}:{record.sequence}",
            )
        except mon.StepFailed as exc:
            where = {"topic": topic.name, "sequence": record.sequence}
            (dropped if exc.status == 404 else failed).append({**where, **exc.to_json()})
            continue
        stored += 1
        first.setdefault(topic.exp_id, (topic, record.sequence))
    dashboards = {}
    for exp_id, (topic, sequence) in first.items():
        try:
            dashboards[exp_id] = ensure_dashboard(api, topic, sequence)
        except mon.StepFailed as exc:
            failed.append({"experiment": exp_id, **exc.to_json()})
    body: dict[str, Any] = {
        "ok": not failed,
        "records": len(records),
        "stored": stored,
        "dashboards": dashboards,
        "ignored": ignored,
        "dropped": dropped,
    }
    for item in ignored + dropped:
        context.log(f"record not stored: {item}")
    if failed:
        first_failure = failed[0]
        body.update(
            failed=failed,
            error=f"{len(failed)} failure(s); first: {first_failure['error']}",
            step=first_failure["step"],
            status=first_failure["status"],
        )
        return mon.respond(502, body)
    return mon.respond(200, body)
