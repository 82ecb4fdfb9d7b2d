"""``nfaas topic …``: topics (JetStream streams) as a platform resource.

The server validates every setting and names the field and rule it rejects; the CLI only
turns options into the request and the answer into a table, so the two cannot disagree.
"""

from __future__ import annotations

import sys
from typing import Any
from urllib.parse import quote

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from nfaas.cli.common import JSON_OPT, NS_OPT, call, client, emit_json, fail, out

topic_app = typer.Typer(help="Create, list, describe and remove topics.", no_args_is_help=True)

SUBJECT_OPT = typer.Option(
    [], "--subject", "-s", help="A subject the topic stores (repeatable; default: its name)."
)
RETENTION_OPT = typer.Option(None, "--retention", help="limits (default), interest or workqueue.")
STORAGE_OPT = typer.Option(None, "--storage", help="file (default) or memory.")
MAX_AGE_OPT = typer.Option(None, "--max-age", help="Drop messages older than this, e.g. 24h.")
MAX_BYTES_OPT = typer.Option(None, "--max-bytes", help="Size cap, e.g. 1Gi (oldest dropped).")
MAX_MSGS_OPT = typer.Option(None, "--max-msgs", help="Message count cap (oldest dropped).")
PER_SUBJECT_OPT = typer.Option(
    None, "--max-msgs-per-subject", help="Messages kept per subject (1: only the latest)."
)
LABEL_OPT = typer.Option([], "--label", "-l", help="A label k=v (repeatable).")
DESCRIPTION_OPT = typer.Option(None, "--description", help="Free text shown by describe.")


def _path(name: str) -> str:
    # topic names may hold ':', '@', '+', '%', ...: keep them inside one path segment
    return f"/system/topics/{quote(name, safe='')}"


def parse_labels(pairs: list[str]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            fail(f"--label {pair!r}: expected key=value")
        labels[key] = value
    return labels


def _settings(
    subjects: list[str],
    retention: str | None,
    storage: str | None,
    max_age: str | None,
    max_bytes: str | None,
    max_msgs: int | None,
    max_msgs_per_subject: int | None,
    description: str | None,
) -> dict[str, Any]:
    """The options given on the command line (absent ones are left to the server)."""
    given = {
        "subjects": subjects or None,
        "retention": retention,
        "storage": storage,
        "max_age": max_age,
        "max_bytes": max_bytes,
        "max_msgs": max_msgs,
        "max_msgs_per_subject": max_msgs_per_subject,
        "description": description,
    }
    return {k: v for k, v in given.items() if v is not None}


def _size(value: int) -> str:
    if value < 0:
        return "unlimited"
    for unit, factor in (("Ti", 1024**4), ("Gi", 1024**3), ("Mi", 1024**2), ("Ki", 1024)):
        if value >= factor and value % factor == 0:
            return f"{value // factor}{unit}"
    return str(value)


def _age(seconds: float) -> str:
    if not seconds:
        return "unlimited"
    for unit, factor in (("h", 3600), ("m", 60)):
        if seconds >= factor and seconds % factor == 0:
            return f"{int(seconds // factor)}{unit}"
    return f"{seconds:g}s"


def _count(value: int) -> str:
    return "unlimited" if value < 0 else str(value)


def _labels_text(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


@topic_app.command("create")
def topic_create(
    name: str = typer.Argument(..., help="The topic's name, a subject without wildcards."),
    subjects: list[str] = SUBJECT_OPT,
    retention: str | None = RETENTION_OPT,
    max_age: str | None = MAX_AGE_OPT,
    max_bytes: str | None = MAX_BYTES_OPT,
    max_msgs: int | None = MAX_MSGS_OPT,
    max_msgs_per_subject: int | None = PER_SUBJECT_OPT,
    storage: str | None = STORAGE_OPT,
    labels: list[str] = LABEL_OPT,
    description: str | None = DESCRIPTION_OPT,
    namespace: str | None = NS_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Create a topic: a durable message log with retention and limits, owned by a namespace."""
    body: dict[str, Any] = {
        "name": name,
        **({"namespace": namespace} if namespace else {}),
        **_settings(
            subjects,
            retention,
            storage,
            max_age,
            max_bytes,
            max_msgs,
            max_msgs_per_subject,
            description,
        ),
    }
    if labels:
        body["labels"] = parse_labels(labels)
    created = call(client().json, "POST", "/system/topics", json=body)
    if as_json:
        emit_json(created)
    else:
        out.print(
            f"topic {created['name']} created in {created['namespace']} "
            f"(subjects: {', '.join(created['subjects'])})"
        )


@topic_app.command("update")
def topic_update(
    name: str,
    subjects: list[str] = SUBJECT_OPT,
    retention: str | None = RETENTION_OPT,
    max_age: str | None = MAX_AGE_OPT,
    max_bytes: str | None = MAX_BYTES_OPT,
    max_msgs: int | None = MAX_MSGS_OPT,
    max_msgs_per_subject: int | None = PER_SUBJECT_OPT,
    storage: str | None = STORAGE_OPT,
    labels: list[str] = LABEL_OPT,
    unlabel: list[str] = typer.Option([], "--unlabel", help="Remove this label (repeatable)."),
    description: str | None = DESCRIPTION_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Change some of a topic's settings; the others keep their current values."""
    api = client()
    current = call(api.json, "GET", _path(name))
    from nfaas.events.topics import Topic  # the settings a PUT replaces: all of Topic's

    keep = [field for field in Topic.__struct_fields__ if field not in ("name", "namespace")]
    body = {k: current[k] for k in keep if k in current}
    body.update(
        _settings(
            subjects,
            retention,
            storage,
            max_age,
            max_bytes,
            max_msgs,
            max_msgs_per_subject,
            description,
        )
    )
    merged = {k: v for k, v in dict(body.get("labels") or {}).items() if k not in unlabel}
    merged.update(parse_labels(labels))
    body["labels"] = merged
    updated = call(api.json, "PUT", _path(name), json=body)
    if as_json:
        emit_json(updated)
    else:
        out.print(f"topic {updated['name']} updated")


@topic_app.command("ls")
def topic_ls(namespace: str | None = NS_OPT, as_json: bool = JSON_OPT) -> None:
    """The topics the token may see, with their subjects, retention, size and labels."""
    params = {"namespace": namespace} if namespace else {}
    topics = call(client().json, "GET", "/system/topics", params=params)
    if as_json:
        emit_json(topics)
        return
    table = Table("NAME", "NAMESPACE", "SUBJECTS", "RETENTION", "MESSAGES", "BYTES", "LABELS")
    for t in topics:
        table.add_row(
            Text(t["name"]),
            Text(t["namespace"]),
            Text(", ".join(t["subjects"])),
            t["retention"],
            str(t["state"]["messages"]),
            str(t["state"]["bytes"]),
            Text(_labels_text(t["labels"])),
        )
    out.print(table)


@topic_app.command("describe")
def topic_describe(name: str, as_json: bool = JSON_OPT) -> None:
    """One topic: settings, limits, labels and what it holds now."""
    t = call(client().json, "GET", _path(name))
    if as_json:
        emit_json(t)
        return
    state = t["state"]
    rows = [
        ("name", t["name"]),
        ("namespace", t["namespace"]),
        ("description", t["description"]),
        ("subjects", ", ".join(t["subjects"])),
        ("retention", t["retention"]),
        ("storage", t["storage"]),
        ("max_age", _age(t["max_age"])),
        ("max_bytes", _size(t["max_bytes"])),
        ("max_msgs", _count(t["max_msgs"])),
        ("max_msgs_per_subject", _count(t["max_msgs_per_subject"])),
        ("max_msg_size", _size(t["max_msg_size"])),
        ("labels", _labels_text(t["labels"])),
        ("stream", t["stream"]),
        ("messages", str(state["messages"])),
        ("bytes", str(state["bytes"])),
        ("sequences", f"{state['first_seq']}..{state['last_seq']}"),
        ("consumers", str(state["consumers"])),
    ]
    for key, value in rows:
        if value or key not in ("description", "labels"):
            out.print(f"[bold]{key}[/]: {escape(value)}", highlight=False)


@topic_app.command("rm")
def topic_rm(name: str, as_json: bool = JSON_OPT) -> None:
    """Remove a topic and every message it holds."""
    call(client().request, "DELETE", _path(name))
    if as_json:
        emit_json({"name": name, "deleted": True})
    else:
        out.print(f"topic {name} removed")


@topic_app.command("publish")
def topic_publish(
    name: str,
    subject: str | None = typer.Option(
        None, "--subject", "-s", help="Publish on this subject of the topic (default: its name)."
    ),
    msg_id: str | None = typer.Option(
        None, "--id", help="Message id: a re-sent message with the same id is stored once."
    ),
    as_json: bool = JSON_OPT,
) -> None:
    """Publish standard input as one message; stored when this returns."""
    data = sys.stdin.buffer.read()
    params = {"subject": subject} if subject else {}
    headers = {"content-type": "application/octet-stream"}
    if msg_id:
        headers["x-msg-id"] = msg_id
    stored = call(
        client().json,
        "POST",
        f"{_path(name)}/messages",
        content=data,
        params=params,
        headers=headers,
    )
    if as_json:
        emit_json(stored)
    elif stored["duplicate"]:
        out.print(f"duplicate of message {stored['seq']} on {stored['subject']}: not stored again")
    else:
        out.print(f"stored as message {stored['seq']} on {stored['subject']}")


@topic_app.command("read")
def topic_read(
    name: str,
    subject: str | None = typer.Option(
        None, "--subject", "-s", help="Only messages on this subject (wildcards allowed)."
    ),
    start: int = typer.Option(1, "--from", min=1, help="Start at this sequence number."),
    limit: int = typer.Option(100, "--limit", min=1, max=1000),
    as_json: bool = JSON_OPT,
) -> None:
    """Stored messages, oldest first."""
    params: dict[str, Any] = {"start_seq": start, "limit": limit}
    if subject:
        params["subject"] = subject
    messages = call(client().json, "GET", f"{_path(name)}/messages", params=params)
    if as_json:
        emit_json(messages)
        return
    table = Table("SEQ", "SUBJECT", "TIME", "DATA")
    for m in messages:
        data = m["data"] if m["encoding"] == "utf-8" else f"(base64) {m['data']}"
        table.add_row(str(m["seq"]), Text(m["subject"]), m["time"] or "", Text(data))
    out.print(table)
