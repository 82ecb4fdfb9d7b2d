"""``nfaas bench …`` commands."""

from __future__ import annotations

import typer

bench_app = typer.Typer(
    help="Re-run the published experiments on this machine.", no_args_is_help=True
)


@bench_app.command("coldstart")
def coldstart(
    runs: int = typer.Option(50, help="Cold starts to measure (and baseline runs)."),
) -> None:
    """First request of a scaled-to-zero function vs a fresh python3 per request."""
    from nfaas.bench.coldstart import run

    run(runs)
