"""A new chain head of the monitoring package wakes its later steps (mon.chain_wake).

The package is deployed once for the module in a namespace of its own, on the session's
platform. Each chain test scales the chain to zero first, so its head is a new instance. A
step the chain does not call (create-topic for topics that exist, delete-topic for topics
that do not) shows the wake-up alone: it has an instance, started by ``wake``, that served
nothing. The last tests drive ``mon.Wake`` directly: a refused or unreachable wake-up is
logged and leaves the chain alone. Nothing here is timed.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import partial
from typing import Any

import httpx
import pytest
from platform_harness import Platform, free_port, wait_until

from nfaas.monitor import mon
from nfaas.monitor.deploy import deploy, remove

CREATE_CHAIN = ("dcm-create", "fetch-topic", "create-topic", "dcs-create", "consumer-start")
DELETE_CHAIN = ("dcm-delete", "fetch-topic", "dcs-delete", "delete-topic")


@dataclass
class Package:
    platform: Platform
    namespace: str

    def call(self, function: str, topics: list[str]) -> httpx.Response:
        return self.platform.request(
            "POST", f"/function/{function}.{self.namespace}", json={"topics": topics}
        )

    def describe(self, function: str) -> dict[str, Any]:
        return dict(self.platform.describe(function, namespace=self.namespace))

    def scale_to_zero(self, functions: tuple[str, ...]) -> None:
        for name in functions:
            answer = self.platform.request(
                "POST",
                f"/system/scale-function/{name}",
                json={"namespace": self.namespace, "replicas": 0},
            )
            assert answer.status_code == 202, answer.text
        for name in functions:
            wait_until(partial(self.has_replicas, name, 0), what=f"{name} at zero")

    def has_replicas(self, function: str, count: int) -> bool:
        return bool(self.describe(function)["replicas"] == count)

    def idle_instance(self, function: str) -> dict[str, Any]:
        """The function's one instance, once it has one, which must have served nothing."""
        wait_until(partial(self.has_replicas, function, 1), what=f"{function} to be woken")
        (instance,) = self.describe(function)["status"]["instances"]
        assert instance["served"] == 0, instance
        return dict(instance)

    def started_by_wake_up(self, function: str, topics: list[str]) -> None:
        """Call the function once: its instance's cold start, now complete, was a wake-up's."""
        answer = self.call(function, topics)
        assert answer.status_code == 200, answer.text
        record = self.describe(function)["status"]["cold_starts"][-1]
        assert record["trigger"] == "wake" and not record["error"], record
        assert self.describe(function)["replicas"] == 1

    def collecting(self, topics: list[str]) -> bool:
        labels = [self.platform.get(f"/system/topics/{t}").json()["labels"] for t in topics]
        return all(label.get("monitoring.collect") == self.namespace for label in labels)


@pytest.fixture(scope="module")
def package(platform: Platform) -> Iterator[Package]:
    namespace = f"wake-{uuid.uuid4().hex[:6]}"
    deploy(platform.url, platform.token, namespace)
    yield Package(platform, namespace)
    remove(platform.url, platform.token, namespace, purge=True)


def topics_of(exp_id: str) -> list[str]:
    return [f"uc1.{exp_id}.site1.kpi.latency", f"uc1.{exp_id}.site2.kpi.rps"]


def experiment() -> str:
    return f"e{uuid.uuid4().hex[:8]}"


def normalised(body: dict[str, Any], exp_id: str) -> dict[str, Any]:
    """The answer with its experiment id and async call ids blanked: what two runs share."""
    out: dict[str, Any] = json.loads(json.dumps(body).replace(exp_id, "EXP"))
    for result in out["results"]:
        for step in result["steps"]:
            if "call_id" in step:
                step["call_id"] = "ID"
    return out


# --- the chains -------------------------------------------------------------------------------


def test_a_new_delete_head_wakes_its_steps_and_answers_as_a_warm_one(package: Package) -> None:
    exp_id = experiment()
    topics = topics_of(exp_id)  # never created: delete-topic is not called
    package.scale_to_zero(DELETE_CHAIN)
    served_before = package.describe("delete-topic")["invocationCount"]

    cold = package.call("dcm-delete", topics)
    assert cold.status_code == 200, cold.text
    for result in cold.json()["results"]:
        assert [s["step"] for s in result["steps"]] == ["fetch-topic", "dcs-delete", "delete-topic"]
        assert result["steps"][-1] == {"step": "delete-topic", "skipped": "absent"}

    # dcs-delete, woken and called: one instance (a wake-up never adds a second)
    assert package.describe("dcs-delete")["replicas"] == 1
    # the chain never called delete-topic, yet it has an instance: the head's wake-up started it
    package.idle_instance("delete-topic")
    assert package.describe("delete-topic")["invocationCount"] == served_before

    warm = package.call("dcm-delete", topics)  # the same head, now warm: no wake-ups
    assert warm.status_code == 200, warm.text
    assert warm.json() == cold.json()
    package.started_by_wake_up("delete-topic", topics)


def test_a_new_create_head_wakes_its_steps_and_answers_as_a_warm_one(package: Package) -> None:
    cold_exp, warm_exp = experiment(), experiment()
    package.scale_to_zero(CREATE_CHAIN)
    cold = package.call("dcm-create", topics_of(cold_exp))
    assert cold.status_code == 200, cold.text
    for name in ("create-topic", "dcs-create"):  # woken and called: one instance each
        assert package.describe(name)["replicas"] == 1
    wait_until(lambda: package.collecting(topics_of(cold_exp)), what="the topics labelled")

    warm = package.call("dcm-create", topics_of(warm_exp))
    assert warm.status_code == 200, warm.text
    assert normalised(cold.json(), cold_exp) == normalised(warm.json(), warm_exp)
    wait_until(lambda: package.collecting(topics_of(warm_exp)), what="the topics labelled")

    # again from cold for topics that exist: create-topic is skipped, and woken all the same
    package.scale_to_zero(CREATE_CHAIN)
    served_before = package.describe("create-topic")["invocationCount"]
    again = package.call("dcm-create", topics_of(cold_exp))
    assert again.status_code == 200, again.text
    for result in again.json()["results"]:
        assert result["steps"][1] == {"step": "create-topic", "skipped": "exists"}
    package.idle_instance("create-topic")
    assert package.describe("create-topic")["invocationCount"] == served_before
    package.started_by_wake_up("create-topic", topics_of(cold_exp))  # answers "exists"

    for exp_id in (cold_exp, warm_exp):
        assert package.call("dcm-delete", topics_of(exp_id)).status_code == 200


# --- mon.Wake on its own ----------------------------------------------------------------------


def config(url: str, token: str, namespace: str, **settings: Any) -> mon.Config:
    return mon.Config(url=url, token=token, namespace=namespace, **settings)


def test_waking_twice_leaves_one_instance(package: Package) -> None:
    package.scale_to_zero(("query",))
    token = package.platform.request(
        "POST", "/system/tokens", json={"namespace": package.namespace}
    ).json()["token"]
    settings = config(package.platform.url, token, package.namespace)
    for _ in range(2):
        wake = mon.Wake(settings, ("dashboard", "query"))
        wake.after("dashboard")
        assert wake.thread is not None
        wake.thread.join(30)
        assert wake.answers == [("query", 202)]
    package.idle_instance("query")


def test_a_refused_wake_up_is_logged_not_raised(
    package: Package, capfd: pytest.CaptureFixture[str]
) -> None:
    # a token of another namespace: the platform does not disclose the function (404)
    other = package.platform.request(
        "POST", "/system/tokens", json={"namespace": f"other-{uuid.uuid4().hex[:6]}"}
    ).json()["token"]
    wake = mon.Wake(config(package.platform.url, other, package.namespace), ("a", "query"))
    wake.after("a")
    assert wake.thread is not None
    wake.thread.join(30)
    assert wake.answers == [("query", 404)]
    assert "could not wake query: 404" in capfd.readouterr().err


def test_an_unreachable_platform_is_logged_not_raised(capfd: pytest.CaptureFixture[str]) -> None:
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    wake = mon.Wake(config(closed, "t", "monitoring"), ("a", "b", "c"))
    wake.after("a")
    wake.after("a")  # one batch per chain run
    assert wake.thread is not None
    wake.thread.join(30)
    assert wake.answers == [("b", 0), ("c", 0)]
    err = capfd.readouterr().err
    assert "could not wake b: no answer" in err and "could not wake c: no answer" in err


def test_what_is_woken_and_when() -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    steps = (f"s1-{uuid.uuid4().hex[:6]}", "s2", "s3")
    platform = mon.Monitor(config(closed, "t", "monitoring"))
    first = mon.chain_wake(platform, steps)
    assert first is not None and first.steps == steps
    assert mon.chain_wake(platform, steps) is None  # the head's next chains: warm
    last = mon.Wake(platform.config, steps)
    last.after("s3")  # nothing follows the last step
    last.after("unknown")
    assert last.thread is None
    # the steps are an always-on server's, or the deployment turned wake-ups off
    served = mon.Monitor(config(closed, "t", "monitoring", functions_url="http://127.0.0.1:1"))
    assert mon.chain_wake(served, (f"x-{uuid.uuid4().hex[:6]}", "y")) is None
    off = mon.Monitor(mon.Config.from_env({"NFAAS_URL": closed, mon.WAKE_ENV: "0"}))
    assert mon.chain_wake(off, (f"z-{uuid.uuid4().hex[:6]}", "y")) is None


def test_wake_function_starts_one_instance_at_zero_and_never_stops_one(
    platform: Platform, unique_name
) -> None:
    name = unique_name("wake")
    platform.deploy(name, "def handle(event, context):\n    return 'ok'\n", {"scale": {"max": 3}})
    first = platform.request("POST", f"/system/wake-function/{name}")
    assert first.status_code == 202 and first.json() == {"name": name, "started": True}
    again = platform.request("POST", f"/system/wake-function/{name}")  # starting or running
    assert again.status_code == 202 and again.json()["started"] is False
    wait_until(lambda: platform.status(name)["replicas"] == 1, what="the woken instance")
    served = platform.invoke(name)
    assert served.status_code == 200 and served.headers.get("x-nfaas-cold-start") != "1"
    (record,) = platform.status(name)["cold_starts"]  # recorded at its first response
    assert record["trigger"] == "wake" and not record["error"]
    scaled = platform.request("POST", f"/system/scale-function/{name}", json={"replicas": 2})
    assert scaled.status_code == 202
    wait_until(lambda: platform.status(name)["replicas"] == 2, what="two instances")
    assert platform.request("POST", f"/system/wake-function/{name}").json()["started"] is False
    assert platform.status(name)["replicas"] == 2  # a wake-up never takes one away
    missing = platform.request("POST", f"/system/wake-function/{name}-nope")
    assert missing.status_code == 404
