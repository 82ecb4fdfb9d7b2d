"""Nothing accepted is lost: kill -9 of nats-server, then of nfaas itself, in a run of calls.

The function's side effect is a POST of its call id to a recorder in this test; redelivery is
allowed (a call whose outcome was not yet recorded when the process died runs again), so the
check is: every accepted call id reached the recorder, and every call's record is succeeded.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from platform_harness import Platform, pid_gone, wait_until

EFFECT = """
import os
import urllib.request

def handle(event, context):
    request = urllib.request.Request(
        os.environ["RECORDER"], data=event.headers["x-call-id"].encode(), method="POST"
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        answer.read()
    return "recorded"
"""


class Recorder:
    def __init__(self) -> None:
        self.ids: Counter[str] = Counter()
        self.lock = threading.Lock()
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                call_id = self.rfile.read(int(self.headers["content-length"])).decode()
                with recorder.lock:
                    recorder.ids[call_id] += 1
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def distinct(self) -> int:
        with self.lock:
            return len(self.ids)


def queue_calls(platform: Platform, name: str, count: int) -> list[str]:
    """Accept ``count`` calls with ids of our own. While the bus restarts an accept may be
    refused (503: not stored); a client re-sends it with the same X-Call-Id, which the
    platform deduplicates — so only 202s count, and every id ends up accepted once."""
    accepted = []
    with httpx.Client(base_url=platform.url, timeout=30) as http:
        for _ in range(count):
            call_id = uuid.uuid4().hex
            for _attempt in range(20):
                answer = http.post(
                    f"/async-function/{name}",
                    headers={"authorization": f"Bearer {platform.token}", "X-Call-Id": call_id},
                )
                if answer.status_code != 503:
                    break
                time.sleep(0.5)
            assert answer.status_code == 202, answer.text
            assert answer.headers["x-call-id"] == call_id
            accepted.append(call_id)
    return accepted


def kill_nfaas(platform: Platform) -> None:
    assert platform.proc is not None
    os.kill(platform.proc.pid, signal.SIGKILL)
    platform.proc.wait()
    platform.proc = None


@pytest.mark.long
def test_no_accepted_call_is_lost_across_kill_9(
    platform_factory: Callable[..., Platform], unique_name: Callable[[str], str]
) -> None:
    recorder = Recorder()
    try:
        platform = platform_factory()
        name = unique_name("durable")
        platform.deploy(name, EFFECT, {"env": {"RECORDER": recorder.url}, "scale": {"max": 2}})
        accepted = queue_calls(platform, name, 300)
        wait_until(lambda: recorder.distinct() >= 60, timeout=60, what="60 calls run")

        nats = platform.get("/system/info").json()["events"]["nats_server"]
        os.kill(nats["pid"], signal.SIGKILL)
        # accepted while the bus restarts: the publish waits for the reconnection
        accepted += queue_calls(platform, name, 20)
        wait_until(
            lambda: platform.get("/system/info").json()["events"]["nats_server"]["restarts"] >= 1
        )
        wait_until(lambda: recorder.distinct() >= 150, timeout=60, what="150 calls run")

        kill_nfaas(platform)
        # its nats-server follows it (parent-death signal), flushing the store
        wait_until(lambda: pid_gone(nats["pid"]), timeout=10)
        platform.start()
        accepted += queue_calls(platform, name, 20)

        wait_until(
            lambda: recorder.distinct() >= len(set(accepted)),
            timeout=120,
            what="every accepted call to run",
        )
        assert set(recorder.ids) == set(accepted)
        states = Counter(
            platform.get(f"/system/calls/{call_id}").json()["state"] for call_id in accepted
        )
        assert states == {"succeeded": len(accepted)}
        # redelivery is allowed, but only for calls caught in flight by a kill
        redelivered = sum(n - 1 for n in recorder.ids.values())
        assert redelivered <= 2 * 4 * 2, recorder.ids.most_common(5)
    finally:
        recorder.server.shutdown()
        recorder.server.server_close()
