"""The data collection store, queried: an experiment's records, per metric.

GET ?experiment=<expId>[&metric=<metric>][&site=][&type=][&limit=N] -> 200 {"experiment",
"count", "stores", "records": [{topic, site, type, metric, seq, time, data, encoding}]}: the
newest ``limit`` (default 1000, at most 100000) records, oldest first; 404 when the experiment
has no store (or none for that metric); 400 for a bad parameter.
"""

from __future__ import annotations

from typing import Any

import mon

DEFAULT_LIMIT = 1000
MAX_LIMIT = 100_000


def limit_of(query: dict[str, str]) -> int:
    raw = query.get("limit", str(DEFAULT_LIMIT))
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_LIMIT:
        raise mon.BadRequest(
            {
                "error": f"limit must be an integer from 1 to {MAX_LIMIT}, got {raw!r}",
                "rule": "limit",
            }
        )
    return int(raw)


def handle(event: Any, context: Any) -> dict[str, Any]:
    query = event.query
    try:
        exp_id = mon.experiment_of(query)
        limit = limit_of(query)
        api = mon.monitor()
    except mon.BadRequest as exc:
        return mon.respond(400, exc.body)
    except mon.StepFailed as exc:
        return mon.respond(500, exc.to_json())
    wanted = {
        "monitoring.metric": query.get("metric"),
        "monitoring.site": query.get("site"),
        "monitoring.type": query.get("type"),
    }
    try:
        stores = [
            s
            for s in api.stores(exp_id)
            if all(v is None or s["labels"].get(k) == v for k, v in wanted.items())
        ]
        if not stores:
            what = ", ".join(f"{k.split('.')[1]} {v!r}" for k, v in wanted.items() if v)
            return mon.respond(
                404,
                {"error": f"experiment {exp_id!r} has no store" + (f" for {what}" if what else "")},
            )
        records = []
        for store in stores:
            records += mon.latest_records(api, store, limit)
    except mon.StepFailed as exc:
        return mon.respond(502, exc.to_json())
    records.sort(key=lambda r: (r["time"] or "", r["topic"], r["seq"]))
    records = records[-limit:]
    return mon.respond(
        200,
        {
            "experiment": exp_id,
            **{k.split(".")[1]: v for k, v in wanted.items() if v},
            "count": len(records),
            "stores": [s["name"] for s in stores],
            "records": records,
        },
    )
