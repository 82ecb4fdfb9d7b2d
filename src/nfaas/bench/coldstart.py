"""``nfaas bench coldstart``: first request of a scaled-to-zero function, end to end.

Baseline in the same run: a fresh ``python3`` started per request running the same handler.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from nfaas.bench import fresh_python
from nfaas.bench.harness import PlatformProcess, examples_dir
from nfaas.bench.report import markdown, print_table, save, summary

IDLE_PAUSE = 0.02  # seconds of quiet before each measured request
HELLO_SPEC = {"scale": {"min": 0, "max": 1, "idle_timeout": "1h"}, "public": True}


def wait_for_zero(platform: PlatformProcess, name: str) -> None:
    for _ in range(200):
        if platform.describe(name)["replicas"] == 0:
            return
        time.sleep(0.005)
    raise RuntimeError(f"{name} did not scale to zero")


def wait_for_quiet(platform: PlatformProcess) -> None:
    """Until the shell pool is refilled and the stopped instance is gone: an idle node."""
    for _ in range(2000):
        pools = [d["shell_pool"] for d in platform.api.get("/system/info").json()["drivers"]]
        if all(p["ready"] >= p["target"] and p["filling"] == 0 for p in pools):
            break
        time.sleep(0.005)
    time.sleep(IDLE_PAUSE)


def measure_nfaas(
    platform: PlatformProcess, name: str, runs: int
) -> tuple[list[float], list[dict[str, float]]]:
    totals: list[float] = []
    with httpx.Client(base_url=platform.url, timeout=30) as client:
        client.get("/healthz")  # open the keep-alive connection outside the measurement
        for _ in range(runs):
            platform.scale(name, 0)
            wait_for_zero(platform, name)
            wait_for_quiet(platform)
            started = time.perf_counter()
            response = client.post(f"/function/{name}", content=b"bench")
            elapsed = time.perf_counter() - started
            if response.status_code != 200 or response.headers.get("x-nfaas-cold-start") != "1":
                last_error = platform.describe(name)["status"]["last_error"]
                raise RuntimeError(
                    f"{name}: expected a cold 200, got {response.status_code} {response.text!r}"
                    f" (last error: {last_error})"
                )
            totals.append(elapsed * 1000)
    records = platform.describe(name)["status"]["cold_starts"]
    return totals, [r["durations_ms"] for r in records]


def measure_warm(platform: PlatformProcess, name: str, runs: int) -> list[float]:
    """The same request to a warm instance after the same idle pause as a cold start.

    The floor set by HTTP, the gateway and waking an idle machine (on a VM an idle vCPU
    costs about a millisecond to wake), which the cold-start numbers include too.
    """
    totals = []
    with httpx.Client(base_url=platform.url, timeout=30) as client:
        client.post(f"/function/{name}", content=b"bench")
        for _ in range(runs):
            time.sleep(IDLE_PAUSE)
            started = time.perf_counter()
            client.post(f"/function/{name}", content=b"bench").raise_for_status()
            totals.append((time.perf_counter() - started) * 1000)
    return totals


def measure_fresh_python(handler_dir: Path, runs: int) -> list[float]:
    totals = []
    for _ in range(runs):
        started = time.perf_counter()
        done = subprocess.run(
            [sys.executable, fresh_python.__file__, str(handler_dir)],
            input=b"bench",
            capture_output=True,
            check=True,
        )
        totals.append((time.perf_counter() - started) * 1000)
        assert b"Hello" in done.stdout, done.stdout
    return totals


def run(runs: int = 50, out_dir: Path | None = None) -> dict[str, Any]:
    hello = examples_dir() / "hello"
    with PlatformProcess() as platform, PlatformProcess(["--shell-pool", "0"]) as unprepared:
        platform.deploy("hello", hello, HELLO_SPEC)
        unprepared.deploy("hello", hello, HELLO_SPEC)
        # interleave so all three see the same machine conditions
        nfaas_ms: list[float] = []
        fork_ms: list[float] = []
        base_ms: list[float] = []
        part = max(1, runs // 5)
        for _ in range(5):
            nfaas_ms += measure_nfaas(platform, "hello", part)[0]
            fork_ms += measure_nfaas(unprepared, "hello", part)[0]
            base_ms += measure_fresh_python(hello, part)
        warm_ms = measure_warm(platform, "hello", runs)
        phases = platform.describe("hello")["status"]["cold_start_percentiles_ms"]
        fork_phases = unprepared.describe("hello")["status"]["cold_start_percentiles_ms"]
    nf, fork, base = summary(nfaas_ms), summary(fork_ms), summary(base_ms)
    warm = summary(warm_ms)
    result = {
        "experiment": "coldstart",
        "runs": len(nfaas_ms),
        "nfaas_ms": nf,
        "nfaas_no_shell_pool_ms": fork,
        "fresh_python_ms": base,
        "warm_reference_ms": warm,
        "speedup_p50": base["p50"] / nf["p50"],
        "speedup_p50_no_shell_pool": base["p50"] / fork["p50"],
        "server_phases_ms": phases,
        "server_phases_no_shell_pool_ms": fork_phases,
        "target": {"p50_ms": 5.0, "speedup": 10.0},
    }
    rows = [
        [
            name,
            f"{v['p50']:.2f}",
            f"{v['p90']:.2f}",
            f"{v['p99']:.2f}",
            f"{base['p50'] / v['p50']:.1f}x",
        ]
        for name, v in (
            ("nfaas, prepared shell (default)", nf),
            ("nfaas, empty shell pool (fork on demand)", fork),
            ("baseline: fresh python3 per request", base),
            ("reference: warm request after the same pause", warm),
        )
    ]
    print_table("cold start, end to end (ms)", ["", "p50", "p90", "p99", "vs baseline"], rows)
    phase_rows = [
        [p, f"{v['p50']:.3f}", f"{v['p90']:.3f}", f"{v['p99']:.3f}"] for p, v in phases.items()
    ]
    print_table("server-side phases (ms)", ["phase", "p50", "p90", "p99"], phase_rows)
    print(f"speed-up at p50: {result['speedup_p50']:.1f}x")
    result["markdown"] = markdown(
        ["", "p50 ms", "p90 ms", "p99 ms", "speed-up vs baseline (p50)"], rows
    )
    result["phases_markdown"] = markdown(["phase", "p50 ms", "p90 ms", "p99 ms"], phase_rows)
    path = save("coldstart", result, out_dir) if out_dir else save("coldstart", result)
    _plot([nfaas_ms, fork_ms, base_ms], path.with_suffix(".png"))
    print(f"results: {path}")
    return result


def _plot(series: list[list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.boxplot(
        series, tick_labels=["prepared shell", "fork on demand", "fresh python3"], showfliers=False
    )
    ax.set_yscale("log")
    ax.set_ylabel("ms (log)")
    ax.set_title("Cold start, end to end")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
