"""Keep-alive with a paused state: idle instances are frozen after pause_after, use no CPU,
and the next request thaws the same instance (no cold start)."""

from __future__ import annotations

import os
import shutil
import time

import pytest
from platform_harness import Platform, wait_until

TICKER = """
import os, threading, time

def spin():
    while True:
        time.sleep(0.001)  # a background thread that would use CPU if not frozen

threading.Thread(target=spin, daemon=True).start()

def handle(event, context):
    return {"instance": context.instance_id}
"""

TIERS = ["process"]
if shutil.which("runc") and os.getuid() == 0:
    TIERS.append("container")


def cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


@pytest.mark.parametrize("isolation", TIERS)
def test_idle_instance_is_paused_and_resumed_by_the_next_request(
    platform: Platform, unique_name, isolation: str
) -> None:
    name = unique_name(f"pause-{isolation}")
    spec = {"isolation": isolation, "scale": {"idle_timeout": "60s", "pause_after": "300ms"}}
    platform.deploy(name, TICKER, spec)
    first = platform.invoke(name)
    assert first.status_code == 200
    wait_until(
        lambda: platform.status(name)["paused"] == 1, timeout=5, what="the instance to pause"
    )
    instance = platform.status(name)["instances"][0]
    assert instance["paused"] is True
    ticks = cpu_ticks(instance["pid"])
    time.sleep(0.5)
    assert cpu_ticks(instance["pid"]) == ticks  # frozen: no CPU at all

    again = platform.invoke(name)
    assert again.status_code == 200
    assert "x-nfaas-cold-start" not in again.headers
    assert again.json() == first.json()  # the same instance, thawed
    status = platform.status(name)
    assert status["resumes"] >= 1 and status["resume_ms_p50"] is not None


def test_pause_after_is_validated(platform: Platform) -> None:
    sha = platform.upload({"handler.py": "def handle(e, c):\n    return 1\n"})
    body = {"name": "bad-pause", "bundle": sha, "spec": {"scale": {"pause_after": "-1s"}}}
    answer = platform.request("POST", "/system/functions", json=body)
    assert answer.status_code == 400
    assert answer.json()["field"] == "scale.pause_after"
