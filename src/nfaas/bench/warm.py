"""``nfaas bench warm``: warm invocations of hello through the gateway, driven by wrk.

Baseline in the same run: the bare HTTP stack (uvicorn + uvloop + httptools) answering a
constant "Hello" with no platform behind it.
"""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import httpx

from nfaas.bench import baseline_asgi
from nfaas.bench.harness import PlatformProcess, examples_dir, free_port
from nfaas.bench.report import markdown, print_table, save
from nfaas.bench.wrk import run_wrk

SPEC = {
    "scale": {"min": 1, "max": 2, "target_concurrency": 32, "idle_timeout": "1h"},
    "public": True,
}


def _baseline(connections: int, seconds: int) -> dict[str, float]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, baseline_asgi.__file__, str(port)])
    try:
        for _ in range(200):
            try:
                httpx.get(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except httpx.TransportError:
                time.sleep(0.05)
        return run_wrk(f"http://127.0.0.1:{port}/", connections, seconds)
    finally:
        proc.terminate()
        proc.wait(10)


def run(connections: int = 32, seconds: int = 10, rounds: int = 3) -> dict[str, Any]:
    nfaas_runs, base_runs = [], []
    with PlatformProcess() as platform:
        platform.deploy("hello", examples_dir() / "hello", SPEC)
        url = f"{platform.url}/function/hello"
        httpx.post(url, content=b"warm-up").raise_for_status()
        run_wrk(url, connections, 2)  # let the instances and the JIT-less caches settle
        for _ in range(rounds):  # alternate so both see the same machine conditions
            nfaas_runs.append(run_wrk(url, connections, seconds))
            base_runs.append(_baseline(connections, seconds))
        replicas = platform.describe("hello")["replicas"]

    def median(runs: list[dict[str, float]], key: str) -> float:
        values = sorted(r[key] for r in runs)
        return values[len(values) // 2]

    keys = ("requests_per_s", "p50_ms", "p90_ms", "p99_ms")
    nf = {k: median(nfaas_runs, k) for k in keys}
    base = {k: median(base_runs, k) for k in keys}
    rows = [
        [
            "nfaas gateway → warm hello",
            f"{nf['requests_per_s']:.0f}",
            f"{nf['p50_ms']:.2f}",
            f"{nf['p90_ms']:.2f}",
            f"{nf['p99_ms']:.2f}",
        ],
        [
            "baseline: bare uvicorn constant reply",
            f"{base['requests_per_s']:.0f}",
            f"{base['p50_ms']:.2f}",
            f"{base['p90_ms']:.2f}",
            f"{base['p99_ms']:.2f}",
        ],
    ]
    header = ["", "req/s", "p50 ms", "p90 ms", "p99 ms"]
    print_table(
        f"warm invocation, {connections} keep-alive connections, wrk (median of {rounds})",
        header,
        rows,
    )
    result = {
        "experiment": "warm",
        "connections": connections,
        "seconds": seconds,
        "rounds": rounds,
        "replicas": replicas,
        "nfaas": nf,
        "baseline_uvicorn": base,
        "ratio_of_baseline_throughput": nf["requests_per_s"] / base["requests_per_s"],
        "runs": {"nfaas": nfaas_runs, "baseline": base_runs},
        "target": {"requests_per_s": 5000, "p50_ms": 2.0},
        "markdown": markdown(header, rows),
    }
    print(
        f"nfaas reaches {result['ratio_of_baseline_throughput']:.0%} of the bare server's throughput"
    )
    path = save("warm", result)
    print(f"results: {path}")
    return result
