"""What every ``nfaas`` command shares: consoles, options, the client, error reporting."""

from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from nfaas.cli.client import ApiError, Client

out = Console()
err = Console(stderr=True)

JSON_OPT = typer.Option(False, "--json", help="Print JSON for scripts.")
NS_OPT = typer.Option(None, "--namespace", "-n", help="Namespace (defaults to the token's).")


def fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    raise typer.Exit(code)


def client() -> Client:
    return Client()


def call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except ApiError as exc:
        fail(exc.message if exc.status == 0 else f"{exc.message} (HTTP {exc.status})")


def emit_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")
