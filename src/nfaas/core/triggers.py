"""Triggers: the events that invoke a function besides HTTP, as a manifest declares them.

```yaml
triggers:
  - nats: sensors.*.temp            # a NATS subject (wildcards * and >)
  - mqtt: sensors/+/temp            # an MQTT topic filter (+ and #), via the MQTT listener
  - topic: telemetry                # an nfaas topic (a JetStream stream) by name
  - topics: {collect: "true"}       # every topic whose labels match, now and later
  - cron: "*/5 * * * *"             # a schedule; `body` is what each fire sends
    body: '{"job": "sweep"}'
batch: {size: 100, wait: 500ms}     # (per trigger) many messages per invocation
from: all                           # (per trigger) also the messages stored before it existed
```

A trigger sees the messages stored from the moment it was deployed on (``from: new``, the
default), like a new subscriber; ``from: all`` replays what the stream still holds.
"""

from __future__ import annotations

from collections.abc import Mapping

import msgspec

from nfaas.core.cron import CronError, parse_cron
from nfaas.core.subjects import SubjectError, mqtt_filter_to_subjects, validate_subject
from nfaas.core.units import parse_duration

KINDS = ("nats", "mqtt", "topic", "topics", "cron")
STARTS = ("new", "all")
TOPIC_NAME_MAX = 200
MAX_BATCH = 10_000


class TriggerError(ValueError):
    """``key`` names the trigger's key at fault (e.g. "nats" or "batch.size")."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


class Trigger(msgspec.Struct, frozen=True):
    kind: str  # one of KINDS
    source: str = ""  # subject, MQTT filter, topic name or cron expression
    labels: dict[str, str] = {}  # kind "topics": the label selector
    batch_size: int = 1
    batch_wait: float = 1.0  # seconds to wait for a batch to fill
    body: str = ""  # kind "cron": the payload of each fire
    start: str = "new"  # "new": messages stored once the trigger exists; "all": history too

    @property
    def subjects(self) -> list[str]:
        """NATS subjects this trigger listens on (nats and mqtt kinds)."""
        if self.kind == "nats":
            return [self.source]
        if self.kind == "mqtt":
            return mqtt_filter_to_subjects(self.source)
        return []

    def to_manifest(self) -> dict[str, object]:
        """The trigger as a manifest writes it (parse_trigger reads it back to an equal one)."""
        out: dict[str, object] = {
            self.kind: dict(self.labels) if self.kind == "topics" else self.source
        }
        if self.batch_size > 1 or self.batch_wait != 1.0:
            out["batch"] = {"size": self.batch_size, "wait": self.batch_wait}
        if self.body:
            out["body"] = self.body
        if self.start != "new":
            out["from"] = self.start
        return out

    def describe(self) -> str:
        if self.kind == "topics":
            return "topics " + ",".join(f"{k}={v}" for k, v in sorted(self.labels.items()))
        return f"{self.kind} {self.source}"


def parse_trigger(raw: object) -> Trigger:
    if not isinstance(raw, Mapping):
        raise TriggerError("", f"expected a mapping such as {{nats: subject}}, got {raw!r}")
    kinds = [k for k in raw if k in KINDS]
    if len(kinds) != 1:
        raise TriggerError(
            "", f"a trigger names exactly one of {', '.join(KINDS)}; got {sorted(map(str, raw))}"
        )
    kind = kinds[0]
    allowed = {kind, "batch"} | ({"body"} if kind == "cron" else {"from"})
    for key in raw:
        if key not in allowed:
            raise TriggerError(
                str(key), f"unknown key {key!r} for a {kind} trigger (allowed: {sorted(allowed)})"
            )
    value = raw[kind]
    size, wait = _batch(raw.get("batch"), kind)
    start = raw.get("from", "new")
    if start not in STARTS:
        raise TriggerError("from", f"expected one of {', '.join(STARTS)}, got {start!r}")
    if kind == "topics":
        return Trigger(kind, labels=_labels(value), batch_size=size, batch_wait=wait, start=start)
    if not isinstance(value, str) or not value.strip():
        raise TriggerError(kind, f"expected a non-empty string, got {value!r}")
    source = value.strip()
    try:
        if kind == "nats":
            validate_subject(source)
        elif kind == "mqtt":
            mqtt_filter_to_subjects(source)
        elif kind == "topic":
            validate_subject(source, wildcards=False)
        else:
            parse_cron(source)
    except (SubjectError, CronError) as exc:
        raise TriggerError(kind, str(exc)) from None
    body = raw.get("body", "")
    if not isinstance(body, str):
        raise TriggerError("body", f"expected a string, got {type(body).__name__}")
    return Trigger(kind, source, batch_size=size, batch_wait=wait, body=body, start=start)


def _labels(value: object) -> dict[str, str]:
    if not isinstance(value, Mapping) or not value:
        raise TriggerError("topics", "expected a non-empty mapping of topic labels to match")
    out = {}
    for key, item in value.items():
        if not isinstance(key, str) or isinstance(item, bool) or not isinstance(item, str | int):
            raise TriggerError(f"topics.{key}", f"expected label: value strings, got {item!r}")
        out[key] = str(item)
    return out


def _batch(raw: object, kind: str) -> tuple[int, float]:
    if raw is None:
        return 1, 1.0
    if kind == "cron":
        raise TriggerError("batch", "a cron trigger fires one call at a time")
    if not isinstance(raw, Mapping):
        raise TriggerError("batch", f"expected {{size: N, wait: duration}}, got {raw!r}")
    for key in raw:
        if key not in ("size", "wait"):
            raise TriggerError(f"batch.{key}", f"unknown key {key!r} (allowed: size, wait)")
    size = raw.get("size", 100)
    if isinstance(size, bool) or not isinstance(size, int) or not 1 <= size <= MAX_BATCH:
        raise TriggerError("batch.size", f"must be an integer from 1 to {MAX_BATCH}, got {size!r}")
    try:
        wait = parse_duration(raw.get("wait", 1.0))
    except ValueError as exc:
        raise TriggerError("batch.wait", str(exc)) from None
    if not 0 < wait <= 60:
        raise TriggerError("batch.wait", f"must be more than 0 and at most 60s, got {wait!r}")
    return size, wait


def parse_triggers(raw: object) -> list[Trigger]:
    """Validated triggers; raises TriggerError with ``key`` prefixed by the list index."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise TriggerError("", f"expected a list of triggers, got {type(raw).__name__}")
    out = []
    for index, item in enumerate(raw):
        try:
            out.append(parse_trigger(item))
        except TriggerError as exc:
            key = f"{index}.{exc.key}" if exc.key else str(index)
            raise TriggerError(key, exc.message) from None
    return out
