"""What every monitoring function shares: the topic-name rules, platform calls whose status is
always checked, and the configuration the deployment puts in the environment.

The deploy step copies this file into each function's bundle next to ``handler.py``; handlers
run as separate processes under their own uids and ``import mon``.

Its import is paid by every cold start of every function of a chain, so it uses only what the
runtime has already imported: plain classes rather than dataclasses (~2 ms each to build) and
HTTP/1.1 over a socket rather than http.client (~7 ms: email, ssl) or httpx (~70 ms).
"""

from __future__ import annotations

import json
import os
import re
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, BinaryIO
from urllib.parse import quote, urlencode, urlsplit

# --- topic names ------------------------------------------------------------------------------

PARTS = ("useCase", "expId", "site", "type", "metric")
TYPES = ("kpi", "application_metric", "infrastructure_metric")
FORM = "<useCase>.<expId>.<site>.<type>.<metric>"
# The store of a topic is "dcs." + its name; both must stay within the platform's 200.
MAX_LENGTH = 192
# Subjects the platform keeps for itself ("nfaas.", "_INBOX."): a topic there is refused.
RESERVED_USE_CASES = ("nfaas", "_INBOX")
STORE_PREFIX = "dcs."
_OUTSIDE = re.compile(r"[^A-Za-z0-9_-]")


class TopicNameError(ValueError):
    """A topic name breaks ``rule`` (string, length, parts, empty, charset, type, reserved);
    ``part`` names the offending part (useCase, expId, site, type, metric) where there is one."""

    def __init__(
        self, topic: object, rule: str, message: str, part: str = "", value: str = ""
    ) -> None:
        super().__init__(message)
        self.topic = topic
        self.rule = rule
        self.part = part
        self.value = value

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"error": str(self), "rule": self.rule, "topic": self.topic}
        if self.part:
            out["part"] = self.part
            out["value"] = self.value
        return out


class TopicName:
    """A valid topic name's five parts."""

    __slots__ = ("exp_id", "metric", "site", "type", "use_case")

    def __init__(self, use_case: str, exp_id: str, site: str, type: str, metric: str) -> None:
        self.use_case = use_case
        self.exp_id = exp_id
        self.site = site
        self.type = type
        self.metric = metric

    def __eq__(self, other: object) -> bool:
        return isinstance(other, TopicName) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)

    def __repr__(self) -> str:
        return f"TopicName({self.name!r})"

    @property
    def name(self) -> str:
        return f"{self.use_case}.{self.exp_id}.{self.site}.{self.type}.{self.metric}"

    @property
    def store(self) -> str:
        """The data collection store's topic: the records of this topic, kept under limits."""
        return STORE_PREFIX + self.name

    def labels(self) -> dict[str, str]:
        return {
            "monitoring.use_case": self.use_case,
            "monitoring.experiment": self.exp_id,
            "monitoring.site": self.site,
            "monitoring.type": self.type,
            "monitoring.metric": self.metric,
        }

    def __str__(self) -> str:
        return self.name


def parse_topic(name: object) -> TopicName:
    """The five parts of a monitoring topic name; TopicNameError names the rule broken."""
    if not isinstance(name, str):
        raise TopicNameError(
            name, "string", f"a topic name must be a string, got {type(name).__name__}"
        )
    if len(name) > MAX_LENGTH:
        raise TopicNameError(
            name, "length", f"topic name is {len(name)} characters long; at most {MAX_LENGTH}"
        )
    parts = name.split(".")
    if len(parts) != len(PARTS):
        raise TopicNameError(
            name,
            "parts",
            f"topic name {name!r} has {len(parts)} dot-separated part(s); it needs "
            f"{len(PARTS)}: {FORM}",
        )
    for index, (part, value) in enumerate(zip(PARTS, parts, strict=True)):
        where = f"topic name {name!r}: part {index + 1} <{part}>"
        if not value:
            raise TopicNameError(name, "empty", f"{where} is empty", part, value)
        bad = _OUTSIDE.search(value)
        if bad:
            raise TopicNameError(
                name,
                "charset",
                f"{where} {value!r} has {bad.group()!r} at position {bad.start() + 1}; "
                "use only letters, digits, '_' and '-'",
                part,
                value,
            )
    if parts[3] not in TYPES:
        raise TopicNameError(
            name,
            "type",
            f"topic name {name!r}: part 4 <type> {parts[3]!r} is not one of {', '.join(TYPES)}",
            "type",
            parts[3],
        )
    if parts[0] in RESERVED_USE_CASES:
        raise TopicNameError(
            name,
            "reserved",
            f"topic name {name!r}: part 1 <useCase> {parts[0]!r} is reserved by the platform",
            "useCase",
            parts[0],
        )
    return TopicName(*parts)


# --- configuration ----------------------------------------------------------------------------


class Config:
    """Where the platform is and who we are, from the environment the deployment set."""

    def __init__(
        self,
        url: str,
        token: str = "",
        namespace: str = "monitoring",
        functions_url: str = "",
        topic_max_age: str = "24h",
        topic_max_bytes: str = "64Mi",
        store_max_age: str = "168h",
        store_max_bytes: str = "128Mi",
        wake: bool = True,
    ) -> None:
        self.url = url  # the platform: topics API and, by default, the functions
        self.token = token
        self.namespace = namespace
        self.functions_url = functions_url or url  # an always-on server in the benchmark
        # JetStream sets each topic's max_bytes aside on the node when the topic is made: an
        # experiment of the seed has 20 topics and as many stores, so keep both modest
        self.topic_max_age = topic_max_age  # the data topics: a transport, kept a day
        self.topic_max_bytes = topic_max_bytes
        self.store_max_age = store_max_age  # the stores: the experiment's record
        self.store_max_bytes = store_max_bytes
        self.wake = wake  # whether a chain head wakes its steps (see chain_wake)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        env = os.environ if env is None else env
        return cls(
            url=env.get("NFAAS_URL", "").rstrip("/"),
            token=env.get("NFAAS_TOKEN", ""),
            namespace=env.get("MONITOR_NAMESPACE", "monitoring"),
            functions_url=env.get("NFAAS_FUNCTIONS_URL", "").rstrip("/"),
            topic_max_age=env.get("MONITOR_TOPIC_MAX_AGE", "24h"),
            topic_max_bytes=env.get("MONITOR_TOPIC_MAX_BYTES", "64Mi"),
            store_max_age=env.get("MONITOR_STORE_MAX_AGE", "168h"),
            store_max_bytes=env.get("MONITOR_STORE_MAX_BYTES", "128Mi"),
            wake=env.get(WAKE_ENV, "1") != "0",
        )

    @property
    def collect_label(self) -> tuple[str, str]:
        """The label that puts a topic under this deployment's consumer trigger."""
        return COLLECT_LABEL, self.namespace

    @property
    def dashboards_topic(self) -> str:
        return f"{self.namespace}.dashboards"

    def dashboard_subject(self, exp_id: str) -> str:
        return f"{self.namespace}.dashboards.{exp_id}"


COLLECT_LABEL = "monitoring.collect"
ROLE_LABEL = "monitoring.role"
DEPLOYMENT_LABEL = "monitoring.deployment"
SOURCE_LABEL = "monitoring.source"

# --- HTTP -------------------------------------------------------------------------------------


class Reply:
    """One answer from the platform; status 0 when it could not be reached."""

    __slots__ = ("body", "headers", "status")

    def __init__(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None):
        self.status = status
        self.body = body
        self.headers = headers or {}

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300

    def json(self) -> Any:
        try:
            return json.loads(self.body)
        except ValueError:
            return None

    def detail(self) -> Any:
        """What to quote in a failure report: the JSON answer, or its text (truncated)."""
        data = self.json()
        if data is not None:
            return data
        return self.body[:500].decode("utf-8", "replace").strip()


MAX_LINE = 65536


class Http:
    """HTTP/1.1 to one base URL with keep-alive: one connection per thread, reopened (and the
    request sent once more) when the server has closed an idle one."""

    def __init__(self, base_url: str, token: str, timeout: float = 60.0) -> None:
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"not an http(s) URL: {base_url!r}")
        self.https = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port or (443 if self.https else 80)
        self.authority = parts.netloc.rpartition("@")[2]
        self.prefix = parts.path.rstrip("/")
        self.token = token
        self.timeout = timeout
        self._local = threading.local()

    def _open(self) -> tuple[socket.socket, BinaryIO]:
        family = ip_family(self.host)
        if family is None:
            sock = socket.create_connection((self.host, self.port), self.timeout)
        else:  # no resolver for an address: getaddrinfo costs ~2 ms the first time (idna)
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect((self.host, self.port))
            except OSError:
                sock.close()
                raise
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.https:
            import ssl  # only for an https platform: ~5 ms of imports

            sock = ssl.create_default_context().wrap_socket(sock, server_hostname=self.host)
        return sock, sock.makefile("rb")

    def close(self) -> None:
        """Close the calling thread's connection, if it has one."""
        self._drop()

    def _drop(self) -> None:
        held = getattr(self._local, "conn", None)
        self._local.conn = None
        if held is not None:
            held[1].close()
            held[0].close()

    def request(
        self,
        method: str,
        path: str,
        *,
        json_body: Any = None,
        body: bytes | None = None,
        params: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
        on_sent: Callable[[], None] | None = None,
    ) -> Reply:
        """One request; ``on_sent`` (which must not raise) runs once it is sent, before the
        answer is read, on the first attempt that gets that far."""
        target = self.prefix + path
        if params:
            target += "?" + urlencode({k: v for k, v in params.items() if v is not None})
        sent = dict(headers or {})
        if self.token:
            sent["Authorization"] = f"Bearer {self.token}"
        if json_body is not None:
            body = json.dumps(json_body).encode()
            sent.setdefault("Content-Type", "application/json")
        body = body or b""
        lines = [f"{method} {target} HTTP/1.1", f"Host: {self.authority}"]
        lines += [f"{k}: {v}" for k, v in sent.items()]
        lines.append(f"Content-Length: {len(body)}")
        # one write for head and body: no Nagle / delayed-ACK stall between them
        message = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body
        for attempt in (1, 2):
            held = getattr(self._local, "conn", None)
            reused = held is not None
            try:
                if held is None:
                    held = self._local.conn = self._open()
                held[0].sendall(message)
                if on_sent is not None:
                    on_sent()
                    on_sent = None
                status, answer_headers, data, keep = read_response(held[1], method)
            except (OSError, ValueError) as exc:
                self._drop()
                if reused and attempt == 1 and not isinstance(exc, TimeoutError):
                    continue  # most likely a kept-alive connection the server had closed
                return Reply(0, f"{method} {target}: {type(exc).__name__}: {exc}".encode())
            if not keep:
                self._drop()
            return Reply(status, data, answer_headers)
        raise AssertionError("unreachable")


def ip_family(host: str) -> socket.AddressFamily | None:
    """The address family of an IP literal; None for a name."""
    for family in (socket.AF_INET, socket.AF_INET6):
        try:
            socket.inet_pton(family, host)
        except OSError:
            continue
        return family
    return None


def read_response(reader: BinaryIO, method: str) -> tuple[int, dict[str, str], bytes, bool]:
    """(status, headers, body, whether the connection stays open) of one HTTP/1.x answer."""
    line = reader.readline(MAX_LINE)
    if not line:
        raise ConnectionResetError("the connection closed before an answer")
    version, _, rest = line.decode("latin-1").partition(" ")
    status = int(rest[:3])
    headers: dict[str, str] = {}
    while True:
        line = reader.readline(MAX_LINE)
        if line in (b"\r\n", b"\n"):
            break
        if not line:
            raise ConnectionResetError("the connection closed inside the headers")
        key, _, value = line.decode("latin-1").partition(":")
        headers[key.strip().lower()] = value.strip()
    keep = version != "HTTP/1.0" and headers.get("connection", "").lower() != "close"
    if method == "HEAD" or status in (204, 304) or status < 200:
        return status, headers, b"", keep
    if "chunked" in headers.get("transfer-encoding", "").lower():
        return status, headers, _chunked(reader), keep
    if "content-length" in headers:
        return status, headers, _exactly(reader, int(headers["content-length"])), keep
    return status, headers, reader.read(), False  # delimited by the close


def _exactly(reader: BinaryIO, size: int) -> bytes:
    data = reader.read(size)
    if len(data) != size:
        raise ConnectionResetError(f"the connection closed after {len(data)} of {size} bytes")
    return data


def _chunked(reader: BinaryIO) -> bytes:
    parts: list[bytes] = []
    while True:
        size = int(reader.readline(MAX_LINE).split(b";", 1)[0].strip() or b"x", 16)
        if size == 0:
            while reader.readline(MAX_LINE) not in (b"\r\n", b"\n", b""):
                pass  # trailers
            return b"".join(parts)
        parts.append(_exactly(reader, size))
        _exactly(reader, 2)


# --- steps and their failures -----------------------------------------------------------------


class StepFailed(Exception):
    """A downstream call answered ``status`` (0: unreachable) where success was expected."""

    def __init__(self, step: str, status: int, detail: Any) -> None:
        super().__init__(f"step {step} got {status or 'no answer'}: {_short(detail)}")
        self.step = step
        self.status = status
        self.detail = detail

    def to_json(self) -> dict[str, Any]:
        return {"step": self.step, "status": self.status, "error": str(self), "detail": self.detail}


def _short(detail: Any) -> str:
    if isinstance(detail, dict) and "error" in detail:
        return str(detail["error"])
    text = detail if isinstance(detail, str) else json.dumps(detail)
    return text[:300]


def expect(reply: Reply, step: str, ok: Iterable[int] = (200,)) -> Reply:
    if reply.status not in tuple(ok):
        raise StepFailed(step, reply.status, reply.detail())
    return reply


# --- the platform -----------------------------------------------------------------------------


def topic_path(name: str) -> str:
    return "/system/topics/" + quote(name, safe="")


class Monitor:
    """The platform as the monitoring functions use it: topics, messages, other functions."""

    def __init__(self, config: Config) -> None:
        if not config.url:
            raise StepFailed("config", 0, "NFAAS_URL is not set in the function's environment")
        self.config = config
        self.platform = Http(config.url, config.token)
        self.functions = (
            self.platform
            if config.functions_url == config.url
            else Http(config.functions_url, config.token)
        )

    # topics
    def topic(self, name: str, step: str) -> dict[str, Any] | None:
        """The topic's description, or None if it does not exist."""
        reply = expect(self.platform.request("GET", topic_path(name)), step, (200, 404))
        return reply.json() if reply.status == 200 else None

    def create_topic(self, name: str, settings: Mapping[str, Any], step: str) -> str:
        """ "created", or "exists" when it was there already (a create is idempotent). A 409
        for another reason (its subjects overlap another topic's) is a failure."""
        reply = self.platform.request(
            "POST", "/system/topics", json_body={"name": name, **settings}
        )
        if reply.status == 201:
            return "created"
        if reply.status == 409 and self.topic(name, step) is not None:
            return "exists"
        raise StepFailed(step, reply.status, reply.detail())

    def update_topic(self, name: str, settings: Mapping[str, Any], step: str) -> dict[str, Any]:
        reply = expect(self.platform.request("PUT", topic_path(name), json_body=settings), step)
        data: dict[str, Any] = reply.json()
        return data

    def delete_topic(self, name: str, step: str) -> str:
        """ "deleted", or "absent" when there was nothing to delete (idempotent)."""
        reply = expect(self.platform.request("DELETE", topic_path(name)), step, (204, 404))
        return "deleted" if reply.status == 204 else "absent"

    def topics(self, step: str) -> list[dict[str, Any]]:
        data: list[dict[str, Any]] = expect(
            self.platform.request("GET", "/system/topics"), step
        ).json()
        return data

    def publish(
        self, topic: str, data: bytes, step: str, subject: str | None = None, msg_id: str = ""
    ) -> dict[str, Any]:
        headers = {"Content-Type": "application/octet-stream"}
        if msg_id:
            headers["X-Msg-Id"] = msg_id
        reply = self.platform.request(
            "POST",
            topic_path(topic) + "/messages",
            body=data,
            params={"subject": subject},
            headers=headers,
        )
        stored: dict[str, Any] = expect(reply, step, (201,)).json()
        return stored

    def read(
        self,
        topic: str,
        step: str,
        subject: str | None = None,
        start_seq: int = 1,
        limit: int = 100,
    ) -> list[dict[str, Any]]:
        params = {"subject": subject, "start_seq": max(1, start_seq), "limit": limit}
        reply = self.platform.request("GET", topic_path(topic) + "/messages", params=params)
        data: list[dict[str, Any]] = expect(reply, step).json()
        return data

    # functions
    def call(self, function: str, payload: Any, sent: Callable[[], None] | None = None) -> Reply:
        """A synchronous call to another function of this deployment (status not checked);
        ``sent`` runs once the request is on its way, before its answer is awaited."""
        path = f"/function/{function}.{self.config.namespace}"
        return self.functions.request("POST", path, json_body=payload, on_sent=sent)

    def call_async(self, function: str, payload: Any, step: str) -> str:
        """Queue a durable call; its id. The platform retries it per the function's policy."""
        path = f"/async-function/{function}.{self.config.namespace}"
        reply = expect(self.functions.request("POST", path, json_body=payload), step, (202,))
        return reply.headers.get("x-call-id", "")

    def stores(self, exp_id: str | None = None) -> list[dict[str, Any]]:
        """This deployment's store topics (of one experiment, if given)."""
        out = []
        for topic in self.topics("list-stores"):
            labels = topic.get("labels") or {}
            if labels.get(ROLE_LABEL) != "store":
                continue
            if labels.get(DEPLOYMENT_LABEL) != self.config.namespace:
                continue
            if exp_id is not None and labels.get("monitoring.experiment") != exp_id:
                continue
            out.append(topic)
        return sorted(out, key=lambda t: str(t["name"]))

    def topic_settings(self, topic: TopicName) -> dict[str, Any]:
        return {
            "max_age": self.config.topic_max_age,
            "max_bytes": self.config.topic_max_bytes,
            "description": f"monitoring data of experiment {topic.exp_id}",
            "labels": {
                **topic.labels(),
                ROLE_LABEL: "data",
                DEPLOYMENT_LABEL: self.config.namespace,
            },
        }

    def store_settings(self, topic: TopicName) -> dict[str, Any]:
        return {
            "max_age": self.config.store_max_age,
            "max_bytes": self.config.store_max_bytes,
            "description": f"records of {topic.name}",
            "labels": {
                **topic.labels(),
                ROLE_LABEL: "store",
                DEPLOYMENT_LABEL: self.config.namespace,
                SOURCE_LABEL: topic.name,
            },
        }


_monitor: Monitor | None = None


def monitor() -> Monitor:
    """The process's Monitor: its connections stay open between invocations of a warm
    instance."""
    global _monitor
    if _monitor is None:
        _monitor = Monitor(Config.from_env())
    return _monitor


# --- requests and answers ---------------------------------------------------------------------


class BadRequest(Exception):
    def __init__(self, body: dict[str, Any]) -> None:
        super().__init__(body.get("error", "bad request"))
        self.body = body


def respond(status: int, body: Any) -> dict[str, Any]:
    return {
        "statusCode": status,
        "headers": {"Content-Type": "application/json"},
        "body": json.dumps(body),
    }


def request_json(event: Any) -> Any:
    """The request body as JSON ({} when empty); BadRequest when it is not JSON."""
    raw = event.body or b""
    if not raw.strip():
        return {}
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise BadRequest({"error": f"the body is not JSON: {exc}", "rule": "json"}) from None


def topics_from_request(event: Any) -> list[TopicName]:
    """The topics a request names: ``{"topics": [...]}``, ``{"topic": "..."}`` or
    ``?topic=``; every one validated (BadRequest lists each bad name), duplicates dropped."""
    data = request_json(event)
    if isinstance(data, list):
        names: Any = data
    elif isinstance(data, dict) and "topics" in data:
        names = data["topics"]
    elif isinstance(data, dict) and "topic" in data:
        names = [data["topic"]]
    elif event.query.get("topic"):
        names = [event.query["topic"]]
    else:
        raise BadRequest(
            {"error": 'name the topics: {"topics": ["<useCase>.<expId>.<site>.<type>.<metric>"]}'}
        )
    if not isinstance(names, list) or not names:
        raise BadRequest({"error": "topics must be a non-empty list of topic names"})
    parsed: list[TopicName] = []
    errors = []
    for name in names:
        try:
            topic = parse_topic(name)
        except TopicNameError as exc:
            errors.append(exc.to_json())
            continue
        if topic not in parsed:
            parsed.append(topic)
    if errors:
        raise BadRequest({**errors[0], "errors": errors})
    return parsed


def per_topic(event: Any, work: Callable[[Monitor, TopicName], dict[str, Any]]) -> dict[str, Any]:
    """Run ``work`` for every topic of the request and report each: 200 when all succeeded,
    502 naming the first failed step and the status it got otherwise, 400 for bad names."""
    try:
        topics = topics_from_request(event)
        api = monitor()
    except BadRequest as exc:
        return respond(400, exc.body)
    except StepFailed as exc:
        return respond(500, exc.to_json())
    results = []
    for topic in topics:
        try:
            results.append({"topic": topic.name, "ok": True, **work(api, topic)})
        except StepFailed as exc:
            results.append({"topic": topic.name, "ok": False, **exc.to_json()})
    return report(results)


def report(results: list[dict[str, Any]]) -> dict[str, Any]:
    failed = [r for r in results if not r.get("ok")]
    body: dict[str, Any] = {"ok": not failed, "results": results}
    if not failed:
        return respond(200, body)
    first = failed[0]
    body.update(
        error=f"{len(failed)} of {len(results)} topic(s) failed; first: {first['topic']}: "
        f"{first.get('error', '')}",
        step=first.get("step"),
        status=first.get("status"),
    )
    return respond(502, body)


def results_by_topic(reply: Reply, step: str, topics: list[TopicName]) -> dict[str, Any]:
    """Per-topic outcomes of a downstream function's list answer. A topic the answer does not
    report as ok maps to a StepFailed (the whole call's, if the answer has no such list)."""
    data = reply.json()
    listed = data.get("results") if isinstance(data, dict) else None
    out: dict[str, Any] = {}
    if reply.status in (200, 502) and isinstance(listed, list):
        for item in listed:
            if not isinstance(item, dict) or "topic" not in item:
                continue
            if item.get("ok"):
                out[item["topic"]] = item
            else:
                out[item["topic"]] = StepFailed(step, reply.status, item)
    for topic in topics:
        if topic.name not in out:
            out[topic.name] = StepFailed(step, reply.status, reply.detail())
    return out


def now_iso() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


# Settings a PUT must carry again: it replaces them all.
SETTING_KEYS = (
    "subjects",
    "retention",
    "storage",
    "max_age",
    "max_bytes",
    "max_msgs",
    "max_msgs_per_subject",
    "max_msg_size",
    "labels",
    "description",
)


def current_settings(described: Mapping[str, Any]) -> dict[str, Any]:
    return {k: described[k] for k in SETTING_KEYS if k in described}


# --- chains -----------------------------------------------------------------------------------


def chain_step(
    api: Monitor,
    function: str,
    topics: list[TopicName],
    results: dict[str, dict[str, Any]],
    wake: Wake | None = None,
) -> list[TopicName]:
    """Call ``function`` for ``topics`` (one request for all) and record its outcome for
    each in ``results``; the topics that succeeded, for the next step. ``wake`` is told
    once the request is sent."""
    if not topics:
        return []
    sent = None if wake is None else (lambda: wake.after(function))
    reply = api.call(function, {"topics": [t.name for t in topics]}, sent)
    outcomes = results_by_topic(reply, function, topics)
    succeeded = []
    for topic in topics:
        outcome = outcomes[topic.name]
        entry = results[topic.name]
        if isinstance(outcome, StepFailed):
            entry["steps"].append({"step": function, "status": reply.status})
            entry.update(ok=False, **outcome.to_json())
            continue
        kept = {k: v for k, v in outcome.items() if k not in ("topic", "ok")}
        entry["steps"].append({"step": function, "status": reply.status, **kept})
        succeeded.append(topic)
    return succeeded


def chain_results(topics: list[TopicName]) -> dict[str, dict[str, Any]]:
    return {t.name: {"topic": t.name, "ok": True, "steps": []} for t in topics}


class ChainStart:
    """A chain past its first step: the request's topics fetched, the later steps woken."""

    def __init__(self, api: Monitor, topics: list[TopicName], steps: Sequence[str]) -> None:
        self.api = api
        self.wake = chain_wake(api, steps)
        self.results = chain_results(topics)
        self.fetched = chain_step(api, steps[0], topics, self.results, self.wake)


def start_chain(event: Any, steps: Sequence[str]) -> ChainStart | dict[str, Any]:
    """Parse the request, then run the chain's first step (``steps[0]``, fetch-topic) with
    wake-ups for the others; or the error response when the request or set-up is bad."""
    try:
        topics = topics_from_request(event)
        api = monitor()
    except BadRequest as exc:
        return respond(400, exc.body)
    except StepFailed as exc:
        return respond(500, exc.to_json())
    return ChainStart(api, topics, steps)


def skipped(results: dict[str, dict[str, Any]], topic: TopicName, step: str, why: str) -> None:
    results[topic.name]["steps"].append({"step": step, "skipped": why})


# --- waking a chain's steps ------------------------------------------------------------------

WAKE_ENV = "MONITOR_WAKE"  # "0": a chain head never wakes its steps
WAKE_TIMEOUT = 5.0  # a wake-up the platform has not answered by then is given up (and logged)
_chains_run: set[tuple[str, ...]] = set()  # the chains this process has run (one per head)


class Wake:
    """The wake-ups of one run of a chain of ``steps`` (the functions it calls, in order).

    ``after(step)`` is called once ``step``'s request is on its way; the first time, a thread
    of its own asks the platform to start an instance of every later step, in order, over a
    connection of its own, and the call returns at once. The first step is never woken: the
    chain's own call to it starts it, ahead of the wake-ups (so it takes the prepared shell
    that is there). A wake-up is ``POST /system/wake-function/{name}``: at zero the platform
    starts an instance in the background and answers 202 at once (the step's call, arriving
    meanwhile, waits for that instance instead of starting another); with an instance running
    or starting it changes nothing, and it never stops one. A refusal is logged, never raised.
    """

    def __init__(self, config: Config, steps: Sequence[str]) -> None:
        self.config = config
        self.steps = tuple(steps)
        self.thread: threading.Thread | None = None
        self.answers: list[tuple[str, int]] = []  # (function, status) of each wake-up sent

    def after(self, step: str) -> None:
        if self.thread is not None or step not in self.steps:
            return
        later = self.steps[self.steps.index(step) + 1 :]
        if not later:
            return
        self.thread = threading.Thread(target=self._send, args=(later,), name="wake", daemon=True)
        try:
            self.thread.start()
        except RuntimeError as exc:  # no thread to be had (the instance's process limit)
            _log(f"[monitor] could not wake {', '.join(later)}: {exc}")

    def _send(self, functions: tuple[str, ...]) -> None:
        http = Http(self.config.url, self.config.token, WAKE_TIMEOUT)
        try:
            for name in functions:
                path = "/system/wake-function/" + quote(name, safe="")
                reply = http.request("POST", path, params={"namespace": self.config.namespace})
                self.answers.append((name, reply.status))
                if reply.status != 202:
                    _log(
                        f"[monitor] could not wake {name}: {reply.status or 'no answer'}: "
                        f"{_short(reply.detail())}"
                    )
        finally:
            http.close()


def chain_wake(api: Monitor, steps: Sequence[str]) -> Wake | None:
    """The wake-ups for this run of the chain of ``steps``: only the first run in this process
    (a new instance of the head: the chain has been idle, and its steps, which share its
    keep-alive and which only it calls, are at zero too; a warm head's steps are warm, and
    waking them would only cost platform calls), and only when the steps are the platform's
    functions (not an always-on server's). None: nothing to wake."""
    key = tuple(steps)
    first = key not in _chains_run
    _chains_run.add(key)
    if not first or api.functions is not api.platform or not api.config.wake:
        return None
    return Wake(api.config, key)


def _log(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# --- the stores -------------------------------------------------------------------------------

READ_PAGE = 1000  # the most the platform returns per read


def latest_records(api: Monitor, store: Mapping[str, Any], limit: int) -> list[dict[str, Any]]:
    """The newest ``limit`` records of a store (as described by the topics API), oldest first,
    each with the experiment's names for its metric."""
    source = parse_topic((store.get("labels") or {}).get(SOURCE_LABEL, ""))
    state = store.get("state") or {}
    last = int(state.get("last_seq") or 0)
    if not last or limit <= 0:
        return []
    start = max(int(state.get("first_seq") or 1), last - limit + 1)
    out: list[dict[str, Any]] = []
    while start <= last and len(out) < limit:
        page = api.read(store["name"], "read-store", start_seq=start, limit=READ_PAGE)
        if not page:
            break
        for message in page:
            out.append(
                {
                    "topic": source.name,
                    "site": source.site,
                    "type": source.type,
                    "metric": source.metric,
                    "seq": message["seq"],
                    "time": message["time"],
                    "data": message["data"],
                    "encoding": message["encoding"],
                }
            )
        start = int(page[-1]["seq"]) + 1
    return out[-limit:]


def experiment_of(query: Mapping[str, str]) -> str:
    """The ``experiment`` query parameter, checked like a topic name's expId part."""
    exp_id = query.get("experiment", "")
    if not exp_id:
        raise BadRequest({"error": "missing ?experiment=<expId>", "rule": "empty"})
    bad = _OUTSIDE.search(exp_id)
    if bad:
        raise BadRequest(
            {
                "error": f"experiment {exp_id!r} has {bad.group()!r} at position "
                f"{bad.start() + 1}; expIds use only letters, digits, '_' and '-'",
                "rule": "charset",
                "part": "expId",
                "value": exp_id,
            }
        )
    return exp_id
