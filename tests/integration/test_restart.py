"""Stopping the platform (SIGTERM) and starting it again on the same data directory."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import threading
import time

import httpx
from platform_harness import CLEAN_EXIT, NFAAS, Platform, pid_gone, wait_until

HANDLER = """
import os

def handle(event, context):
    return {"fn": context.function_name, "ns": context.namespace, "body": event.body.decode()}
"""


def test_restart_keeps_functions_and_tokens(platform_factory) -> None:
    first: Platform = platform_factory()
    data = first.data_dir
    manifest = first.manifest(
        {
            "keep-public": (HANDLER, {"public": True, "scale": {"idle_timeout": "60s"}}),
            "keep-private": (HANDLER, {"env": {"A": "1"}, "limits": {"timeout": "5s"}}),
        }
    )
    done = first.cli("deploy", "-f", str(manifest))
    assert done.returncode == 0, done.stderr.decode()
    tenant = json.loads(first.cli("token", "create", "-n", "team", "--json").stdout)
    doomed = json.loads(first.cli("token", "create", "-n", "team", "--json").stdout)
    assert first.cli("token", "revoke", doomed["id"]).returncode == 0
    first.deploy("team-fn", HANDLER, token=tenant["token"])

    for name in ("keep-public", "keep-private"):
        answer = first.invoke(name, b"before")
        assert answer.status_code == 200, answer.text
    assert first.invoke("team-fn", b"t", token=tenant["token"]).status_code == 200
    pids = [
        i["pid"]
        for name in ("keep-public", "keep-private")
        for i in first.status(name)["instances"]
    ]
    pids += [i["pid"] for i in first.status("team-fn", namespace="team")["instances"]]
    assert len(pids) == 3
    zygote = first.get("/system/info").json()["drivers"][0]["zygote_pid"]
    listing = {f["name"]: f for f in json.loads(first.cli("ls", "--json").stdout)}
    admin_token = (data / "admin.token").read_text()

    code = first.stop()  # SIGTERM by pid; raises if it takes more than 10 s
    assert code in CLEAN_EXIT, first.log_tail()
    assert pid_gone(first.last_pid)
    wait_until(lambda: all(pid_gone(p) for p in [*pids, zygote]), timeout=5, what="instances")

    second = platform_factory(data)
    assert (data / "admin.token").read_text() == admin_token
    assert second.token == first.token
    assert stat.S_IMODE(os.stat(data / "admin.token").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(data).st_mode) == 0o711

    after = {f["name"]: f for f in json.loads(second.cli("ls", "--json").stdout)}
    assert set(after) == set(listing)
    for name, fn in after.items():
        assert fn["replicas"] == 0
        assert fn["bundle"] == listing[name]["bundle"]
        assert fn["scale"] == listing[name]["scale"]
        assert fn["limits"] == listing[name]["limits"]
        assert fn["public"] == listing[name]["public"]
        assert fn["createdAt"] == listing[name]["createdAt"]
    assert second.describe("keep-private")["envVars"] == {"A": "1"}

    public = second.invoke("keep-public", b"after", token=None)  # no redeploy needed
    assert public.status_code == 200, public.text
    assert public.headers["x-nfaas-cold-start"] == "1"
    assert public.json() == {"fn": "keep-public", "ns": "default", "body": "after"}
    private = second.invoke("keep-private", b"after")
    assert private.status_code == 200
    assert private.json()["fn"] == "keep-private"
    assert second.invoke("keep-private", token=None).status_code == 401  # still private

    # Tokens survive too: the tenant still works, the revoked one stays revoked.
    team = second.invoke("team-fn", b"t", token=tenant["token"])
    assert team.status_code == 200 and team.json()["ns"] == "team"
    assert [f["name"] for f in second.get("/system/functions", token=tenant["token"]).json()] == [
        "team-fn"
    ]
    assert second.get("/system/functions", token=doomed["token"]).status_code == 401
    tokens = {t["id"]: t for t in second.get("/system/tokens").json()}
    assert tokens[doomed["id"]]["revoked"] is not None
    assert tokens[tenant["id"]]["revoked"] is None


def test_sigterm_exits_zero(platform_factory) -> None:
    platform: Platform = platform_factory()
    assert platform.get("/healthz", token=None).text == "OK"
    assert platform.stop() == 0


def test_sigterm_with_a_request_in_flight(platform_factory) -> None:
    platform: Platform = platform_factory()
    platform.deploy(
        "slow",
        "import time\n\ndef handle(e, c):\n    time.sleep(2)\n    return 'done'\n",
        {"limits": {"timeout": "10s"}},
    )
    assert platform.get("/healthz", token=None).status_code == 200
    answers: list = []

    def call() -> None:  # its own connection: stop() closes the harness's client
        try:
            with httpx.Client(base_url=platform.url, timeout=30) as client:
                answers.append(
                    client.post("/function/slow", headers={"authorization": f"Bearer {token}"})
                )
        except Exception as exc:  # the connection may be cut; record it
            answers.append(exc)

    token = platform.token

    caller = threading.Thread(target=call)
    caller.start()
    wait_until(lambda: platform.status("slow")["inflight"] == 1, timeout=10, what="inflight")
    pids = [i["pid"] for i in platform.status("slow")["instances"]]
    started = time.monotonic()
    code = platform.stop()  # asserts the exit happens within 10 s
    caller.join(15)
    assert code in CLEAN_EXIT
    assert time.monotonic() - started < 10
    (answer,) = answers
    # uvicorn's graceful shutdown lets the in-flight request finish (2 s < its 5 s grace).
    assert not isinstance(answer, Exception), answer
    assert answer.status_code == 200 and answer.text == "done"
    wait_until(lambda: all(pid_gone(p) for p in pids), timeout=5, what="instances to exit")


def test_refuses_a_data_dir_instances_cannot_reach(tmp_path) -> None:
    # pytest's tmp_path sits under a 0700 directory: instance uids could not reach their code.
    data = tmp_path / "data"
    done = subprocess.run(
        [NFAAS, "up", "--data", str(data), "--port", "9"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 1
    message = " ".join(done.stderr.split())
    assert "not reachable by unprivileged instance uids" in message
    assert "needs o+x" in message
