"""Names on the bus: the platform's streams, subjects, key-value bucket and consumers.

Everything the platform keeps for itself lives under the ``nfaas.`` subject prefix (which
functions' triggers may not use). A call's subject ends with its id, so a queued call is found
by subject (cancel, show) without any index of our own.
"""

from __future__ import annotations

import hashlib
import re

from nfaas.node.logs import FunctionKey

CALLS_STREAM = "NFAAS_CALLS"  # queued async calls (work queue: gone once acknowledged)
DEAD_STREAM = "NFAAS_DEAD"  # calls and trigger messages whose attempts ran out
CALLBACKS_STREAM = "NFAAS_CALLBACKS"  # results waiting to be POSTed to X-Callback-Url
EVENTS_STREAM = "NFAAS_EVENTS"  # trigger subjects that no topic holds
CALLS_BUCKET = "nfaas_calls"  # call id -> CallRecord (state, attempts, result)
TOPIC_STREAM_PREFIX = "TOPIC_"
TOPIC_META_KEY = "nfaas_topic"  # stream metadata: the topic's name
NAMESPACE_META_KEY = "nfaas_namespace"  # stream metadata: the namespace owning the topic

_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


def call_subject(key: FunctionKey, call_id: str) -> str:
    return f"nfaas.calls.{key[0]}.{key[1]}.{call_id}"


def calls_filter(key: FunctionKey) -> str:
    return f"nfaas.calls.{key[0]}.{key[1]}.*"


def dead_subject(key: FunctionKey, call_id: str) -> str:
    return f"nfaas.dead.{key[0]}.{key[1]}.{call_id}"


def callback_subject(key: FunctionKey, call_id: str) -> str:
    return f"nfaas.callbacks.{key[0]}.{key[1]}.{call_id}"


def key_from_subject(subject: str) -> tuple[FunctionKey, str]:
    """(function key, call id) of a calls/dead/callbacks subject."""
    _, _, namespace, name, call_id = subject.split(".", 4)
    return (namespace, name), call_id


def _short_hash(*parts: str) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:10]


def consumer_name(kind: str, key: FunctionKey, *extra: str) -> str:
    """A durable consumer name: readable, unique, and free of '.', '*' and '>'."""
    readable = _UNSAFE.sub("_", f"{kind}-{key[0]}-{key[1]}")[:180]
    return f"{readable}-{_short_hash(kind, *key, *extra)}"


def topic_stream(topic: str) -> str:
    """The stream holding a topic (stream names cannot contain '.')."""
    return f"{TOPIC_STREAM_PREFIX}{_UNSAFE.sub('_', topic)[:120]}_{_short_hash(topic)}"
