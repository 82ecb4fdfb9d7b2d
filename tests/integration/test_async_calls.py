"""Async invocation: POST /async-function, retries, dead letters, callbacks, cancel, CLI."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import nats
import pytest
from platform_harness import Platform, wait_until
from prometheus_client.parser import text_string_to_metric_families

ECHO = """
def handle(event, context):
    return {"statusCode": 200, "body": "ran " + event.headers.get("x-call-id", "") + " "
            + event.body.decode() + " attempt " + event.headers.get("x-nfaas-attempt", "")}
"""

# Fails with the status in the query until the attempt named there, then succeeds.
FLAKY = """
def handle(event, context):
    attempt = int(event.headers.get("x-nfaas-attempt", "1"))
    until = int(event.query.get("until", "1"))
    if attempt < until:
        headers = {"Retry-After": event.query["retry_after"]} if "retry_after" in event.query else {}
        return {"statusCode": int(event.query.get("status", "503")), "body": "not yet",
                "headers": headers}
    return {"statusCode": 200, "body": f"done on attempt {attempt}"}
"""

SLOW = """
import time

def handle(event, context):
    time.sleep(float(event.query.get("s", "1")))
    return "slept"
"""

FAST_RETRY = {"attempts": 3, "backoff": "100ms", "max_backoff": "1s"}


def queue(platform: Platform, name: str, body: bytes = b"", **kwargs: Any) -> str:
    answer = platform.request("POST", f"/async-function/{name}", content=body, **kwargs)
    assert answer.status_code == 202, answer.text
    call_id = answer.headers["x-call-id"]
    assert call_id
    return str(call_id)


def record(platform: Platform, call_id: str) -> dict[str, Any]:
    answer = platform.get(f"/system/calls/{call_id}")
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def settled(platform: Platform, call_id: str, timeout: float = 30.0) -> dict[str, Any]:
    """The call's record once it is final (succeeded, dead or cancelled)."""
    final = ("succeeded", "dead", "cancelled")
    return dict(
        wait_until(
            lambda: (r := record(platform, call_id))["state"] in final and r,
            timeout=timeout,
            what=f"call {call_id} to finish",
        )
    )


class Receiver:
    """An HTTP server on 127.0.0.1 that records callbacks; answers with scripted statuses."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.received: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", "0"))
                body = self.rfile.read(length)
                receiver.received.append(({k.lower(): v for k, v in self.headers.items()}, body))
                status = receiver.statuses.pop(0) if receiver.statuses else 200
                self.send_response(status)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Callable[..., Receiver]]:
    made: list[Receiver] = []

    def make(statuses: list[int] | None = None) -> Receiver:
        made.append(Receiver(statuses))
        return made[-1]

    yield make
    for item in made:
        item.close()


def test_accepted_call_runs_with_its_call_id(
    platform: Platform, unique_name: Callable[[str], str]
) -> None:
    name = unique_name("async-echo")
    platform.deploy(name, ECHO)
    call_id = queue(platform, name, b"payload")
    done = settled(platform, call_id)
    assert done["state"] == "succeeded"
    assert done["status"] == 200 and done["attempts"] == 1
    assert done["result"] == f"ran {call_id} payload attempt 1"
    assert done["source"] == "http"
    listed = platform.get("/system/calls", params={"function": name}).json()
    assert [c["id"] for c in listed] == [call_id]


def test_a_resent_call_id_is_one_call(
    platform: Platform, unique_name: Callable[[str], str]
) -> None:
    name = unique_name("async-dedup")
    platform.deploy(name, ECHO)
    first = queue(platform, name, b"x", headers={"X-Call-Id": "client-chosen-1"})
    again = queue(platform, name, b"x", headers={"X-Call-Id": "client-chosen-1"})
    assert first == again == "client-chosen-1"
    assert settled(platform, first)["attempts"] == 1
    assert len(platform.get("/system/calls", params={"function": name}).json()) == 1


def test_unknown_function_and_call_are_404(platform: Platform) -> None:
    assert platform.request("POST", "/async-function/no-such-fn").status_code == 404
    assert platform.get("/system/calls/no-such-call").status_code == 404
    assert platform.request("DELETE", "/async-function/no-such-call").status_code == 404
    assert platform.request("POST", "/system/calls/no-such-call/replay").status_code == 404
    assert platform.request("GET", "/async-function/x").status_code == 405


def test_bad_callback_url_and_call_id_are_400(
    platform: Platform, unique_name: Callable[[str], str]
) -> None:
    name = unique_name("async-bad")
    platform.deploy(name, ECHO)
    answer = platform.request(
        "POST", f"/async-function/{name}", headers={"X-Callback-Url": "ftp://example"}
    )
    assert answer.status_code == 400 and "X-Callback-Url" in answer.text
    answer = platform.request(
        "POST", f"/async-function/{name}", headers={"X-Call-Id": "has spaces"}
    )
    assert answer.status_code == 400 and "call id" in answer.text


def test_retries_until_success_with_backoff(
    platform: Platform, unique_name: Callable[[str], str]
) -> None:
    name = unique_name("async-flaky")
    platform.deploy(name, FLAKY, {"retry": FAST_RETRY})
    call_id = queue(platform, name, params={"until": "3"})
    done = settled(platform, call_id)
    assert done["state"] == "succeeded"
    assert done["attempts"] == 3
    assert done["result"] == "done on attempt 3"


def test_retry_after_from_the_function_is_honoured(
    platform: Platform, unique_name: Callable[[str], str]
) -> None:
    name = unique_name("async-later")
    platform.deploy(name, FLAKY, {"retry": {**FAST_RETRY, "max_backoff": "5s"}})
    call_id = queue(platform, name, params={"until": "2", "status": "429", "retry_after": "2"})
    waiting = wait_until(
        lambda: (r := record(platform, call_id))["state"] == "retrying" and r, timeout=20
    )
    # the schedule alone would wait 100 ms; the function asked for 2 s
    assert waiting["next_attempt"] - waiting["finished"] == pytest.approx(2.0, abs=0.2)
    done = settled(platform, call_id)
    assert done["state"] == "succeeded" and done["attempts"] == 2
    assert done["started"] >= waiting["next_attempt"] - 0.2


def test_a_status_not_listed_is_not_retried(
    platform: Platform, unique_name: Callable[[str], str]
) -> None:
    name = unique_name("async-400")
    platform.deploy(name, FLAKY, {"retry": FAST_RETRY})
    call_id = queue(platform, name, params={"until": "9", "status": "400"})
    done = settled(platform, call_id)
    assert done["state"] == "dead" and done["attempts"] == 1 and done["status"] == 400


def test_poison_call_goes_to_dead_letters_without_blocking_the_queue(
    platform: Platform, unique_name: Callable[[str], str]
) -> None:
    name = unique_name("async-poison")
    platform.deploy(name, FLAKY, {"retry": FAST_RETRY, "queue": {"concurrency": 1}})
    poison = queue(platform, name, params={"until": "99", "status": "500"})
    good = [queue(platform, name, params={"until": "1"}) for _ in range(5)]
    # the good calls behind it finish while the poison call waits for its retries
    for call_id in good:
        assert settled(platform, call_id)["state"] == "succeeded"
    dead = settled(platform, poison)
    assert dead["state"] == "dead" and dead["attempts"] == 3 and dead["status"] == 500
    listed = platform.get("/system/calls", params={"state": "dead", "function": name}).json()
    assert [c["id"] for c in listed] == [poison]
    # replay: queued again with the same id and a fresh set of attempts; still poison
    answer = platform.request("POST", f"/system/calls/{poison}/replay")
    assert answer.status_code == 202 and answer.json()["replays"] == 1
    again = wait_until(
        lambda: (r := record(platform, poison))["state"] == "dead" and r["replays"] == 1 and r,
        timeout=30,
    )
    assert again["attempts"] == 3
    # only dead calls replay
    assert platform.request("POST", f"/system/calls/{good[0]}/replay").status_code == 409


def test_cancel_a_queued_call(platform: Platform, unique_name: Callable[[str], str]) -> None:
    name = unique_name("async-cancel")
    platform.deploy(name, SLOW, {"queue": {"concurrency": 1}})
    running = queue(platform, name, params={"s": "2"})
    waiting = queue(platform, name, params={"s": "0"})
    wait_until(lambda: record(platform, running)["state"] == "running", timeout=20)
    assert platform.request("DELETE", f"/async-function/{running}").status_code == 409
    answer = platform.request("DELETE", f"/async-function/{waiting}")
    assert answer.status_code == 200, answer.text
    assert settled(platform, running)["state"] == "succeeded"
    cancelled = record(platform, waiting)
    assert cancelled["state"] == "cancelled" and cancelled["attempts"] == 0
    # a finished call cannot be cancelled
    assert platform.request("DELETE", f"/async-function/{running}").status_code == 409


def test_a_slow_function_does_not_block_another(
    platform: Platform, unique_name: Callable[[str], str]
) -> None:
    slow, fast = unique_name("async-slow"), unique_name("async-fast")
    platform.deploy(slow, SLOW, {"queue": {"concurrency": 1}})
    platform.deploy(fast, ECHO)
    backlog = [queue(platform, slow, params={"s": "1"}) for _ in range(10)]
    quick = queue(platform, fast, b"q")
    assert settled(platform, quick, timeout=15)["state"] == "succeeded"
    states = [record(platform, c)["state"] for c in backlog]
    assert states.count("queued") + states.count("running") >= 5, states
    for call_id in backlog:
        platform.request("DELETE", f"/async-function/{call_id}")


def test_callback_gets_the_result_with_openfaas_headers(
    platform: Platform, unique_name: Callable[[str], str], receiver: Callable[..., Receiver]
) -> None:
    name = unique_name("async-cb")
    platform.deploy(name, ECHO)
    hook = receiver()
    call_id = queue(platform, name, b"cb", headers={"X-Callback-Url": hook.url})
    wait_until(lambda: hook.received, timeout=20)
    headers, body = hook.received[0]
    assert body == f"ran {call_id} cb attempt 1".encode()
    assert headers["x-call-id"] == call_id
    assert headers["x-function-name"] == name
    assert headers["x-function-status"] == "200"
    assert float(headers["x-duration-seconds"]) > 0
    done = wait_until(
        lambda: (r := record(platform, call_id))["callback_state"] == "delivered" and r
    )
    assert done["callback_attempts"] == 1


def test_callback_of_a_dead_call_carries_its_status(
    platform: Platform, unique_name: Callable[[str], str], receiver: Callable[..., Receiver]
) -> None:
    name = unique_name("async-cb-dead")
    platform.deploy(name, FLAKY, {"retry": {**FAST_RETRY, "attempts": 1}})
    hook = receiver()
    queue(
        platform, name, params={"until": "9", "status": "503"}, headers={"X-Callback-Url": hook.url}
    )
    wait_until(lambda: hook.received, timeout=20)
    assert hook.received[0][0]["x-function-status"] == "503"


@pytest.mark.long
def test_failing_callback_is_retried_then_recorded(
    platform: Platform, unique_name: Callable[[str], str], receiver: Callable[..., Receiver]
) -> None:
    name = unique_name("async-cb-fail")
    platform.deploy(name, ECHO)
    flaky_hook = receiver([500, 502])
    call_id = queue(platform, name, headers={"X-Callback-Url": flaky_hook.url})
    done = wait_until(
        lambda: (r := record(platform, call_id))["callback_state"] == "delivered" and r,
        timeout=30,
    )
    assert done["callback_attempts"] == 3 and len(flaky_hook.received) == 3
    # nobody listens: every attempt fails; the failure is recorded, not dropped
    dead_hook = receiver()
    url = dead_hook.url
    dead_hook.close()
    call_id = queue(platform, name, headers={"X-Callback-Url": url})
    failed = wait_until(
        lambda: (r := record(platform, call_id))["callback_state"] == "failed" and r,
        timeout=60,
    )
    assert failed["state"] == "succeeded"
    assert failed["callback_attempts"] == 5
    assert "callback failed" in failed["callback_error"]


def test_cli_invoke_async_and_calls(platform: Platform, unique_name: Callable[[str], str]) -> None:
    name = unique_name("async-cli")
    platform.deploy(name, FLAKY, {"retry": {**FAST_RETRY, "attempts": 1}})
    queued = platform.cli("invoke", name, "--async", "--query", "until=9&status=500")
    assert queued.returncode == 0, queued.stderr
    call_id = queued.stdout.decode().strip()
    settled(platform, call_id)
    shown = platform.cli("calls", "show", call_id, "--json")
    assert json.loads(shown.stdout.decode())["state"] == "dead"
    listed = platform.cli("calls", "ls", name, "--dead", "--json")
    assert [c["id"] for c in json.loads(listed.stdout.decode())] == [call_id]
    replayed = platform.cli("calls", "replay", call_id)
    assert replayed.returncode == 0 and b"queued again" in replayed.stdout
    missing = platform.cli("calls", "show", "no-such-call")
    assert missing.returncode == 1 and b"not found" in missing.stderr


def test_devices_cannot_queue_calls_or_use_the_jetstream_api(platform: Platform) -> None:
    """Anyone connecting to the bus without the platform's password (a device, a function)
    may publish on their own subjects, but not on the platform's nor on JetStream's API."""

    async def probe(url: str, forge: bool = True) -> tuple[list[str], bool]:
        errors: list[str] = []

        async def on_error(exc: Exception) -> None:
            errors.append(str(exc))

        nc = await nats.connect(url, error_cb=on_error)
        try:
            if forge:
                await nc.publish("nfaas.calls.default.someone.forged", b"x")
            await nc.flush()
            await asyncio.sleep(0.3)  # the server's -ERR arrives asynchronously
            try:
                await nc.jetstream(timeout=2).stream_info("NFAAS_CALLS")
                api = True
            except Exception:
                api = False
        finally:
            await nc.close()
        return errors, api

    errors, api = asyncio.run(probe(platform.nats_url()))
    assert any("permissions violation" in e.lower() for e in errors), errors
    assert api is False
    errors, api = asyncio.run(probe(platform.nats_url(admin=True), forge=False))
    assert api is True and not errors


def test_event_plane_counters_in_metrics(
    platform: Platform, unique_name: Callable[[str], str]
) -> None:
    name = unique_name("async-metrics")
    platform.deploy(name, FLAKY, {"retry": FAST_RETRY})
    headers = {"X-Call-Id": f"{name}-1"}
    call_id = queue(platform, name, params={"until": "2"}, headers=headers)
    assert queue(platform, name, params={"until": "2"}, headers=headers) == call_id  # re-sent
    assert settled(platform, call_id)["attempts"] == 2
    (cold,) = platform.status(name)["cold_starts"]
    assert cold["trigger"] == "async"  # what woke it, not "request"

    text = platform.get("/metrics", token=None).text
    found = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    label = ("function_name", f"{name}.default")

    def sample(metric: str, **labels: str) -> float | None:
        return found.get((metric, tuple(sorted([label, *labels.items()]))))

    assert sample("nfaas_async_calls_accepted_total") == 1  # the re-sent id counts once
    assert sample("nfaas_event_deliveries_total", kind="call", outcome="succeeded") == 1
    assert sample("nfaas_event_deliveries_total", kind="call", outcome="retried") == 1
    assert sample("nfaas_event_deliveries_total", kind="call", outcome="dead") == 0
    assert sample("nfaas_event_deliveries_in_flight") == 0
    assert found[("nfaas_bus_connected", ())] == 1
    assert ("nfaas_nats_server_restarts_total", ()) in found
    assert ("nfaas_callbacks_total", (("outcome", "failed"),)) in found
