"""``nfaas calls …``: async calls, their state and the dead letters."""

from __future__ import annotations

import time
from typing import Any

import typer
from rich.table import Table

from nfaas.cli.common import JSON_OPT, NS_OPT, call, client, emit_json, out

calls_app = typer.Typer(
    help="Async calls: list, show, cancel, and replay dead ones.", no_args_is_help=True
)


def _when(epoch: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(epoch)) if epoch else ""


@calls_app.command("ls")
def calls_ls(
    function: str | None = typer.Argument(None, help="Only this function's calls."),
    namespace: str | None = NS_OPT,
    state: str | None = typer.Option(
        None, "--state", help="queued, running, retrying, succeeded, dead or cancelled."
    ),
    dead: bool = typer.Option(False, "--dead", help="Only dead letters (same as --state dead)."),
    limit: int = typer.Option(100, "--limit", min=1, max=10000),
    as_json: bool = JSON_OPT,
) -> None:
    """Recent calls, newest first (records are kept 7 days)."""
    params: dict[str, Any] = {"limit": limit}
    if function:
        params["function"] = function
    if namespace:
        params["namespace"] = namespace
    if dead or state:
        params["state"] = "dead" if dead else state
    calls = call(client().json, "GET", "/system/calls", params=params)
    if as_json:
        emit_json(calls)
        return
    table = Table("CALL ID", "FUNCTION", "SOURCE", "STATE", "ATTEMPTS", "STATUS", "ACCEPTED")
    for c in calls:
        table.add_row(
            c["id"],
            f"{c['function']}.{c['namespace']}",
            c["source"],
            c["state"],
            str(c["attempts"]),
            str(c["status"] or ""),
            _when(c["accepted"]),
        )
    out.print(table)


@calls_app.command("show")
def calls_show(call_id: str, as_json: bool = JSON_OPT) -> None:
    """One call: state, attempts, last status and error, result, callback delivery."""
    record = call(client().json, "GET", f"/system/calls/{call_id}")
    if as_json:
        emit_json(record)
        return
    for key in (
        "id",
        "function",
        "namespace",
        "source",
        "state",
        "attempts",
        "status",
        "duration",
        "error",
        "callback",
        "callback_state",
        "callback_attempts",
        "callback_error",
        "replays",
    ):
        value = record.get(key)
        if value not in ("", None, 0, 0.0) or key in ("state", "attempts"):
            out.print(f"[bold]{key}[/]: {value}", highlight=False)
    for key in ("accepted", "started", "finished"):
        if record.get(key):
            out.print(f"[bold]{key}[/]: {time.ctime(record[key])}", highlight=False)
    if record.get("result"):
        out.print("[bold]result[/]:", highlight=False)
        out.print(record["result"], highlight=False, markup=False)


@calls_app.command("replay")
def calls_replay(call_id: str, as_json: bool = JSON_OPT) -> None:
    """Queue a dead call again, with a fresh set of attempts."""
    record = call(client().json, "POST", f"/system/calls/{call_id}/replay")
    if as_json:
        emit_json(record)
    else:
        out.print(f"call {record['id']} queued again (replay {record['replays']})")


@calls_app.command("cancel")
def calls_cancel(call_id: str, as_json: bool = JSON_OPT) -> None:
    """Cancel a call that has not started (queued, or waiting for a retry)."""
    record = call(client().json, "DELETE", f"/system/calls/{call_id}")
    if as_json:
        emit_json(record)
    else:
        out.print(f"call {record['id']} cancelled")
