"""`runtime: command`: a standard program (nats-server, Mosquitto) run as a long-lived function.

Through a real ``nfaas up``: the program starts at deploy in the function's tier, clients reach
it (process tier: the host's 127.0.0.1; container tier with ``network: bridged``: the instance's
address on the node's bridge), the platform restarts it when it dies, and it is gone after
remove. Bad programs show up in ``describe``: a missing one by name, one that exits at once as
a crash loop.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

import httpx
import nats
import pytest
import yaml
from platform_harness import BIN, REPO, Platform, free_port, pid_gone, wait_until

from nfaas.core.bundle import pack
from nfaas.core.manifest import load_manifest
from nfaas.worker.command import ProgramError, expand, resolve

NATS_SERVER = str(BIN / "nats-server")
MOSQUITTO = "/usr/sbin/mosquitto"
EXAMPLE = REPO / "examples" / "broker-nats"
BRIDGED = all(shutil.which(tool) for tool in ("runc", "ip", "nsenter")) and os.getuid() == 0
needs_bridged = pytest.mark.skipif(
    not BRIDGED, reason="bridged containers need runc, iproute2, nsenter and root"
)

MOSQUITTO_CONF = """\
listener 1883
bind_interface eth0
socket_domain ipv4
allow_anonymous true
persistence false
log_dest stderr
"""


# -- helpers ---------------------------------------------------------------------------------
def deploy_command(
    platform: Platform,
    name: str,
    command: list[str],
    spec: dict[str, Any] | None = None,
    files: dict[str, str | bytes] | None = None,
) -> None:
    sha = platform.upload({"README": "a command function needs no handler.py\n", **(files or {})})
    body = {
        "name": name,
        "bundle": sha,
        "spec": {"runtime": "command", "command": command, **(spec or {})},
    }
    answer = platform.request("POST", "/system/functions", json=body)
    if answer.status_code == 409:
        answer = platform.request("PUT", "/system/functions", json=body)
    assert answer.status_code == 202, answer.text


def running(platform: Platform, name: str, *, other_than: int = 0) -> dict[str, Any]:
    """The function's first instance once its program runs (and is not ``other_than``)."""

    def instance() -> dict[str, Any] | None:
        status = platform.status(name)
        for one in status["instances"]:
            if one["pid"] and one["pid"] != other_than and not pid_gone(one["pid"]):
                return dict(one)
        return None

    return dict(wait_until(instance, timeout=20, what=f"a running program of {name}"))


def nats_roundtrip(url: str, jetstream: bool = False) -> bytes | None:
    """Subscribe, publish, receive through the server at ``url`` (or store a message in a
    JetStream stream and read it back); None if it cannot connect."""

    async def run() -> bytes:
        client = await nats.connect(
            url, connect_timeout=1, allow_reconnect=False, max_reconnect_attempts=0
        )
        try:
            if jetstream:
                js = client.jetstream()
                await js.add_stream(name="COMMAND", subjects=["command.stored"], storage="file")
                await js.publish("command.stored", b"stored")
                return bytes((await js.get_msg("COMMAND", 1)).data or b"")
            sub = await client.subscribe("command.test")
            await client.publish("command.test", b"hello through the command function")
            return bytes((await sub.next_msg(timeout=5)).data)
        finally:
            await client.close()

    try:  # bounded: nats-py may keep retrying a refused connection on its own
        return asyncio.run(asyncio.wait_for(run(), 5))
    except (OSError, nats.errors.Error, TimeoutError):
        return None


def nats_works(url: str) -> None:
    reply = wait_until(lambda: nats_roundtrip(url), timeout=15, what=f"NATS pub/sub at {url}")
    assert reply == b"hello through the command function"


def proc_status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as status:
        return dict(line.rstrip("\n").split(":\t", 1) for line in status if ":\t" in line)


def data_size_limit(pid: int) -> str:
    with open(f"/proc/{pid}/limits") as limits:
        row = next(line for line in limits if line.startswith("Max data size"))
    return row.split()[3]  # soft limit, bytes


def scale(platform: Platform, name: str, replicas: int) -> None:
    answer = platform.request(
        "POST", f"/system/scale-function/{name}", json={"serviceName": name, "replicas": replicas}
    )
    assert answer.status_code == 202, answer.text


def remove(platform: Platform, name: str) -> None:
    answer = platform.request("DELETE", "/system/functions", json={"functionName": name})
    assert answer.status_code == 202, answer.text


# -- the program's own helpers, without a platform ------------------------------------------
def test_arguments_expand_instance_variables() -> None:
    env = {"NFAAS_ADDRESS": "198.18.1.7", "HOME": "/tmp"}
    assert expand("$(NFAAS_ADDRESS)", env) == "198.18.1.7"
    assert expand("--store=$(HOME)/js", env) == "--store=/tmp/js"
    assert expand("$(UNSET)", env) == "$(UNSET)"  # unknown names stay as written
    assert expand("$$(NFAAS_ADDRESS)", env) == "$(NFAAS_ADDRESS)"  # escaped
    assert expand("cost: $5 $$", env) == "cost: $5 $$"


def test_programs_are_resolved_with_clear_errors(tmp_path: Path) -> None:
    assert resolve("sh", str(tmp_path), "/usr/bin:/bin").endswith("/sh")
    with pytest.raises(ProgramError, match=r"program 'no-such-program' not found on PATH \(/x\)"):
        resolve("no-such-program", str(tmp_path), "/x")
    with pytest.raises(ProgramError, match="not found in the function's code directory"):
        resolve("./run.sh", str(tmp_path), "/usr/bin")
    (tmp_path / "run.sh").write_text("#!/bin/sh\n")
    (tmp_path / "run.sh").chmod(0o644)
    with pytest.raises(ProgramError, match="is not executable"):
        resolve("./run.sh", str(tmp_path), "/usr/bin")


def test_broker_example_is_a_valid_manifest_and_config() -> None:
    function = load_manifest(EXAMPLE / "stack.yml").functions["broker-nats"]
    assert function.handler_dir == EXAMPLE
    spec = function.spec
    assert spec.runtime == "command" and spec.command[:3] == ("nats-server", "-c", "nats.conf")
    assert (spec.isolation, spec.network, spec.scale.min) == ("container", "bridged", 1)
    checked = subprocess.run(
        [NATS_SERVER, "-c", "nats.conf", "-t"], cwd=EXAMPLE, capture_output=True, timeout=30
    )
    assert checked.returncode == 0, checked.stderr


# -- process tier ----------------------------------------------------------------------------
def test_process_tier_nats_server_serves_restarts_updates_and_goes(
    platform: Platform, unique_name
) -> None:
    name = unique_name("cmd-nats")
    port = free_port()
    limits = {"memory": "128Mi"}
    deploy_command(
        platform, name, [NATS_SERVER, "-a", "127.0.0.1", "-p", str(port)], {"limits": limits}
    )
    first = running(platform, name)
    nats_works(f"nats://127.0.0.1:{port}")

    # the tier's usual confinement: its own unprivileged uid, the function's memory as its
    # data limit, the function's code directory as its working directory
    uid = int(proc_status(first["pid"])["Uid"].split()[0])
    assert uid >= 200_000
    assert data_size_limit(first["pid"]) == str(128 * 1024**2)
    assert os.readlink(f"/proc/{first['pid']}/cwd").startswith(str(platform.data_dir / "code"))
    status = platform.status(name)
    assert status["state"] == "running" and status["wanted"] == 1 and status["restarts"] == 0
    assert status["cold_starts"][0]["trigger"] == "deploy"

    # HTTP is not its protocol
    answer = platform.invoke(name)
    assert answer.status_code == 400
    assert "serves its own protocol on its own ports" in answer.text

    # killed: the platform starts it again, and says why it went
    os.kill(first["pid"], signal.SIGKILL)
    second = running(platform, name, other_than=first["pid"])
    assert second["restarts"] == 1 and second["replica"] == 0
    status = platform.status(name)
    assert status["exits"][-1]["reason"] == "program killed by SIGKILL"
    assert status["cold_starts"][-1]["trigger"] == "restart"
    nats_works(f"nats://127.0.0.1:{port}")
    assert "[nfaas] program killed by SIGKILL" in "\n".join(platform.logs(name))

    # scaled to zero and back
    scale(platform, name, 0)
    wait_until(lambda: pid_gone(second["pid"]), timeout=10, what="the program stopped by scale 0")
    assert platform.status(name)["state"] == "stopped"
    scale(platform, name, 1)
    third = running(platform, name, other_than=second["pid"])

    # updated: the old program stops before the new one starts on another port
    new_port = free_port()
    deploy_command(platform, name, [NATS_SERVER, "-a", "127.0.0.1", "-p", str(new_port)])
    fourth = running(platform, name, other_than=third["pid"])
    assert pid_gone(third["pid"])
    nats_works(f"nats://127.0.0.1:{new_port}")

    remove(platform, name)
    wait_until(lambda: pid_gone(fourth["pid"]), timeout=10, what="the program gone after remove")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", new_port), timeout=2).close()


def test_missing_program_is_named(platform: Platform, unique_name) -> None:
    name = unique_name("cmd-missing")
    deploy_command(platform, name, ["no-such-broker-xyz", "--port", "1"])
    status = wait_until(
        lambda: (s := platform.status(name))["last_error"] and s, timeout=10, what="the error"
    )
    assert "program 'no-such-broker-xyz' not found on PATH" in status["last_error"]
    assert status["instances"] == [] and status["state"] in ("crash-loop", "starting")
    assert any("no-such-broker-xyz" in line for line in platform.logs(name))
    remove(platform, name)


def test_program_exiting_at_once_is_a_visible_crash_loop(platform: Platform, unique_name) -> None:
    name = unique_name("cmd-exits")
    deploy_command(platform, name, ["sh", "-c", "echo giving up; exit 3"])
    status = wait_until(
        lambda: (s := platform.status(name))["restarts"] >= 2 and s,
        timeout=20,
        what="two restarts",
    )
    assert {exit["reason"] for exit in status["exits"]} == {"program exited with status 3"}
    assert "program exited with status 3" in status["last_error"]
    logs = platform.logs(name)
    assert "giving up" in logs
    assert any("restarting in" in line for line in logs)
    # the back-off doubles: the announced delays are 0.5 s, 1 s, 2 s, ...
    delays = [line.rsplit("restarting in ", 1)[1] for line in logs if "restarting in" in line]
    assert delays[:2] == ["0.5s", "1.0s"]
    remove(platform, name)


# -- container tier ---------------------------------------------------------------------------
@needs_bridged
def test_container_bridged_nats_example_at_its_own_address(platform: Platform, unique_name) -> None:
    """examples/broker-nats as it is: nats-server found on PATH, its config from the bundle,
    $(NFAAS_ADDRESS) and $(HOME) on its command line, JetStream storing under $HOME."""
    name = unique_name("cmd-cnats")
    entry = yaml.safe_load((EXAMPLE / "stack.yml").read_text())["functions"]["broker-nats"]
    entry.pop("handler")
    sha = platform.request(
        "POST",
        "/system/bundles",
        content=pack(EXAMPLE),
        headers={"content-type": "application/zip"},
    ).json()["sha256"]
    body = {"name": name, "bundle": sha, "spec": entry}
    assert platform.request("POST", "/system/functions", json=body).status_code == 202
    first = running(platform, name)
    assert first["address"].startswith("198.1")  # on the node's bridge, 198.18.0.0/15
    url = f"nats://{first['address']}:4222"
    nats_works(url)
    assert nats_roundtrip(url, jetstream=True) == b"stored"
    health = httpx.get(f"http://{first['address']}:8222/healthz", timeout=5)
    assert health.status_code == 200 and health.json() == {"status": "ok"}
    # in the container's own PID namespace, under its own uid
    status = proc_status(first["pid"])
    assert len(status["NSpid"].split()) == 2
    assert int(status["Uid"].split()[0]) >= 300_000

    os.kill(first["pid"], signal.SIGKILL)
    second = running(platform, name, other_than=first["pid"])
    assert second["restarts"] == 1
    nats_works(f"nats://{second['address']}:4222")

    remove(platform, name)
    wait_until(lambda: pid_gone(second["pid"]), timeout=10, what="the program gone after remove")


@needs_bridged
@pytest.mark.skipif(
    not os.path.exists(MOSQUITTO) or not shutil.which("mosquitto_pub"),
    reason="Mosquitto and its clients are not installed",
)
def test_container_mosquitto_with_its_config_in_the_bundle(platform: Platform, unique_name) -> None:
    name = unique_name("cmd-mqtt")
    spec = {"isolation": "container", "network": "bridged", "scale": {"max": 1}}
    deploy_command(
        platform,
        name,
        [MOSQUITTO, "-c", "mosquitto.conf"],
        spec,
        {"mosquitto.conf": MOSQUITTO_CONF},
    )
    instance = running(platform, name)
    address = instance["address"]

    def publish() -> bool:
        done = subprocess.run(
            ["mosquitto_pub", "-h", address, "-t", "command/test", "-r", "-m", "retained hello"],
            capture_output=True,
            timeout=10,
        )
        return done.returncode == 0

    wait_until(publish, timeout=15, what=f"Mosquitto accepting a publish at {address}")
    received = subprocess.run(
        ["mosquitto_sub", "-h", address, "-t", "command/test", "-C", "1", "-W", "10"],
        capture_output=True,
        timeout=20,
    )
    assert received.stdout == b"retained hello\n", received.stderr
    assert any("mosquitto version" in line for line in platform.logs(name))

    remove(platform, name)
    wait_until(lambda: pid_gone(instance["pid"]), timeout=10, what="Mosquitto gone after remove")


def test_microvm_tier_is_refused(platform: Platform, unique_name) -> None:
    name = unique_name("cmd-vm")
    sha = platform.upload({"handler.py": ""})
    body = {
        "name": name,
        "bundle": sha,
        "spec": {"runtime": "command", "command": ["sh"], "isolation": "microvm"},
    }
    answer = platform.request("POST", "/system/functions", json=body)
    if answer.status_code == 400:  # refused at deploy (or no microVM tier on this node)
        assert answer.json()["field"] == "isolation"
        return
    assert answer.status_code == 202, answer.text
    status = wait_until(
        lambda: (s := platform.status(name))["state"] == "refused" and s, timeout=10
    )
    assert "isolation process or container" in status["last_error"]
    assert status["instances"] == []
    remove(platform, name)
