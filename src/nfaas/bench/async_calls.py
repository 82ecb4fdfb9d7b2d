"""``nfaas bench async``: how fast calls are accepted, and that none is lost across kill -9.

1. Accept rate: wrk POSTs to /async-function/noop (202 once stored in JetStream) and, in
   alternating rounds on the same platform, to /function/noop (the synchronous path) as the
   baseline; medians and their ratio.
2. Kill run: N calls whose side effect appends the call id to a file; nats-server is killed
   with SIGKILL at 30 % of the effects, nfaas itself at 60 % (and started again on the same
   data directory). The loader chooses the call ids and re-sends an accept that failed (nfaas
   was down) with the same id, which the platform deduplicates. Lost = accepted ids never seen
   in the file; duplicated side effects = ids seen more than once (redelivery of calls caught
   in flight; a handler deduplicates them by X-Call-Id).
"""

from __future__ import annotations

import asyncio
import os
import signal
import statistics
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import httpx

from nfaas.bench.harness import PlatformProcess
from nfaas.bench.report import machine, markdown, print_table, save
from nfaas.bench.wrk import run_wrk

NOOP = 'def handle(event, context):\n    return "ok"\n'
EFFECT = """
import os

def handle(event, context):
    call_id = event.headers["x-call-id"]
    line = (call_id + "\\n").encode()
    fd = os.open(os.environ["RUNS"], os.O_WRONLY | os.O_APPEND)
    try:
        os.write(fd, line)  # every run, redeliveries included (one O_APPEND write each)
    finally:
        os.close(fd)
    try:  # the side effect, deduplicated by call id as the platform's contract asks
        os.close(os.open(os.path.join(os.environ["EFFECTS"], call_id), os.O_CREAT | os.O_EXCL))
    except FileExistsError:
        return "already done"
    return "done"
"""
NO_GUESTS = ["--microvm-pool", "0", "--container-pool", "0"]  # process tier only
POST_LUA = 'wrk.method = "POST"\nwrk.body = "x"\n'


def _deploy_source(platform: PlatformProcess, name: str, source: str, spec: dict[str, Any]) -> None:
    folder = Path(tempfile.mkdtemp(prefix="nfaas-bench-fn-"))
    (folder / "handler.py").write_text(source)
    platform.deploy(name, folder, spec)


def accept_rate(connections: int, seconds: int, rounds: int) -> dict[str, Any]:
    script = Path(tempfile.mkdtemp()) / "post.lua"
    script.write_text(POST_LUA)
    runs: dict[str, list[dict[str, float]]] = {"async": [], "sync": []}
    with PlatformProcess(NO_GUESTS) as platform:
        spec = {"public": True, "scale": {"min": 1, "max": 2, "target_concurrency": 8}}
        _deploy_source(platform, "noop", NOOP, spec)
        httpx.post(f"{platform.url}/function/noop").raise_for_status()
        for _ in range(rounds):  # alternate, so both see the same machine conditions
            runs["async"].append(
                run_wrk(f"{platform.url}/async-function/noop", connections, seconds, 1, str(script))
            )
            runs["sync"].append(
                run_wrk(f"{platform.url}/function/noop", connections, seconds, 1, str(script))
            )
    out: dict[str, Any] = {"connections": connections, "seconds": seconds, "rounds": rounds}
    for path, results in runs.items():
        out[path] = {
            key: statistics.median(r[key] for r in results)
            for key in ("requests_per_s", "p50_ms", "p99_ms", "non_2xx")
        }
    out["async_over_sync"] = out["async"]["requests_per_s"] / max(out["sync"]["requests_per_s"], 1)
    return out


class Loader:
    """Accepts ``count`` calls with ids of its own, re-sending failed accepts until stored.

    Plain HTTP/1.1 over asyncio streams, one keep-alive connection per worker: a Python HTTP
    client library would be the bottleneck here (httpx's async client managed ~230 req/s)."""

    def __init__(self, url: str, token: str, count: int, concurrency: int = 32) -> None:
        parts = httpx.URL(url)
        self.host, self.port = parts.host, parts.port or 80
        self.token = token
        self.ids = [uuid.uuid4().hex for _ in range(count)]
        self.accepted: set[str] = set()
        self.resent = 0
        self.concurrency = concurrency
        self.started = self.finished = 0.0

    def _request(self, call_id: str) -> bytes:
        return (
            f"POST /async-function/effect HTTP/1.1\r\nHost: {self.host}\r\n"
            f"Authorization: Bearer {self.token}\r\nX-Call-Id: {call_id}\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()

    async def _worker(self, queue: list[str]) -> None:
        reader = writer = None
        while queue:
            call_id = queue.pop()
            while True:
                try:
                    if writer is None:
                        reader, writer = await asyncio.open_connection(self.host, self.port)
                    assert reader is not None
                    writer.write(self._request(call_id))
                    status = int((await reader.readline()).split()[1])
                    length = 0
                    while (line := await reader.readline()) not in (b"\r\n", b""):
                        name, _, value = line.partition(b":")
                        if name.lower() == b"content-length":
                            length = int(value)
                    await reader.readexactly(length)
                    if status == 202:
                        self.accepted.add(call_id)
                        break
                except (OSError, ValueError, IndexError, asyncio.IncompleteReadError):
                    if writer is not None:
                        writer.close()
                    reader = writer = None
                self.resent += 1
                await asyncio.sleep(0.2)
        if writer is not None:
            writer.close()

    async def _run(self) -> None:
        queue = list(reversed(self.ids))
        self.started = time.monotonic()
        await asyncio.gather(*(self._worker(queue) for _ in range(self.concurrency)))
        self.finished = time.monotonic()

    def run_in_thread(self) -> threading.Thread:
        thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)
        thread.start()
        return thread


def _runs(path: Path) -> Counter[str]:
    return Counter(path.read_text().split())


def _writable(path: Path, mode: int) -> Path:
    path.chmod(mode)  # instances run as their own uids
    return path


def kill_run(count: int, timeout: float = 900.0) -> dict[str, Any]:
    work = _writable(Path(tempfile.mkdtemp(prefix="nfaas-bench-effects-", dir="/tmp")), 0o777)
    runs = work / "runs.log"
    runs.touch()
    _writable(runs, 0o666)
    effects = work / "effects"
    effects.mkdir()
    _writable(effects, 0o777)
    events: list[str] = []
    with PlatformProcess(NO_GUESTS) as platform:
        spec = {
            "env": {"RUNS": str(runs), "EFFECTS": str(effects)},
            "scale": {"max": 2, "target_concurrency": 4},
        }
        _deploy_source(platform, "effect", EFFECT, spec)
        token = (platform.data / "admin.token").read_text().strip()
        loader = Loader(platform.url, token, count)
        started = time.monotonic()
        thread = loader.run_in_thread()
        killed_nats = killed_nfaas = False
        deadline = started + timeout
        while time.monotonic() < deadline:
            done = sum(1 for _ in os.scandir(effects))
            if not killed_nats and done >= 0.3 * count:
                pid = platform.api.get("/system/info").json()["events"]["nats_server"]["pid"]
                os.kill(pid, signal.SIGKILL)
                killed_nats = True
                events.append(f"kill -9 nats-server at {done} effects")
            elif killed_nats and not killed_nfaas and done >= 0.6 * count:
                platform.kill9()
                events.append(f"kill -9 nfaas at {done} effects")
                platform.launch()
                killed_nfaas = True
            if done >= count and not thread.is_alive():
                break
            time.sleep(0.2)
        drained = time.monotonic()
        thread.join(5)
        records = platform.api.get(
            "/system/calls", params={"function": "effect", "limit": 10000}
        ).json()
    seen = {entry.name for entry in os.scandir(effects)}
    ran = _runs(runs)
    states = Counter(r["state"] for r in records)
    lost = sorted(loader.accepted - seen)
    return {
        "calls": count,
        "accepted": len(loader.accepted),
        "accept_resent": loader.resent,
        "accepts_per_s": len(loader.accepted) / max(loader.finished - loader.started, 1e-9),
        "side_effects": len(seen),
        "lost": len(lost),
        "lost_sample": lost[:5],
        "unexpected": len(seen - set(loader.ids)),
        "runs": sum(ran.values()),
        # runs of a call id after its first (caught in flight by a kill): the handler finds
        # its side effect already made for that call id and makes no second one
        "calls_run_twice_or_more": sum(1 for n in ran.values() if n > 1),
        "redelivered_runs": sum(n - 1 for n in ran.values()),
        "run_seconds": drained - started,
        "calls_per_s_end_to_end": len(seen) / max(drained - started, 1e-9),
        "record_states": dict(states),
        "events": events,
    }


def run(connections: int, seconds: int, rounds: int, calls: int) -> dict[str, Any]:
    result = {
        "machine": machine(),
        "accept": accept_rate(connections, seconds, rounds),
        "kill_run": kill_run(calls),
    }
    path = save("async", result)
    a, k = result["accept"], result["kill_run"]
    rows = [
        [
            "POST /async-function (202 after JetStream ack)",
            f"{a['async']['requests_per_s']:.0f}",
            f"{a['async']['p50_ms']:.2f}",
            f"{a['async']['p99_ms']:.2f}",
        ],
        [
            "POST /function (sync, baseline)",
            f"{a['sync']['requests_per_s']:.0f}",
            f"{a['sync']['p50_ms']:.2f}",
            f"{a['sync']['p99_ms']:.2f}",
        ],
    ]
    header = ["path", "req/s", "p50 ms", "p99 ms"]
    print_table("Async accept rate (wrk, medians)", header, rows)
    print(markdown(header, rows))
    print(
        f"kill run: {k['accepted']} accepted, {k['lost']} lost, {k['side_effects']} side "
        f"effects, {k['redelivered_runs']} redelivered runs, states {k['record_states']}, "
        f"{k['calls_per_s_end_to_end']:.0f} calls/s end to end; {'; '.join(k['events'])}"
    )
    print(f"results: {path}")
    return result
