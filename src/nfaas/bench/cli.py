"""``nfaas bench …`` commands."""

from __future__ import annotations

import typer

bench_app = typer.Typer(
    help="Re-run the published experiments on this machine.", no_args_is_help=True
)
