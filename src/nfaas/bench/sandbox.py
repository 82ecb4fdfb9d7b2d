"""``nfaas bench sandbox``: the isolation tiers side by side in one run.

Per tier: shell preparation time and creation rate, cold start from a prepared shell and from
an empty pool (end to end through the gateway), memory per idle instance (PSS of all of the
sandbox's processes), disk footprint, pause → resume latency. Baselines in the same run:
``runc run`` of a fresh container that starts python3 with the handler.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from nfaas.bench import fresh_python
from nfaas.bench.coldstart import IDLE_PAUSE, measure_nfaas
from nfaas.bench.harness import PlatformProcess, examples_dir
from nfaas.bench.report import markdown, print_table, save, summary
from nfaas.sandbox import oci
from nfaas.sandbox.base import Driver
from nfaas.sandbox.container import ContainerDriver
from nfaas.sandbox.guest_image import find_kernel
from nfaas.sandbox.microvm import MicroVmDriver, cache_dir
from nfaas.sandbox.process import ProcessDriver


def available_tiers() -> list[str]:
    tiers = ["process"]
    if shutil.which("runc") and os.getuid() == 0:
        tiers.append("container")
    if shutil.which("qemu-system-x86_64") and find_kernel() is not None:
        tiers.append("microvm")
    return tiers


def scaled(tier: str, count: int) -> int:
    """A guest under TCG takes seconds of CPU to boot: fewer of them."""
    return max(3, count // 10) if tier == "microvm" else count


def spec_for(tier: str, **scale: Any) -> dict[str, Any]:
    return {
        "isolation": tier,
        "public": True,
        "scale": {"min": 0, "max": 1, "idle_timeout": "1h", **scale},
    }


async def _prepare_times(driver: Driver, count: int) -> tuple[list[float], float]:
    """Sequential preparation times (ms), then the rate of ``count`` concurrent ones."""
    await driver.start()
    try:
        times = []
        for _ in range(count):
            started = time.perf_counter()
            shell = await driver.prepare(ahead=True)
            times.append((time.perf_counter() - started) * 1000)
            await shell.discard()
        started = time.perf_counter()
        shells = await asyncio.gather(*(driver.prepare(ahead=True) for _ in range(count)))
        rate = count / (time.perf_counter() - started)
        for shell in shells:
            await shell.discard()
        return times, rate
    finally:
        await driver.close()


def prepare_stats(tier: str, count: int) -> dict[str, Any]:
    root = Path(tempfile.mkdtemp(prefix="nfaas-bench-prep-", dir="/tmp"))
    root.chmod(0o711)
    try:
        drivers: dict[str, Callable[[Path], Driver]] = {
            "process": ProcessDriver,
            "container": ContainerDriver,
            "microvm": MicroVmDriver,
        }
        times, rate = asyncio.run(_prepare_times(drivers[tier](root), scaled(tier, count)))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return {"prepare_ms": summary(times), "creation_rate_per_s": rate}


def runc_baseline(runs: int) -> list[float]:
    """A fresh container per request: runc run of python3 answering once with the handler."""
    hello = examples_dir() / "hello"
    root = Path(tempfile.mkdtemp(prefix="nfaas-bench-runc-", dir="/tmp"))
    root.chmod(0o711)
    try:
        binds = [*oci.read_only_paths(), str(hello)]
        rootfs = root / "rootfs"
        oci.prepare_rootfs(rootfs, binds)
        python = str(Path(sys.prefix) / "bin" / "python3")
        config = oci.shell_config(
            "baseline",
            [python, fresh_python.__file__, str(hello)],
            rootfs,
            binds,
            "/nfaas/bench-baseline",
        )
        config["process"]["user"] = {"uid": 65534, "gid": 65534}
        (root / "config.json").write_text(json.dumps(config))
        times = []
        for index in range(runs):
            started = time.perf_counter()
            done = subprocess.run(
                ["runc", "run", "--bundle", str(root), f"nfaas-bench-{os.getpid()}-{index}"],
                input=b"bench",
                capture_output=True,
                check=True,
            )
            times.append((time.perf_counter() - started) * 1000)
            assert b"Hello" in done.stdout, done.stdout + done.stderr
        return times
    finally:
        shutil.rmtree(root, ignore_errors=True)


def resume_latency(platform: PlatformProcess, tier: str, runs: int) -> dict[str, Any]:
    name = f"pause-{tier}"
    platform.deploy(name, examples_dir() / "hello", spec_for(tier, pause_after="50ms"))
    end_to_end = []
    with httpx.Client(base_url=platform.url, timeout=30) as client:
        client.post(f"/function/{name}", content=b"x").raise_for_status()
        for _ in range(runs):
            for _ in range(400):
                if platform.describe(name)["status"]["paused"]:
                    break
                time.sleep(0.005)
            time.sleep(IDLE_PAUSE)
            started = time.perf_counter()
            client.post(f"/function/{name}", content=b"x").raise_for_status()
            end_to_end.append((time.perf_counter() - started) * 1000)
    status = platform.describe(name)["status"]
    return {
        "resume_ms_p50": status["resume_ms_p50"],
        "resumes": status["resumes"],
        "resumed_request_ms": summary(end_to_end),
    }


def idle_memory(platform: PlatformProcess, tier: str, count: int) -> dict[str, Any]:
    name = f"idle-{tier}"
    platform.deploy(
        name,
        examples_dir() / "hello",
        {**spec_for(tier), "scale": {"max": count, "idle_timeout": "1h"}},
    )
    platform.scale(name, count)
    deadline = time.monotonic() + 300
    while platform.describe(name)["replicas"] < count and time.monotonic() < deadline:
        time.sleep(0.1)
    instances = platform.describe(name)["status"]["instances"]
    if not instances:
        raise RuntimeError(f"{tier}: no idle instance came up in 300 s")
    pss = [inst["pss_bytes"] / 1024**2 for inst in instances]
    # a microVM's QEMU outside the guest's RAM: the figure Firecracker's 5 MiB compares with
    vmm = [inst["vmm_pss_bytes"] / 1024**2 for inst in instances if "vmm_pss_bytes" in inst]
    platform.scale(name, 0)
    return {
        "instances_requested": count,
        "instances_held": len(instances),
        "pss_mib": summary(pss),
        **({"vmm_pss_mib": summary(vmm)} if vmm else {}),
    }


def disk_footprint(tier: str) -> dict[str, Any]:
    if tier == "microvm":
        images = sorted((cache_dir() / "guest").glob("initrd-*.cpio"), key=os.path.getmtime)
        kernel = find_kernel()
        qemu = shutil.which("qemu-system-x86_64") or ""
        return {
            "per_instance_kib": 0.0,
            "tier_binary_mib": round(os.path.getsize(qemu) / 1024**2, 1) if qemu else 0.0,
            "guest_image_mib": round(os.path.getsize(images[-1]) / 1024**2, 1) if images else 0.0,
            "kernel_mib": round(os.path.getsize(kernel) / 1024**2, 1) if kernel else 0.0,
            "note": "one shared kernel and initramfs; guest memory is not backed by files",
        }
    if tier == "process":
        return {
            "per_instance_kib": 0.0,
            "tier_binary_mib": 0.0,
            "note": "forked from the zygote; no files",
        }
    runtime = shutil.which("runc") or ""
    config = oci.shell_config("x", ["python3"], Path("/"), oci.read_only_paths(), "/x")
    return {
        "per_instance_kib": round(len(json.dumps(config)) / 1024, 1),
        "tier_binary_mib": round(os.path.getsize(runtime) / 1024**2, 1) if runtime else 0.0,
        "note": "config.json per shell; the root is an empty shared directory plus read-only binds",
    }


def run(runs: int = 40, idle: int = 50) -> dict[str, Any]:
    tiers = available_tiers()
    results: dict[str, Any] = {"experiment": "sandbox", "tiers": {}}
    empty_pools = ["--shell-pool", "0", "--container-pool", "0", "--microvm-pool", "0"]
    with PlatformProcess() as warm, PlatformProcess(empty_pools) as cold:
        for tier in tiers:
            warm.deploy(f"hello-{tier}", examples_dir() / "hello", spec_for(tier))
            cold.deploy(f"hello-{tier}", examples_dir() / "hello", spec_for(tier))
        prepared: dict[str, list[float]] = {t: [] for t in tiers}
        empty: dict[str, list[float]] = {t: [] for t in tiers}
        baseline: list[float] = []
        part = max(1, runs // 5)
        for _ in range(5):  # interleaved, so all see the same machine
            for tier in tiers:
                prepared[tier] += measure_nfaas(warm, f"hello-{tier}", scaled(tier, part))[0]
                empty[tier] += measure_nfaas(cold, f"hello-{tier}", scaled(tier, part))[0]
            if "container" in tiers:
                baseline += runc_baseline(part)
        drivers = warm.api.get("/system/info").json()["drivers"]
        microvm = next((d for d in drivers if d["driver"] == "microvm"), None)
        if microvm:
            results["microvm_accel"] = {
                "accel": microvm["accel"],
                "kvm_probe": microvm["kvm_probe"],
            }
        for tier in tiers:
            phases = warm.describe(f"hello-{tier}")["status"]["cold_start_percentiles_ms"]
            results["tiers"][tier] = {
                "cold_prepared_ms": summary(prepared[tier]),
                "cold_empty_pool_ms": summary(empty[tier]),
                "phases_ms": phases,
                **resume_latency(warm, tier, max(5, scaled(tier, runs) // 2)),
                **idle_memory(warm, tier, scaled(tier, idle)),
                "disk": disk_footprint(tier),
            }
    for tier in tiers:
        results["tiers"][tier].update(prepare_stats(tier, 20))
    if baseline:
        results["baseline_runc_run_ms"] = summary(baseline)
    rows = []
    for tier, r in results["tiers"].items():
        ratio = (
            f"{results['baseline_runc_run_ms']['p50'] / r['cold_prepared_ms']['p50']:.1f}x"
            if baseline
            else "-"
        )
        rows.append(
            [
                tier,
                f"{r['prepare_ms']['p50']:.1f}",
                f"{r['creation_rate_per_s']:.0f}",
                f"{r['cold_prepared_ms']['p50']:.2f}",
                f"{r['cold_empty_pool_ms']['p50']:.2f}",
                ratio,
                f"{r['pss_mib']['p50']:.2f}",
                f"{r['vmm_pss_mib']['p50']:.1f}" if "vmm_pss_mib" in r else "-",
                str(r["instances_held"]),
                f"{r['resume_ms_p50']:.3f}" if r["resume_ms_p50"] is not None else "-",
                f"{r['disk']['per_instance_kib']}",
            ]
        )
    if baseline:
        b = results["baseline_runc_run_ms"]
        rows.append(
            [
                "baseline: runc run + python3",
                "-",
                "-",
                f"{b['p50']:.2f}",
                f"{b['p50']:.2f}",
                "1.0x",
                "-",
                "-",
                "-",
                "-",
                "-",
            ]
        )
    header = [
        "tier",
        "prepare ms p50",
        "shells/s",
        "cold (prepared) ms p50",
        "cold (empty pool) ms p50",
        "vs runc run",
        "PSS MiB/instance",
        "of which VMM MiB",
        "idle held",
        "resume ms p50",
        "disk KiB/instance",
    ]
    print_table("isolation tiers side by side", header, rows)
    results["markdown"] = markdown(header, rows)
    path = save("sandbox", results)
    _plot(results, path.with_suffix(".png"))
    print(f"results: {path}")
    return results


def _plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels, values = [], []
    for tier, r in results["tiers"].items():
        labels += [f"{tier}\nprepared", f"{tier}\nempty pool"]
        values += [r["cold_prepared_ms"]["p50"], r["cold_empty_pool_ms"]["p50"]]
    if "baseline_runc_run_ms" in results:
        labels.append("runc run\n+ python3")
        values.append(results["baseline_runc_run_ms"]["p50"])
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.bar(labels, values)
    ax.set_yscale("log")
    ax.set_ylabel("cold start p50, ms (log)")
    ax.set_title("Cold start per isolation tier")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
