"""``nfaas bench broker-vnf``: seed 000's broker-VNF experiment on nfaas's own tiers.

The broker (nats-server with JetStream, examples/broker-nats) runs as a `runtime: command`
function in the container tier with a bridged network; `nfaas bench pubsub`'s workload (b)
(1 to 20 topics of 5.12 Mb/s, 800 B messages) is driven at the instance's address. Seed 000's
Kafka broker on Kata + Firecracker lost 3.5 % at 51.2 Mb/s (10 topics); the target is none.
JetStream's store is the function's volume (on the node's disk, ``max_file_store: 1GB``).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import yaml

from nfaas.bench.harness import PlatformProcess, examples_dir
from nfaas.bench.pubsub import RESULTS, Settings, run_async

TOPICS = (1, 5, 10, 15, 20)
# 20 streams within the example's 1 GB store (its volume); a 10 s step at 5.12 Mb/s puts
# 6.4 MB in each, so none discards during a step
VNF_STREAM_BYTES = 32 * 1024 * 1024


def _broker_spec() -> dict[str, Any]:
    manifest = yaml.safe_load((examples_dir() / "broker-nats" / "stack.yml").read_text())
    spec: dict[str, Any] = dict(manifest["functions"]["broker-nats"])
    spec.pop("handler")
    return spec


def run(topics: tuple[int, ...] = TOPICS, seconds: float = 10.0) -> dict[str, Any]:
    with PlatformProcess(["--microvm-pool", "0"]) as platform:
        platform.deploy("broker-nats", examples_dir() / "broker-nats", _broker_spec())
        deadline = time.monotonic() + 60
        instance: dict[str, Any] = {}
        while time.monotonic() < deadline:
            slots = platform.describe("broker-nats")["status"].get("instances", [])
            ready = [s for s in slots if s.get("address") and s.get("pid")]
            if ready:
                instance = ready[0]
                break
            time.sleep(0.2)
        if not instance:
            raise RuntimeError("the broker VNF did not start")
        time.sleep(1.0)  # the program listens shortly after it is spawned
        url = f"nats://{instance['address']}:4222"
        settings = Settings(seconds=seconds, warmup=min(2.0, seconds / 4))
        settings = Settings(**{**settings.__dict__, "stream_max_bytes": VNF_STREAM_BYTES})
        return asyncio.run(
            run_async(
                ["b"],
                [],
                topics,
                settings,
                url=url,
                broker_pid=int(instance["pid"]),
                out_dir=RESULTS,
                suffix="-broker-vnf",
            )
        )
