"""Dashboards: the one the consumer made for an experiment, with its metrics' latest records.

GET ?experiment=<expId> -> the stored dashboard as JSON plus ``metrics`` (per store: record
count, latest records), or, when the Accept header prefers text/html (a browser), a plain HTML
page (tables and inline SVG, no script; it reloads itself every 10 s). GET without
``experiment`` lists the dashboards. ``?format=json|html`` overrides the Accept header.
404 when the experiment has no dashboard yet (none of its topics has had a record).
"""

from __future__ import annotations

import html
import json
from typing import Any
from urllib.parse import quote

import mon

POINTS = 60  # records per metric shown
INDEX_LIMIT = 1000


def prefers_html(event: Any) -> bool:
    chosen = event.query.get("format")
    if chosen in ("html", "json"):
        return bool(chosen == "html")
    weights: dict[str, float] = {}
    for item in event.headers.get("accept", "").split(","):
        media, *params = item.strip().split(";")
        weight = 1.0
        for param in params:
            key, _, value = param.strip().partition("=")
            if key == "q":
                try:
                    weight = float(value)
                except ValueError:
                    weight = 0.0
        if media:
            weights[media.strip().lower()] = weight
    anything = weights.get("*/*", 0.0)
    as_html = weights.get("text/html", weights.get("text/*", anything))
    as_json = weights.get("application/json", weights.get("application/*", anything))
    return as_html > as_json


def number(record: dict[str, Any]) -> float | None:
    """The record's value as a number: the data itself, or its "value" field if JSON."""
    if record.get("encoding") != "utf-8":
        return None
    text = record["data"]
    try:
        return float(text)
    except ValueError:
        pass
    try:
        value = json.loads(text)
    except ValueError:
        return None
    if isinstance(value, dict):
        value = value.get("value")
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return None


def clock(stamp: str | None) -> str:
    """An ISO time as "2024-05-01 12:00:00" (the platform's times are UTC)."""
    return (stamp or "")[:19].replace("T", " ")


def sparkline(values: list[float], width: int = 240, height: int = 40) -> str:
    if len(values) < 2:
        return ""
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    step = width / (len(values) - 1)
    points = " ".join(
        f"{i * step:.1f},{height - 2 - (v - low) / span * (height - 4):.1f}"
        for i, v in enumerate(values)
    )
    return (
        f'<svg width="{width}" height="{height}" role="img" aria-label="trend">'
        f'<polyline fill="none" stroke="#1f6feb" stroke-width="1.5" points="{points}"/></svg>'
    )


def metrics_of(api: Any, exp_id: str) -> list[dict[str, Any]]:
    out = []
    for store in api.stores(exp_id):
        labels = store["labels"]
        latest = mon.latest_records(api, store, POINTS)
        out.append(
            {
                "topic": labels.get(mon.SOURCE_LABEL),
                "metric": labels.get("monitoring.metric"),
                "site": labels.get("monitoring.site"),
                "type": labels.get("monitoring.type"),
                "store": store["name"],
                "records": store["state"]["messages"],
                "latest": latest,
            }
        )
    return out


def page(title: str, body: str) -> dict[str, Any]:
    document = (
        "<!doctype html><html><head><meta charset='utf-8'>"
        "<meta http-equiv='refresh' content='10'>"
        f"<title>{html.escape(title)}</title><style>"
        "body{font-family:system-ui,sans-serif;margin:2em;color:#222}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;"
        "text-align:left;vertical-align:middle}th{background:#f4f4f4}"
        "code{font-size:90%}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>{body}</body></html>"
    )
    return {
        "statusCode": 200,
        "headers": {"Content-Type": "text/html; charset=utf-8"},
        "body": document,
    }


def experiment_page(dashboard: dict[str, Any], metrics: list[dict[str, Any]]) -> dict[str, Any]:
    e = html.escape
    first = dashboard.get("first_message") or {}
    rows = []
    for m in metrics:
        latest = m["latest"]
        last = latest[-1] if latest else None
        shown = "" if last is None else last["data"][:80]
        values = [v for v in (number(r) for r in latest) if v is not None]
        rows.append(
            f"<tr><td>{e(str(m['metric']))}</td><td>{e(str(m['site']))}</td>"
            f"<td>{e(str(m['type']))}</td><td>{m['records']}</td>"
            f"<td><code>{e(shown)}</code></td><td>{e(clock(last['time']) if last else '')}</td>"
            f"<td>{sparkline(values)}</td></tr>"
        )
    table = (
        "<table><tr><th>metric</th><th>site</th><th>type</th><th>records</th>"
        "<th>latest</th><th>at (UTC)</th><th>last records</th></tr>" + "".join(rows) + "</table>"
        if rows
        else "<p>No store left for this experiment.</p>"
    )
    body = (
        f"<p>Use case <b>{e(str(dashboard.get('use_case')))}</b>, experiment "
        f"<b>{e(str(dashboard.get('experiment')))}</b>. Dashboard created "
        f"{e(str(dashboard.get('created')))} on the first record "
        f"(<code>{e(str(first.get('topic')))}</code> #{e(str(first.get('sequence')))}).</p>"
        f"{table}<p><a href='?'>all dashboards</a></p>"
    )
    return page(str(dashboard.get("title") or dashboard.get("experiment")), body)


def index(api: Any, as_html: bool) -> dict[str, Any]:
    config = api.config
    messages = api.read(config.dashboards_topic, "read-dashboards", limit=INDEX_LIMIT)
    boards = []
    for message in messages:
        try:
            boards.append(json.loads(message["data"]))
        except (ValueError, TypeError):
            continue
    listed = [{k: b.get(k) for k in ("experiment", "use_case", "title", "created")} for b in boards]
    if not as_html:
        return mon.respond(200, {"dashboards": listed})
    items = "".join(
        f"<li><a href='?experiment={quote(str(b['experiment']))}'>"
        f"{html.escape(str(b['title']))}</a> (created {html.escape(str(b['created']))})</li>"
        for b in listed
    )
    return page("Monitoring dashboards", f"<ul>{items}</ul>" if items else "<p>None yet.</p>")


def handle(event: Any, context: Any) -> dict[str, Any]:
    as_html = prefers_html(event)
    try:
        api = mon.monitor()
        if not event.query.get("experiment"):
            return index(api, as_html)
        exp_id = mon.experiment_of(event.query)
        found = api.read(
            api.config.dashboards_topic,
            "read-dashboard",
            subject=api.config.dashboard_subject(exp_id),
            limit=1,
        )
        if not found:
            return mon.respond(
                404,
                {
                    "error": f"experiment {exp_id!r} has no dashboard: none of its topics has "
                    "had a record yet"
                },
            )
        dashboard = json.loads(found[0]["data"])
        metrics = metrics_of(api, exp_id)
    except mon.BadRequest as exc:
        return mon.respond(400, exc.body)
    except mon.StepFailed as exc:
        return mon.respond(502, exc.to_json())
    if as_html:
        return experiment_page(dashboard, metrics)
    return mon.respond(200, {**dashboard, "metrics": metrics})
