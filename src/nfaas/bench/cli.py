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
        False,
        "--quick",
        help="CI-sized smoke run: rules 1,10,100, 4096 packets, 3 runs; live windows of 1 s.",
    ),
    load_timeout: float = typer.Option(
        300.0, help="Seconds before a kernel ruleset load is recorded as a timeout."
    ),
    classify: bool = typer.Option(
        True, "--classify/--no-classify", help="Compile, classification and load times."
    ),
    live: bool = typer.Option(
        True,
        "--live/--no-live",
        help="Live forwarding A -> M -> B through our firewall, nft and iptables (needs root).",
    ),
    live_max_rules: int = typer.Option(
        1_000_000, min=1, help="Largest rule count measured live (kernel loads take long)."
    ),
    live_seconds: float | None = typer.Option(
        None, min=0.1, help="Seconds per live measurement window (default 2; quick 1)."
    ),
    vnfs: bool = typer.Option(
        True,
        "--vnfs/--no-vnfs",
        help="Load balancer, NAT and TOF throughput: batches, and live unless --no-live.",
    ),
) -> None:
    """Firewall from 1 to 10^6 rules: classifier vs nft/iptables loads, live forwarding vs the
    kernel; load balancer, NAT and TOF throughput."""
    from nfaas.bench import nf as experiment

    try:
        counts = experiment.parse_rule_counts(rules) if rules else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--rules") from None
    default_counts = experiment.QUICK_RULE_COUNTS if quick else experiment.RULE_COUNTS
    if classify:
        experiment.firewall_classification(
            counts or default_counts,
            packets or (experiment.QUICK_PACKETS if quick else experiment.PACKETS),
            repeat or (experiment.QUICK_REPEAT if quick else experiment.REPEAT),
            load_timeout=load_timeout,
        )
    if live:
        from nfaas.bench import nf_live

        nf_live.live_forwarding(
            counts or default_counts,
            seconds=live_seconds or (nf_live.QUICK_LIVE_SECONDS if quick else nf_live.LIVE_SECONDS),
            warmup=nf_live.QUICK_LIVE_WARMUP if quick else nf_live.LIVE_WARMUP,
            latency_seconds=nf_live.QUICK_LATENCY_SECONDS if quick else nf_live.LATENCY_SECONDS,
            steps=nf_live.QUICK_SEARCH_STEPS if quick else nf_live.SEARCH_STEPS,
            max_rules=live_max_rules,
            load_timeout=load_timeout,
        )
    if vnfs:
        from nfaas.bench import nf_live, nf_vnfs

        nf_vnfs.vnf_throughput(
            seconds=live_seconds or (nf_live.QUICK_LIVE_SECONDS if quick else nf_live.LIVE_SECONDS),
            warmup=nf_live.QUICK_LIVE_WARMUP if quick else nf_live.LIVE_WARMUP,
            latency_seconds=nf_live.QUICK_LATENCY_SECONDS if quick else nf_live.LATENCY_SECONDS,
            steps=nf_live.QUICK_SEARCH_STEPS if quick else nf_live.SEARCH_STEPS,
            repeat=1 if quick else 3,
            live=live,
        )


@bench_app.command("pubsub")
def pubsub(
    workload: str = typer.Option(
        "both", help="a: seed 001's monitoring experiments; b: seed 000's 800 B topics; both."
    ),
    experiments: str | None = typer.Option(
        None, help='Workload a: concurrent experiments per step (default "1,2,3,4,5,6").'
    ),
    topics: str | None = typer.Option(
        None, help='Workload b: topics per step (default "1,5,10,15,20").'
    ),
    seconds: float | None = typer.Option(
        None, min=1.0, help="Seconds per step and bus (default 10; quick 2)."
    ),
    quick: bool = typer.Option(
        False, "--quick", help="CI-sized smoke run: 1-2 experiments, 1 and 5 topics, 2 s steps."
    ),
    url: str | None = typer.Option(
        None, help="Target a running broker (nats://...) instead of starting nats-server."
    ),
    broker_pid: int | None = typer.Option(
        None, help="PID of the broker at --url, to measure its CPU (when it is local)."
    ),
    producers: int = typer.Option(2, min=1, help="Producer processes."),
    consumers: int = typer.Option(2, min=1, help="Consumer processes."),
) -> None:
    """The bus under the sources' monitoring workloads: JetStream vs core NATS, Sangrenel-style
    batch write latency, I/O message ratio and broker CPU."""
    from nfaas.bench import pubsub as experiment

    if workload not in ("a", "b", "both"):
        raise typer.BadParameter("must be a, b or both", param_hint="--workload")
    try:
        exp_levels = experiment.parse_levels(experiments, "--experiments") if experiments else None
        topic_levels = experiment.parse_levels(topics, "--topics") if topics else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    if url is not None and not url.startswith(("nats://", "tls://")):
        raise typer.BadParameter(f"{url!r} is not a nats:// URL", param_hint="--url")
    experiment.run(
        workload,
        experiments=exp_levels,
        topic_counts=topic_levels,
        seconds=seconds,
        quick=quick,
        url=url,
        broker_pid=broker_pid,
        producers=producers,
        consumers=consumers,
    )


@bench_app.command("async")
def async_calls(
    connections: int = typer.Option(32, help="wrk connections for the accept rate."),
    seconds: int = typer.Option(10, help="Seconds per wrk run."),
    rounds: int = typer.Option(3, help="Alternating rounds of async accept and sync invoke."),
    calls: int = typer.Option(10_000, help="Calls in the kill -9 run."),
) -> None:
    """Async calls: accept rate vs the sync path, and none lost across kill -9 of nats-server
    and of nfaas in the middle of a run."""
    from nfaas.bench.async_calls import run

    run(connections, seconds, rounds, calls)


@bench_app.command("monitor")
def monitor(
    runs: int = typer.Option(20, help="Create+delete pairs per mode."),
    topics: int = typer.Option(2, help="Topics per chain call."),
    shell_pools: str = typer.Option(
        "2,5", help="Shell-pool sizes, one platform each; the first is the headline."
    ),
) -> None:
    """Monitoring management chains (seed 001 §IV-C): warm vs cold vs always-on."""
    from nfaas.bench.monitor_chains import run

    run(runs, topics, tuple(int(x) for x in shell_pools.split(",")))


@bench_app.command("broker-vnf")
def broker_vnf(
    topics: str = typer.Option("1,5,10,15,20", help="Topic counts (5.12 Mb/s each)."),
    seconds: float = typer.Option(10.0, help="Seconds per step."),
) -> None:
    """Seed 000's broker VNF: nats-server as a container-tier command function, workload (b)."""
    from nfaas.bench.broker_vnf import run

    run(tuple(int(x) for x in topics.split(",")), seconds)
