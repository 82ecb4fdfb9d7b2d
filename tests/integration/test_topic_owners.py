"""Topics belong to namespaces: a tenant's token sees, reads, publishes to, changes and
removes only its namespace's topics, and only that namespace's functions trigger on them."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from platform_harness import ADMIN, Platform, wait_until

RECORDER = """
def handle(event, context):
    print(f"got {event.body.decode()}", flush=True)
    return "ok"
"""


@dataclass
class Tenant:
    namespace: str
    token: str


def tenant(platform: Platform, prefix: str) -> Tenant:
    namespace = f"{prefix}-{uuid.uuid4().hex[:6]}"
    answer = platform.request("POST", "/system/tokens", json={"namespace": namespace})
    assert answer.status_code == 201, answer.text
    return Tenant(namespace, answer.json()["token"])


@pytest.fixture(scope="module")
def tenants(platform: Platform) -> tuple[Tenant, Tenant]:
    return tenant(platform, "own-a"), tenant(platform, "own-b")


def topic(unique_name: Any) -> str:
    return unique_name("own").replace("-", ".", 1)


def create(platform: Platform, token: Any, name: str, **body: Any) -> dict[str, Any]:
    answer = platform.request("POST", "/system/topics", token=token, json={"name": name, **body})
    assert answer.status_code == 201, answer.text
    return dict(answer.json())


def test_a_tenant_owns_what_it_creates(
    platform: Platform, tenants: tuple[Tenant, Tenant], unique_name
) -> None:
    a, b = tenants
    name = topic(unique_name)
    assert create(platform, a.token, name)["namespace"] == a.namespace
    mine = {t["name"] for t in platform.get("/system/topics", token=a.token).json()}
    theirs = {t["name"] for t in platform.get("/system/topics", token=b.token).json()}
    assert name in mine and name not in theirs
    every = platform.get("/system/topics").json()  # the admin token sees every namespace's
    assert any(t["name"] == name and t["namespace"] == a.namespace for t in every)
    only_a = platform.get("/system/topics", params={"namespace": a.namespace}).json()
    assert {t["namespace"] for t in only_a} == {a.namespace}

    path = f"/system/topics/{name}"
    for method, url, extra in [
        ("GET", path, {}),
        ("PUT", path, {"json": {"max_msgs": 5}}),
        ("POST", f"{path}/messages", {"content": b"x"}),
        ("GET", f"{path}/messages", {}),
        ("DELETE", path, {}),
    ]:
        answer = platform.request(method, url, token=b.token, **extra)
        assert answer.status_code == 404, (method, url, answer.text)
        assert f"topic {name!r} not found" in answer.json()["error"]
    # b's attempts changed nothing; a still has it all
    assert platform.request("POST", f"{path}/messages", token=a.token, content=b"1").is_success
    updated = platform.request("PUT", path, token=a.token, json={"max_msgs": 7})
    assert updated.status_code == 200 and updated.json()["namespace"] == a.namespace
    assert updated.json()["max_msgs"] == 7
    assert len(platform.get(f"{path}/messages", token=a.token).json()) == 1
    # names are global (they are NATS subjects): b cannot take the same one
    again = platform.request("POST", "/system/topics", token=b.token, json={"name": name})
    assert again.status_code == 409
    assert platform.request("DELETE", path, token=a.token).status_code == 204


def test_a_tenant_cannot_create_in_another_namespace(
    platform: Platform, tenants: tuple[Tenant, Tenant], unique_name
) -> None:
    a, b = tenants
    body = {"name": topic(unique_name), "namespace": b.namespace}
    answer = platform.request("POST", "/system/topics", token=a.token, json=body)
    assert answer.status_code == 404 and b.namespace in answer.json()["error"]
    # the admin token creates in any namespace, "default" when none is named
    made = create(platform, ADMIN, topic(unique_name), namespace=b.namespace)
    assert made["namespace"] == b.namespace
    assert create(platform, ADMIN, topic(unique_name))["namespace"] == "default"
    bad = platform.request(
        "POST", "/system/topics", json={"name": topic(unique_name), "namespace": "Bad NS"}
    )
    assert bad.status_code == 400 and bad.json()["field"] == "namespace"


def test_functions_trigger_only_on_their_namespaces_topics(
    platform: Platform, tenants: tuple[Tenant, Tenant], unique_name
) -> None:
    a, b = tenants
    name = topic(unique_name)
    create(platform, a.token, name, labels={"feed": name})
    fn_a, fn_b = unique_name("own-fa"), unique_name("own-fb")
    platform.deploy(fn_a, RECORDER, {"triggers": [{"topic": name}]}, token=a.token)
    platform.deploy(
        fn_b,
        RECORDER,
        {"triggers": [{"topic": name}, {"topics": {"feed": name}}, {"nats": name}]},
        token=b.token,
    )

    def problems() -> list[str] | None:
        found = platform.describe(fn_b, token=b.token)["status"].get("events", {})
        return found.get("triggers", {}).get("problems") or None

    seen = wait_until(problems, what="b's triggers to be refused")
    assert seen == [
        f"trigger 0 (topic {name}): topic {name!r} does not exist (yet) in namespace "
        f"{b.namespace!r}",
        f"trigger 2 (nats {name}): subject {name!r} belongs to topic {name!r} of another namespace",
    ]
    consumers = platform.describe(fn_b, token=b.token)["status"]["events"]["triggers"]
    assert consumers["consumers"] == []  # the label selector matched no topic of b's
    answer = platform.request(
        "POST", f"/system/topics/{name}/messages", token=a.token, content=b"reading"
    )
    assert answer.status_code == 201
    wait_until(
        lambda: "got reading" in platform.logs(fn_a, token=a.token), what="a's function to run"
    )
    assert not [line for line in platform.logs(fn_b, token=b.token) if line.startswith("got")]
