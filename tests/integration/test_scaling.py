"""Scale to zero: cold start on the first request, stop after idle_timeout, never mid-request."""

from __future__ import annotations

import json
import threading
import time

from platform_harness import Platform, pid_gone, wait_until

SLEEPER = """
import os
import time

def handle(event, context):
    time.sleep(float(event.query.get("sleep", "0")))
    return {"instance": context.instance_id, "pid": os.getpid()}
"""


def test_first_request_at_zero_cold_starts_then_idles_to_zero(
    platform: Platform, unique_name
) -> None:
    name = unique_name("zero")
    platform.deploy(name, SLEEPER, {"public": True, "scale": {"idle_timeout": "1s"}})
    assert platform.describe(name)["replicas"] == 0

    first = platform.invoke(name, token=None)  # public: no token needed
    assert first.status_code == 200, first.text
    assert first.headers["x-nfaas-cold-start"] == "1"
    assert float(first.headers["x-duration-seconds"]) > 0
    served_by = first.json()

    second = platform.invoke(name, token=None)
    assert second.status_code == 200
    assert "x-nfaas-cold-start" not in second.headers  # warm
    assert second.json() == served_by
    fn = platform.describe(name)
    assert fn["replicas"] == 1
    assert fn["status"]["instances"][0]["id"] == served_by["instance"]

    # idle_timeout is 1 s and the control loop ticks every 0.1 s
    started = time.monotonic()
    wait_until(lambda: platform.describe(name)["replicas"] == 0, timeout=5, what="scale to zero")
    assert time.monotonic() - started >= 0.5  # not before the idle timeout
    wait_until(lambda: pid_gone(served_by["pid"]), timeout=5, what="the idle instance to exit")
    # That it also *stays* at zero is test_stays_at_zero_after_a_slow_request.

    again = platform.invoke(name, token=None)
    assert again.status_code == 200
    assert again.json()["instance"] != served_by["instance"]
    records = platform.status(name)["cold_starts"]
    assert records[0]["trigger"] == "request"
    assert records[0]["instance_id"] == served_by["instance"]


def test_concurrent_requests_at_zero_all_succeed(platform: Platform, unique_name) -> None:
    name = unique_name("zero-burst")
    platform.deploy(name, SLEEPER, {"scale": {"max": 2, "idle_timeout": "5s"}})
    results: list[tuple[int, str | None]] = []

    def call() -> None:
        answer = platform.invoke(name, params={"sleep": "0.3"})
        results.append((answer.status_code, answer.headers.get("x-nfaas-cold-start")))

    threads = [threading.Thread(target=call) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert [code for code, _ in results] == [200] * 4
    assert any(cold == "1" for _, cold in results)  # the first ones waited for a cold start
    assert platform.describe(name)["replicas"] <= 2  # never more than max


def test_never_stopped_while_a_request_is_in_flight(platform: Platform, unique_name) -> None:
    name = unique_name("inflight")
    platform.deploy(name, SLEEPER, {"scale": {"idle_timeout": "1s"}, "limits": {"timeout": "10s"}})
    answers: list = []
    caller = threading.Thread(
        target=lambda: answers.append(platform.invoke(name, params={"sleep": "3"}))
    )
    caller.start()
    try:
        status = wait_until(
            lambda: (s := platform.status(name))["inflight"] == 1 and s,
            timeout=10,
            what="the request to be in flight",
        )
        (instance,) = status["instances"]
        deadline = time.monotonic() + 2.0  # twice the idle timeout, request still running
        while time.monotonic() < deadline:
            status = platform.status(name)
            assert [i["id"] for i in status["instances"]] == [instance["id"]], status
            time.sleep(0.1)
    finally:
        caller.join(30)
    (answer,) = answers
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"instance": instance["id"], "pid": instance["pid"]}
    assert answer.headers["x-nfaas-cold-start"] == "1"
    assert float(answer.headers["x-duration-seconds"]) >= 3.0


def test_stays_at_zero_after_a_slow_request(platform: Platform, unique_name) -> None:
    """Regression: the autoscaler used to restart, every idle_timeout for a whole 60 s stable
    window, the instances the keep-alive policy had just stopped after any sampled request."""
    name = unique_name("flap")
    platform.deploy(name, SLEEPER, {"scale": {"idle_timeout": "1s"}, "limits": {"timeout": "10s"}})
    answer = platform.invoke(name, params={"sleep": "1.5"})  # long enough to be sampled
    assert answer.status_code == 200
    first = answer.json()["instance"]
    wait_until(lambda: platform.describe(name)["replicas"] == 0, timeout=5, what="scale to zero")
    # With no traffic there is no reason to start anything: zero must hold.
    seen: set[str] = set()
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        status = platform.status(name)
        seen |= {i["id"] for i in status["instances"]}
        time.sleep(0.1)
    assert seen == set(), f"instances started without traffic: {seen} (first was {first})"
    assert platform.describe(name)["replicas"] == 0


def test_scale_to_zero_visible_in_listing(platform: Platform, unique_name) -> None:
    name = unique_name("zero-ls")
    platform.deploy(name, SLEEPER, {"scale": {"idle_timeout": "500ms"}})
    assert platform.invoke(name).status_code == 200

    def replicas() -> int:
        listing = platform.get("/system/functions").json()
        return next(f["replicas"] for f in listing if f["name"] == name)

    assert replicas() == 1
    wait_until(lambda: replicas() == 0, timeout=5, what="replicas 0 in /system/functions")
    metrics = platform.get("/metrics", token=None).text
    assert f'gateway_service_count{{function_name="{name}.default"}} 0.0' in metrics
    assert json.loads(platform.get(f"/system/function/{name}").text)["availableReplicas"] == 0


def test_min_instances_are_kept_warm(platform: Platform, unique_name) -> None:
    name = unique_name("warm-min")
    platform.deploy(name, SLEEPER, {"scale": {"min": 1, "max": 2, "idle_timeout": "300ms"}})
    status = wait_until(
        lambda: (s := platform.status(name))["replicas"] == 1 and s,
        timeout=5,
        what="the autoscaler to start the min instance",
    )
    instance = status["instances"][0]["id"]
    time.sleep(1.0)  # several idle timeouts: min still holds, and it is the same instance
    assert [i["id"] for i in platform.status(name)["instances"]] == [instance]
    answer = platform.invoke(name)
    assert answer.status_code == 200
    assert "x-nfaas-cold-start" not in answer.headers
    assert answer.json()["instance"] == instance
    assert platform.status(name)["cold_starts"][0]["trigger"] == "autoscaler"


def test_target_concurrency_shares_one_instance(platform: Platform, unique_name) -> None:
    name = unique_name("shared")
    platform.deploy(
        name, SLEEPER, {"scale": {"max": 1, "target_concurrency": 4, "idle_timeout": "5s"}}
    )
    assert platform.invoke(name).status_code == 200  # warm
    results: list = []

    def call() -> None:
        results.append(platform.invoke(name, params={"sleep": "1"}))

    started = time.monotonic()
    threads = [threading.Thread(target=call) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    elapsed = time.monotonic() - started
    assert [r.status_code for r in results] == [200] * 4
    assert len({r.json()["instance"] for r in results}) == 1  # all on the one instance
    assert elapsed < 3.5, f"4 requests of 1 s took {elapsed:.1f}s: not served concurrently"


def test_autoscaler_scales_out_under_sustained_load(platform: Platform, unique_name) -> None:
    """8 clients keep 8 slow requests in flight against target_concurrency 1: the KPA's
    panic window asks for more instances and starts them up to max while load lasts."""
    name = unique_name("kpa")
    platform.deploy(
        name,
        SLEEPER,
        {"public": True, "scale": {"max": 4, "target_concurrency": 1, "idle_timeout": "30s"}},
    )
    stop = time.monotonic() + 4.0
    statuses: list[int] = []

    def client() -> None:
        while time.monotonic() < stop:
            statuses.append(platform.invoke(name, token=None, params={"sleep": "0.2"}).status_code)

    threads = [threading.Thread(target=client) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert statuses and set(statuses) == {200}
    status = platform.status(name)
    assert status["replicas"] == 4  # scaled out to max, still within idle_timeout
    triggers = [record["trigger"] for record in status["cold_starts"]]
    assert triggers.count("autoscaler") == 3, triggers  # the request started one, the KPA three
