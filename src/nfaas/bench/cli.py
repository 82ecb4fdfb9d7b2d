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


@bench_app.command("warm")
def warm(
    connections: int = typer.Option(32, help="Keep-alive connections wrk holds open."),
    seconds: int = typer.Option(10, help="Duration of each wrk run."),
    rounds: int = typer.Option(3, help="Alternating rounds of nfaas and baseline."),
) -> None:
    """Warm invocations through the gateway vs the bare HTTP stack, driven by wrk."""
    from nfaas.bench.warm import run

    run(connections, seconds, rounds)


@bench_app.command("density")
def density(
    count: int = typer.Option(1000, help="Idle warm instances to start."),
    baseline_count: int = typer.Option(200, help="Fresh python3 processes for the baseline."),
) -> None:
    """Memory per idle instance (USS/PSS) and creation rate vs fresh python3 processes."""
    from nfaas.bench.density import run

    run(count, baseline_count)


@bench_app.command("sandbox")
def sandbox(
    runs: int = typer.Option(40, help="Cold starts per tier and configuration."),
    idle: int = typer.Option(50, help="Idle instances per tier for the memory measurement."),
) -> None:
    """The isolation tiers side by side: preparation, cold starts, memory, disk, resume."""
    from nfaas.bench.sandbox import run

    run(runs, idle)


@bench_app.command("nf")
def nf(
    rules: str | None = typer.Option(
        None, help='Rule counts, comma-separated (default "1,10,100,1000,10000,100000,1000000").'
    ),
    packets: int | None = typer.Option(None, min=1, help="Packets per batch (default 65536)."),
    repeat: int | None = typer.Option(None, min=1, help="Timed runs per measurement (default 5)."),
    quick: bool = typer.Option(
        False, "--quick", help="CI-sized smoke run: rules 1,10,100, 4096 packets, 3 runs."
    ),
    load_timeout: float = typer.Option(
        300.0, help="Seconds before a kernel ruleset load is recorded as a timeout."
    ),
) -> None:
    """Firewall classifier from 1 to 10^6 rules vs nft -f and iptables-restore loads."""
    from nfaas.bench import nf as experiment

    try:
        counts = experiment.parse_rule_counts(rules) if rules else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--rules") from None
    default_counts = experiment.QUICK_RULE_COUNTS if quick else experiment.RULE_COUNTS
    experiment.firewall_classification(
        counts or default_counts,
        packets or (experiment.QUICK_PACKETS if quick else experiment.PACKETS),
        repeat or (experiment.QUICK_REPEAT if quick else experiment.REPEAT),
        load_timeout=load_timeout,
    )
