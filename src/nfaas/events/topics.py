"""Topics: named, durable message logs with retention and limits, each a JetStream stream.

A topic's name is a NATS subject without wildcards (``site1.kpi.latency``); publishers send
to it (or to the subjects it lists) over NATS or MQTT, and the stream keeps the messages under
the topic's limits. Labels let triggers select topics (``triggers: [{topics: {k: v}}]``),
including topics created after the function.

A topic belongs to a namespace (the creating token's; the admin token picks one, "default"
unless told): tokens of other namespaces neither see nor change it, and only that namespace's
functions trigger on it. Its name and subjects are still global, as NATS subjects are.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from typing import Any, cast

import msgspec
from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    RawStreamMsg,
    RetentionPolicy,
    StorageType,
    StreamConfig,
    StreamInfo,
    StreamsListIterator,
)
from nats.js.errors import APIError, NotFoundError

from nfaas.core.subjects import (
    SubjectError,
    subject_matches,
    subjects_overlap,
    validate_subject,
)
from nfaas.core.units import parse_duration, parse_size
from nfaas.events import names
from nfaas.events.bus import Bus

RETENTIONS = {
    "limits": RetentionPolicy.LIMITS,
    "interest": RetentionPolicy.INTEREST,
    "workqueue": RetentionPolicy.WORK_QUEUE,
}
STORAGES = {"file": StorageType.FILE, "memory": StorageType.MEMORY}
LABEL_PREFIX = "label."
DEFAULT_NAMESPACE = "default"  # the owner of topics made before topics had owners
DEFAULT_MAX_BYTES = 128 * 1024**2  # a topic must not fill the disk; JetStream sets it aside


class TopicError(ValueError):
    """Bad topic settings (400); ``field`` names the offending one."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


class TopicNotFound(LookupError):
    pass


class TopicConflict(Exception):
    pass


class Topic(msgspec.Struct):
    name: str
    subjects: list[str]
    namespace: str = DEFAULT_NAMESPACE
    retention: str = "limits"
    storage: str = "file"
    max_age: float = 0.0  # seconds; 0: unlimited
    max_bytes: int = DEFAULT_MAX_BYTES
    max_msgs: int = -1
    max_msgs_per_subject: int = -1  # 1: a subject keeps only its latest message (a record)
    max_msg_size: int = -1
    labels: dict[str, str] = {}
    description: str = ""

    def stream_config(self) -> StreamConfig:
        metadata = {names.TOPIC_META_KEY: self.name, names.NAMESPACE_META_KEY: self.namespace}
        metadata.update({LABEL_PREFIX + k: v for k, v in self.labels.items()})
        return StreamConfig(
            name=names.topic_stream(self.name),
            description=self.description or None,
            subjects=self.subjects,
            retention=RETENTIONS[self.retention],
            storage=STORAGES[self.storage],
            max_age=self.max_age or None,
            max_bytes=self.max_bytes,
            max_msgs=self.max_msgs,
            max_msgs_per_subject=self.max_msgs_per_subject,
            max_msg_size=self.max_msg_size,
            discard=DiscardPolicy.OLD,
            duplicate_window=120.0,
            metadata=metadata,
        )


def topic_from_request(name: str, raw: Mapping[str, Any], namespace: str) -> Topic:
    """Validate a create/update request; TopicError names the field and the rule broken."""
    try:
        validate_subject(name, wildcards=False)
    except SubjectError as exc:
        raise TopicError("name", str(exc)) from None
    allowed = set(Topic.__struct_fields__) - {"name", "namespace"}
    for key in raw:
        if key not in allowed:
            raise TopicError(str(key), f"unknown setting (allowed: {', '.join(sorted(allowed))})")
    subjects = raw.get("subjects") or [name]
    if not isinstance(subjects, list) or not all(isinstance(s, str) for s in subjects):
        raise TopicError("subjects", "expected a list of subjects")
    for index, subject in enumerate(subjects):
        try:
            validate_subject(subject)
        except SubjectError as exc:
            raise TopicError(f"subjects.{index}", str(exc)) from None
    retention = raw.get("retention", "limits")
    if retention not in RETENTIONS:
        raise TopicError("retention", f"{retention!r} is not one of {', '.join(RETENTIONS)}")
    storage = raw.get("storage", "file")
    if storage not in STORAGES:
        raise TopicError("storage", f"{storage!r} is not one of {', '.join(STORAGES)}")
    labels = raw.get("labels", {})
    if not isinstance(labels, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        raise TopicError("labels", "expected a mapping of strings to strings")
    description = raw.get("description", "")
    if not isinstance(description, str):
        raise TopicError("description", "expected a string")
    return Topic(
        name=name,
        subjects=list(subjects),
        namespace=namespace,
        retention=retention,
        storage=storage,
        max_age=_limit("max_age", raw.get("max_age", 0), parse_duration),
        max_bytes=int(_limit("max_bytes", raw.get("max_bytes", DEFAULT_MAX_BYTES), parse_size)),
        max_msgs=int(_limit("max_msgs", raw.get("max_msgs", -1), _count)),
        max_msgs_per_subject=int(
            _limit("max_msgs_per_subject", raw.get("max_msgs_per_subject", -1), _count)
        ),
        max_msg_size=int(_limit("max_msg_size", raw.get("max_msg_size", -1), parse_size)),
        labels=dict(labels),
        description=description,
    )


def _count(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"expected an integer, got {value!r}")
    return float(value)


def _limit(field: str, value: object, parse: Any) -> float:
    unlimited = 0.0 if field == "max_age" else -1
    if value in (-1, 0, None, "-1"):
        return unlimited
    try:
        parsed = float(parse(value))
    except (ValueError, TypeError) as exc:
        raise TopicError(field, str(exc)) from None
    if parsed == 0:  # "0", "0s", "0B": as 0, no limit
        return unlimited
    if parsed < 0:
        raise TopicError(field, f"must be positive (or -1 / 0 for no limit), got {value!r}")
    return parsed


def topic_from_stream(info: StreamInfo) -> Topic | None:
    config = info.config
    metadata = config.metadata or {}
    name = metadata.get(names.TOPIC_META_KEY)
    if not name:
        return None
    retention = {v: k for k, v in RETENTIONS.items()}.get(config.retention, "limits")  # type: ignore[arg-type]
    storage = {v: k for k, v in STORAGES.items()}.get(config.storage, "file")  # type: ignore[arg-type]
    return Topic(
        name=name,
        subjects=list(config.subjects or []),
        namespace=metadata.get(names.NAMESPACE_META_KEY) or DEFAULT_NAMESPACE,
        retention=retention,
        storage=storage,
        max_age=config.max_age or 0.0,
        max_bytes=config.max_bytes if config.max_bytes is not None else -1,
        max_msgs=config.max_msgs if config.max_msgs is not None else -1,
        max_msgs_per_subject=config.max_msgs_per_subject,
        max_msg_size=config.max_msg_size if config.max_msg_size is not None else -1,
        labels={
            k[len(LABEL_PREFIX) :]: v for k, v in metadata.items() if k.startswith(LABEL_PREFIX)
        },
        description=config.description or "",
    )


def describe(topic: Topic, info: StreamInfo) -> dict[str, Any]:
    state = info.state
    out: dict[str, Any] = msgspec.to_builtins(topic)
    out["stream"] = info.config.name
    out["state"] = {
        "messages": state.messages,
        "bytes": state.bytes,
        "first_seq": state.first_seq,
        "last_seq": state.last_seq,
        "consumers": state.consumer_count,
    }
    return out


Visible = frozenset[str] | set[str] | None  # the namespaces a caller may see; None: all


class Topics:
    def __init__(self, bus: Bus) -> None:
        self.bus = bus

    async def create(self, topic: Topic) -> dict[str, Any]:
        js = self.bus.js
        try:
            await js.stream_info(names.topic_stream(topic.name))
            raise TopicConflict(f"topic {topic.name!r} already exists")
        except NotFoundError:
            pass
        try:
            info = await js.add_stream(topic.stream_config())
        except APIError as exc:
            raise await self._conflict_or_bad(topic, exc) from None
        return describe(topic, info)

    async def update(self, topic: Topic, visible: Visible = None) -> dict[str, Any]:
        existing = await self._topic(topic.name, visible)
        topic = msgspec.structs.replace(topic, namespace=existing.namespace)  # owners stay
        try:
            info = await self.bus.js.update_stream(topic.stream_config())
        except APIError as exc:
            raise await self._conflict_or_bad(topic, exc) from None
        return describe(topic, info)

    async def get(self, name: str, visible: Visible = None) -> dict[str, Any]:
        return describe(*await self._found(name, visible))

    async def all(self, visible: Visible = None) -> list[dict[str, Any]]:
        out = []
        for info in await all_streams(self.bus.js):
            topic = topic_from_stream(info)
            if topic is not None and (visible is None or topic.namespace in visible):
                out.append(describe(topic, info))
        return sorted(out, key=lambda t: str(t["name"]))

    async def publish(
        self,
        name: str,
        data: bytes,
        subject: str | None = None,
        msg_id: str | None = None,
        visible: Visible = None,
    ) -> dict[str, Any]:
        """Publish over HTTP (for clients without NATS or MQTT): stored when this returns."""
        topic = await self._topic(name, visible)
        subject = subject or name
        try:
            validate_subject(subject, wildcards=False)
        except SubjectError as exc:
            raise TopicError("subject", str(exc)) from None
        if not any(subject_matches(pattern, subject) for pattern in topic.subjects):
            raise TopicError(
                "subject", f"{subject!r} is not one of topic {name!r}'s subjects {topic.subjects}"
            )
        headers = {"Nats-Msg-Id": msg_id} if msg_id else None
        ack = await self.bus.js.publish(subject, data, headers=headers)
        return {"topic": name, "subject": subject, "seq": ack.seq, "duplicate": bool(ack.duplicate)}

    async def read(
        self,
        name: str,
        subject: str | None = None,
        start_seq: int = 1,
        limit: int = 100,
        visible: Visible = None,
    ) -> list[dict[str, Any]]:
        """Stored messages from ``start_seq`` on (only ``subject``'s, if given), oldest first."""
        await self._topic(name, visible)
        if subject is not None:
            try:
                validate_subject(subject)
            except SubjectError as exc:
                raise TopicError("subject", str(exc)) from None
        stream = names.topic_stream(name)
        out: list[dict[str, Any]] = []
        seq = max(1, start_seq)
        while len(out) < limit:
            try:
                raw = await self.bus.js.get_msg(stream, seq=seq, subject=subject or ">", next=True)
            except NotFoundError:
                break
            assert raw.seq is not None
            out.append(message_json(raw))
            seq = raw.seq + 1
        return out

    async def _topic(self, name: str, visible: Visible = None) -> Topic:
        return (await self._found(name, visible))[0]

    async def _found(self, name: str, visible: Visible = None) -> tuple[Topic, StreamInfo]:
        """The topic and its stream's state; TopicNotFound (404) if there is no such topic,
        or it belongs to a namespace the caller cannot see."""
        try:
            info = await self.bus.js.stream_info(names.topic_stream(name))
        except NotFoundError:
            raise TopicNotFound(f"topic {name!r} not found") from None
        topic = topic_from_stream(info)
        if topic is None or (visible is not None and topic.namespace not in visible):
            raise TopicNotFound(f"topic {name!r} not found")
        return topic, info

    async def _conflict_or_bad(self, topic: Topic, exc: APIError) -> Exception:
        text = exc.description or str(exc)
        if "insufficient" in text:
            # JetStream sets every stream's max_bytes aside when it is made, so the node's
            # storage runs out by reservations long before the disk is full
            return TopicError(
                "max_bytes",
                f"{text}: every topic reserves its max_bytes ({_size(DEFAULT_MAX_BYTES)} unless "
                "set) on the node; give this one a smaller max_bytes, or shrink or remove others",
            )
        if "overlap" not in text:
            for field in ("retention", "storage"):
                if field in text:  # "can not change retention policy", "... storage type"
                    return TopicError(field, f"{text} (make a new topic instead)")
            return TopicError("topic", text)
        # name who holds the subjects, so that the user knows what to change
        holders = []
        for info in await all_streams(self.bus.js):
            config = info.config
            if config.name == names.topic_stream(topic.name):
                continue
            theirs = [
                s
                for s in config.subjects or []
                if any(subjects_overlap(s, mine) for mine in topic.subjects)
            ]
            if not theirs:
                continue
            other = topic_from_stream(info)
            if other is not None:
                holders.append(f"topic {other.name!r} ({', '.join(theirs)})")
            elif config.name == names.EVENTS_STREAM:
                holders.append(f"the subjects function triggers listen on ({', '.join(theirs)})")
            else:
                holders.append(f"stream {config.name} ({', '.join(theirs)})")
        where = "; ".join(holders) or "another stream's"
        return TopicConflict(f"topic {topic.name!r}: its subjects overlap {where}")

    async def delete(self, name: str, visible: Visible = None) -> None:
        await self._found(name, visible)
        await self.bus.js.delete_stream(names.topic_stream(name))


async def all_streams(js: JetStreamContext) -> list[StreamInfo]:
    """Every stream on the server (it answers a listing in pages of at most 256)."""
    out: list[StreamInfo] = []
    while True:
        page = cast(StreamsListIterator, await js.streams_info_iterator(offset=len(out)))
        got = list(page)
        out += got
        if not got or len(out) >= page.total:
            return out


def _size(value: int) -> str:
    return f"{value // 1024**3}Gi" if value % 1024**3 == 0 else f"{value} bytes"


def message_json(raw: RawStreamMsg) -> dict[str, Any]:
    data = raw.data or b""
    try:
        body: dict[str, Any] = {"data": data.decode("utf-8"), "encoding": "utf-8"}
    except UnicodeDecodeError:
        body = {"data": base64.b64encode(data).decode(), "encoding": "base64"}
    headers = {k: v for k, v in (raw.headers or {}).items() if not k.startswith("Nats-")}
    return {
        "seq": raw.seq,
        "subject": raw.subject,
        "time": raw.time.isoformat() if raw.time else None,
        **body,
        "headers": headers,
    }
