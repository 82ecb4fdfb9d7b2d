"""``nfaas bench density``: idle warm instances of hello — memory per instance, creation rate.

Baseline in the same run: fresh python3 processes that import the same handler and wait,
started concurrently (what a platform without a zygote pays per instance).
"""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

from nfaas.bench.harness import PlatformProcess, examples_dir
from nfaas.bench.report import markdown, print_table, save, summary
from nfaas.sandbox.procstats import read_stats

WAITER = (
    "import importlib.util,sys;"
    "s=importlib.util.spec_from_file_location('handler',sys.argv[1]+'/handler.py');"
    "m=importlib.util.module_from_spec(s);s.loader.exec_module(m);"
    "sys.stdout.write('ready\\n');sys.stdout.flush();sys.stdin.read()"
)


def _nfaas(platform: PlatformProcess, count: int) -> dict[str, Any]:
    spec = {"scale": {"min": 0, "max": count, "idle_timeout": "1h"}, "public": True}
    platform.deploy("dense", examples_dir() / "hello", spec)
    started = time.perf_counter()
    platform.scale("dense", count)
    while True:
        # the function list is the cheapest place to read the replica count
        listed = platform.api.get("/system/functions").raise_for_status().json()
        replicas = next(f["replicas"] for f in listed if f["name"] == "dense")
        if replicas >= count:
            break
        if time.perf_counter() - started > 600:
            raise RuntimeError(f"only {replicas} of {count} instances started")
        time.sleep(0.02)
    elapsed = time.perf_counter() - started
    described = platform.describe("dense")
    pids = [inst["pid"] for inst in described["status"]["instances"]]
    stats = [read_stats(pid) for pid in pids]
    return {
        "instances": len(pids),
        "seconds": elapsed,
        "rate_per_s": len(pids) / elapsed,
        "uss_mib": summary([s.uss / 1024**2 for s in stats]),
        "pss_mib": summary([s.pss / 1024**2 for s in stats]),
        "rss_mib": summary([s.rss / 1024**2 for s in stats]),
        "zygote_pss_mib": read_stats(platform.zygote_pid()).pss / 1024**2,
    }


def _fresh(count: int) -> dict[str, Any]:
    hello = str(examples_dir() / "hello")
    started = time.perf_counter()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WAITER, hello], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        for _ in range(count)
    ]
    for proc in procs:
        assert proc.stdout is not None
        proc.stdout.readline()
    elapsed = time.perf_counter() - started
    stats = [read_stats(p.pid) for p in procs]
    for proc in procs:
        proc.kill()
        proc.wait()
    return {
        "instances": count,
        "seconds": elapsed,
        "rate_per_s": count / elapsed,
        "uss_mib": summary([s.uss / 1024**2 for s in stats]),
        "pss_mib": summary([s.pss / 1024**2 for s in stats]),
        "rss_mib": summary([s.rss / 1024**2 for s in stats]),
    }


def run(count: int = 1000, baseline_count: int = 200) -> dict[str, Any]:
    with PlatformProcess(["--shell-pool", "0"]) as platform:
        nf = _nfaas(platform, count)
    base = _fresh(baseline_count)
    header = ["", "instances", "create/s", "USS MiB p50", "PSS MiB p50", "RSS MiB p50"]
    rows = [
        [
            name,
            str(r["instances"]),
            f"{r['rate_per_s']:.0f}",
            f"{r['uss_mib']['p50']:.2f}",
            f"{r['pss_mib']['p50']:.2f}",
            f"{r['rss_mib']['p50']:.2f}",
        ]
        for name, r in (("nfaas (zygote fork)", nf), ("baseline: fresh python3 each", base))
    ]
    print_table("idle warm instances of hello", header, rows)
    result = {
        "experiment": "density",
        "nfaas": nf,
        "baseline_fresh_python": base,
        "rate_ratio": nf["rate_per_s"] / base["rate_per_s"],
        "uss_ratio": base["uss_mib"]["p50"] / nf["uss_mib"]["p50"],
        "target": {"uss_mib": 3.0, "rate_per_s": 200},
        "markdown": markdown(header, rows),
    }
    path = save("density", result)
    print(f"results: {path}")
    return result
