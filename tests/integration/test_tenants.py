"""Namespaces and tokens: tenants see and touch only their own functions."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import pytest
from platform_harness import Platform, wait_until

HANDLER = """
def handle(event, context):
    print(f"tenant-log {context.namespace}/{context.function_name}", flush=True)
    return f"{context.namespace}/{context.function_name}"
"""


@dataclass
class Tenants:
    a: str  # namespace names
    b: str
    token_a: str
    token_b: str
    id_a: str


@pytest.fixture(scope="module")
def tenants(platform: Platform) -> Tenants:
    suffix = uuid.uuid4().hex[:6]
    a, b = f"ten-a-{suffix}", f"ten-b-{suffix}"
    made = {}
    for ns in (a, b):
        answer = platform.request("POST", "/system/tokens", json={"namespace": ns})
        assert answer.status_code == 201, answer.text
        made[ns] = answer.json()
        assert made[ns]["namespace"] == ns
    t = Tenants(a, b, made[a]["token"], made[b]["token"], made[a]["id"])
    # a deploys a private "f" and a public "g"; the namespace comes from the token
    deployed = platform.deploy("f", HANDLER, token=t.token_a)
    assert deployed["namespace"] == a
    assert deployed["public"] is False
    platform.deploy("g", HANDLER, {"public": True}, token=t.token_a)
    answer = platform.invoke("f", token=t.token_a)
    assert answer.status_code == 200 and answer.text == f"{a}/f"
    return t


def test_owner_sees_and_uses_its_function(platform: Platform, tenants: Tenants) -> None:
    a = tenants.token_a
    names = {(f["namespace"], f["name"]) for f in platform.get("/system/functions", token=a).json()}
    assert {(tenants.a, "f"), (tenants.a, "g")} <= names
    assert {ns for ns, _ in names} == {tenants.a}
    assert platform.describe("f", token=a)["namespace"] == tenants.a
    assert platform.invoke(f"f.{tenants.a}", token=a).text == f"{tenants.a}/f"
    answer = platform.get("/system/logs", token=a, params={"name": "f"})
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("application/x-ndjson")
    wait_until(
        lambda: any(f"tenant-log {tenants.a}/f" in t for t in platform.logs("f", token=a)),
        timeout=10,
        what="the handler's line in the owner's logs",
    )


def test_other_tenant_cannot_see_or_touch(platform: Platform, tenants: Tenants) -> None:
    b, ns_a = tenants.token_b, tenants.a

    listed = platform.get("/system/functions", token=b)
    assert listed.status_code == 200
    assert all(f["namespace"] == tenants.b for f in listed.json())
    assert "f" not in {f["name"] for f in listed.json()}  # b has no f of its own (yet)
    assert platform.get("/system/functions", token=b, params={"namespace": ns_a}).status_code == 404

    for params in ({}, {"namespace": ns_a}):
        answer = platform.get("/system/function/f", token=b, params=params)
        assert answer.status_code == 404, (params, answer.text)
        assert "not found" in answer.json()["error"]
        logs = platform.get("/system/logs", token=b, params={"name": "f", **params})
        assert logs.status_code == 404, (params, logs.text)
        scale = platform.request(
            "POST", "/system/scale-function/f", token=b, json={"replicas": 1, **params}
        )
        assert scale.status_code == 404, (params, scale.text)

    for target in ("f", f"f.{ns_a}"):
        answer = platform.invoke(target, token=b)
        assert answer.status_code == 404, (target, answer.text)
        assert "not found" in answer.text

    for body in ({"functionName": "f"}, {"functionName": "f", "namespace": ns_a}):
        answer = platform.request("DELETE", "/system/functions", token=b, json=body)
        assert answer.status_code == 404, (body, answer.text)

    sha = platform.upload({"handler.py": "def handle(e, c):\n    return 'hijacked'\n"}, token=b)
    hijack = platform.request(
        "PUT", "/system/functions", token=b, json={"name": "f", "namespace": ns_a, "bundle": sha}
    )
    assert hijack.status_code == 404

    # ...and a's function is untouched by all of that.
    assert platform.invoke("f", token=tenants.token_a).text == f"{ns_a}/f"
    assert platform.describe("f", token=tenants.token_a)["bundle"] != sha


def test_same_name_in_two_namespaces_is_two_functions(platform: Platform, tenants: Tenants) -> None:
    platform.deploy("f", HANDLER, token=tenants.token_b)
    assert platform.invoke("f", token=tenants.token_b).text == f"{tenants.b}/f"
    assert platform.invoke("f", token=tenants.token_a).text == f"{tenants.a}/f"
    both = {
        (f["namespace"], f["name"])
        for f in platform.get("/system/functions").json()  # admin sees every namespace
    }
    assert {(tenants.a, "f"), (tenants.b, "f")} <= both
    admin_view = platform.invoke(f"f.{tenants.b}")  # admin may call into any namespace
    assert admin_view.status_code == 200 and admin_view.text == f"{tenants.b}/f"
    removed = platform.request(
        "DELETE", "/system/functions", token=tenants.token_b, json={"functionName": "f"}
    )
    assert removed.status_code == 202
    assert platform.invoke("f", token=tenants.token_a).status_code == 200  # a's f unaffected


def test_public_and_private_without_token(platform: Platform, tenants: Tenants) -> None:
    public = platform.invoke(f"g.{tenants.a}", token=None)
    assert public.status_code == 200
    assert public.text == f"{tenants.a}/g"
    other_tenant = platform.invoke(f"g.{tenants.a}", token=tenants.token_b)
    assert other_tenant.status_code == 200  # public means public

    private = platform.invoke(f"f.{tenants.a}", token=None)
    assert private.status_code == 401
    assert private.headers["www-authenticate"] == "Bearer"

    assert platform.get("/system/functions", token=None).status_code == 401
    assert platform.get(f"/system/function/f?namespace={tenants.a}", token=None).status_code == 401


@pytest.mark.parametrize(
    "header",
    ["Bearer nfaas_000000000000_forged", "Bearer", "Basic dXNlcjpwYXNz", "nfaas_x_y"],
)
def test_invalid_token_is_401(platform: Platform, tenants: Tenants, header: str) -> None:
    headers = {"authorization": header}
    for target in (f"f.{tenants.a}", f"g.{tenants.a}"):  # even for the public function
        answer = platform.invoke(target, token=None, headers=headers)
        assert answer.status_code == 401, (target, answer.text)
    api = platform.get("/system/functions", token=None, headers=headers)
    assert api.status_code == 401
    assert api.json()["error"] == "missing, invalid or revoked bearer token"


def test_revoked_token_is_401(platform: Platform, tenants: Tenants) -> None:
    answer = platform.request("POST", "/system/tokens", json={"namespace": tenants.a})
    token, token_id = answer.json()["token"], answer.json()["id"]
    assert platform.invoke("f", token=token).status_code == 200

    assert platform.request("DELETE", f"/system/tokens/{token_id}").status_code == 204
    assert platform.invoke("f", token=token).status_code == 401
    assert platform.invoke(f"g.{tenants.a}", token=token).status_code == 401
    assert platform.get("/system/functions", token=token).status_code == 401
    assert platform.request("DELETE", f"/system/tokens/{token_id}").status_code == 404
    # the namespace's other token is unaffected
    assert platform.invoke("f", token=tenants.token_a).status_code == 200


def test_tenant_cannot_manage_tokens(platform: Platform, tenants: Tenants) -> None:
    a = tenants.token_a
    for namespace in (tenants.a, tenants.b, "*"):
        answer = platform.request("POST", "/system/tokens", token=a, json={"namespace": namespace})
        assert answer.status_code == 403, answer.text
        assert "admin" in answer.json()["error"]
    assert platform.get("/system/tokens", token=a).status_code == 403
    assert platform.request("DELETE", f"/system/tokens/{tenants.id_a}", token=a).status_code == 403
    assert platform.invoke("f", token=a).status_code == 200  # did not revoke itself


def test_token_namespace_is_validated(platform: Platform) -> None:
    answer = platform.request("POST", "/system/tokens", json={"namespace": "Not_Valid"})
    assert answer.status_code == 400
    assert answer.json()["field"] == "namespace"


def test_tenant_cli(platform: Platform, tenants: Tenants) -> None:
    b = tenants.token_b
    listed = platform.cli("ls", token=b)
    assert listed.returncode == 0
    assert tenants.a not in listed.stdout.decode()
    for args in (
        ("describe", "f", "-n", tenants.a),
        ("invoke", "f", "-n", tenants.a),
        ("logs", "f", "-n", tenants.a),
        ("rm", "f", "-n", tenants.a),
        ("scale", "f", "--replicas", "1", "-n", tenants.a),
    ):
        done = platform.cli(*args, token=b)
        assert done.returncode == 1, args
        assert "HTTP 404" in done.stderr.decode(), (args, done.stderr)
    mine = platform.cli("describe", "f", "--json", token=tenants.token_a)
    assert mine.returncode == 0


COLLECTOR = """
def handle(event, context):
    return {"authorization": event.headers.get("authorization")}
"""


def test_platform_token_is_not_forwarded_to_function_code(
    platform: Platform, tenants: Tenants
) -> None:
    platform.deploy("collector", COLLECTOR, {"public": True}, token=tenants.token_a)
    answer = platform.invoke(f"collector.{tenants.a}")  # the admin calls a tenant's function
    assert answer.status_code == 200
    harvested = answer.json()["authorization"]
    if harvested:  # show what the tenant could do with it
        stolen = harvested.partition(" ")[2]
        escalated = platform.get("/system/tokens", token=stolen)
        assert escalated.status_code != 200, "the tenant's code became admin"
    assert harvested is None
