"""Function volumes through a real ``nfaas up``: a directory that outlives instances.

What one instance writes in ``$NFAAS_VOLUME`` the next one reads and rewrites, although it
runs under another uid: after a kill, a scale to zero and an update. Instances running at the
same time share the files (whatever modes they were created with). The data lives in
``<data>/volumes/<namespace>/<name>`` and goes with ``remove``. In the container tier the
volume is mounted at its ``path`` (nosuid, nodev), in the process tier ``NFAAS_VOLUME`` is the
node's directory. Bad ``volume`` values are 400s naming the field.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nats
import pytest
import yaml
from platform_harness import CLEAN_EXIT, REPO, Platform, dedent, pid_gone, wait_until

from nfaas.core.bundle import pack

CONTAINERS = shutil.which("runc") is not None and os.getuid() == 0
BRIDGED = CONTAINERS and all(shutil.which(tool) for tool in ("ip", "nsenter"))
EXAMPLE = REPO / "examples" / "broker-nats"
TIERS = [
    "process",
    pytest.param(
        "container", marks=pytest.mark.skipif(not CONTAINERS, reason="needs runc and root")
    ),
]

# Each start reads the count the previous instance left, adds one and says so in the log.
COUNTER = (
    'n=$(cat "$NFAAS_VOLUME/starts" 2>/dev/null || echo 0); n=$((n+1)); '
    'echo $n > "$NFAAS_VOLUME/starts"; '
    'echo "start $n as $(id -u) in $NFAAS_VOLUME"; exec sleep 600'
)
# Each start appends to one file, made private (0600) by whoever created it.
SHARER = 'umask 077; echo "$NFAAS_INSTANCE $(id -u)" >> "$NFAAS_VOLUME/who"; exec sleep 600'
NOTES = """\
import os


def handle(event, context):
    notes = os.path.join(os.environ["NFAAS_VOLUME"], "notes")
    if event.body:
        with open(notes, "a") as file:
            file.write(event.body.decode() + "\\n")
    with open(notes) as file:
        return {"notes": file.read().split(), "uid": os.getuid(), "version": VERSION}
"""


# -- helpers ---------------------------------------------------------------------------------
def deploy(platform: Platform, name: str, spec: dict[str, Any], source: str = "") -> None:
    sha = platform.upload({"handler.py": dedent(source) if source else "# unused\n"})
    body = {"name": name, "bundle": sha, "spec": spec}
    answer = platform.request("POST", "/system/functions", json=body)
    if answer.status_code == 409:
        answer = platform.request("PUT", "/system/functions", json=body)
    assert answer.status_code == 202, answer.text


def command_spec(isolation: str, script: str, **extra: Any) -> dict[str, Any]:
    return {
        "runtime": "command",
        "command": ["sh", "-c", script],
        "isolation": isolation,
        "volume": {"path": "/data"},
        "limits": {"cpu_time": "1h"},
        **extra,
    }


def volume_of(platform: Platform, name: str) -> Path:
    return platform.data_dir / "volumes" / "default" / name


def programs(platform: Platform, name: str, count: int, other_than: set[int]) -> list[int]:
    """The pids of ``count`` running programs of ``name``, none of them in ``other_than``."""

    def ready() -> list[int] | None:
        pids = [one["pid"] for one in platform.status(name)["instances"]]
        alive = [pid for pid in pids if pid and pid not in other_than and not pid_gone(pid)]
        return alive if len(alive) == count else None

    return list(wait_until(ready, timeout=20, what=f"{count} running programs of {name}"))


def uid_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        line = next(line for line in status if line.startswith("Uid:"))
    return int(line.split()[1])


def starts(platform: Platform, name: str, count: int) -> str:
    """The log line of the ``count``-th start, once it is there."""
    needle = f"start {count} as "
    lines = platform.wait_for_log(name, needle, timeout=20)
    return next(line for line in lines if needle in line)


def scale(platform: Platform, name: str, replicas: int) -> None:
    body = {"serviceName": name, "replicas": replicas}
    answer = platform.request("POST", f"/system/scale-function/{name}", json=body)
    assert answer.status_code == 202, answer.text


def remove(platform: Platform, name: str) -> None:
    answer = platform.request("DELETE", "/system/functions", json={"functionName": name})
    assert answer.status_code == 202, answer.text


# -- what outlives an instance ---------------------------------------------------------------
@pytest.mark.parametrize("isolation", TIERS)
def test_the_next_instance_sees_what_the_last_one_wrote(
    platform: Platform, unique_name: Any, isolation: str
) -> None:
    name = unique_name(f"vol-{isolation[:4]}")
    deploy(platform, name, command_spec(isolation, COUNTER))
    [first] = programs(platform, name, 1, set())
    line = starts(platform, name, 1)
    folder = volume_of(platform, name)
    inside = "/data" if isolation == "container" else str(folder)
    assert line == f"start 1 as {uid_of(first)} in {inside}"
    assert (folder / "starts").read_text() == "1\n"
    assert (folder / "starts").stat().st_uid == uid_of(first)
    assert folder.stat().st_mode & 0o777 == 0o700
    if isolation == "container":
        with open(f"/proc/{first}/mountinfo") as mounts:
            [mount] = [row.split() for row in mounts if row.split()[4] == "/data"]
        assert mount[5].split(",")[:3] == ["rw", "nosuid", "nodev"]
        assert mount[3].endswith(f"/volumes/default/{name}")  # the node's directory, bound

    # killed: the restarted program (under whatever uid it got) reads 1 and writes 2
    os.kill(first, signal.SIGKILL)
    [second] = programs(platform, name, 1, {first})
    second_uid = uid_of(second)
    assert starts(platform, name, 2) == f"start 2 as {second_uid} in {inside}"
    assert (folder / "starts").stat().st_uid == second_uid

    # scaled to zero and back; meanwhile another function holds the uid just given back (a
    # container's uid is taken at load, last freed first), so the next one has another
    scale(platform, name, 0)
    wait_until(lambda: pid_gone(second), timeout=10, what="the program stopped by scale 0")
    assert (folder / "starts").read_text() == "2\n"
    holder = unique_name("vol-holder")
    deploy(
        platform,
        holder,
        {"runtime": "command", "command": ["sleep", "600"], "isolation": isolation},
    )
    programs(platform, holder, 1, set())
    scale(platform, name, 1)
    [third] = programs(platform, name, 1, {first, second})
    assert starts(platform, name, 3) == f"start 3 as {uid_of(third)} in {inside}"
    assert uid_of(third) != second_uid
    remove(platform, holder)

    # updated (deployed again): the data stays
    deploy(platform, name, command_spec(isolation, COUNTER, env={"VERSION": "2"}))
    programs(platform, name, 1, {first, second, third})
    starts(platform, name, 4)
    assert (folder / "starts").read_text() == "4\n"

    remove(platform, name)
    assert not folder.exists()


@pytest.mark.parametrize("isolation", TIERS)
def test_python_handlers_keep_their_notes_across_scale_to_zero_and_updates(
    platform: Platform, unique_name: Any, isolation: str
) -> None:
    name = unique_name(f"vol-py-{isolation[:4]}")
    spec = {"isolation": isolation, "volume": {"path": "/var/notes"}, "scale": {"max": 1}}
    deploy(platform, name, spec, NOTES.replace("VERSION", "1"))
    answer = platform.invoke(name, b"one")
    assert answer.status_code == 200, answer.text
    assert answer.json()["notes"] == ["one"]

    scale(platform, name, 0)
    wait_until(lambda: platform.status(name)["replicas"] == 0, timeout=10, what="zero replicas")
    answer = platform.invoke(name, b"two")  # a cold start: another instance, maybe another uid
    assert answer.status_code == 200, answer.text
    assert answer.headers.get("x-nfaas-cold-start")
    assert answer.json()["notes"] == ["one", "two"]

    deploy(platform, name, spec, NOTES.replace("VERSION", "2"))
    answer = wait_until(
        lambda: (a := platform.invoke(name, b"three")).json().get("version") == 2 and a,
        timeout=20,
        what="the updated handler",
    )
    assert answer.json()["notes"] == ["one", "two", "three"]

    folder = volume_of(platform, name)
    assert (folder / "notes").read_text() == "one\ntwo\nthree\n"
    remove(platform, name)
    assert not folder.exists()


@pytest.mark.parametrize("isolation", TIERS)
def test_instances_running_together_share_the_files(
    platform: Platform, unique_name: Any, isolation: str
) -> None:
    """Two replicas at once: the same uid, so each appends to the file the other created
    private (0600); a restarted replica joins them under that uid."""
    name = unique_name(f"vol-two-{isolation[:4]}")
    deploy(platform, name, command_spec(isolation, SHARER, scale={"min": 2, "max": 2}))
    pids = programs(platform, name, 2, set())
    assert uid_of(pids[0]) == uid_of(pids[1])
    who = volume_of(platform, name) / "who"
    wait_until(lambda: len(who.read_text().splitlines()) == 2, timeout=10, what="two lines")
    assert who.stat().st_mode & 0o777 == 0o600

    os.kill(pids[0], signal.SIGKILL)
    again = programs(platform, name, 2, {pids[0]})
    assert {uid_of(pid) for pid in again} == {uid_of(pids[1])}
    wait_until(lambda: len(who.read_text().splitlines()) == 3, timeout=10, what="three lines")
    assert {line.split()[1] for line in who.read_text().splitlines()} == {str(uid_of(pids[1]))}
    remove(platform, name)


def test_the_volume_survives_a_restart_of_the_platform(
    platform_factory: Callable[..., Platform], unique_name: Any
) -> None:
    first = platform_factory()
    name = unique_name("vol-up")
    deploy(first, name, command_spec("process", COUNTER))
    programs(first, name, 1, set())
    starts(first, name, 1)
    assert first.stop() in CLEAN_EXIT

    second = platform_factory(first.data_dir)
    [again] = programs(second, name, 1, set())  # a command function starts with the platform
    assert starts(second, name, 2) == f"start 2 as {uid_of(again)} in {volume_of(second, name)}"
    remove(second, name)
    assert not volume_of(second, name).exists()


def jetstream(url: str, action: str) -> bytes | None:
    """``store`` a message in a file-backed stream, or ``read`` it back; None if the broker
    cannot be reached yet."""

    async def run() -> bytes:
        client = await nats.connect(
            url, connect_timeout=1, allow_reconnect=False, max_reconnect_attempts=0
        )
        try:
            js = client.jetstream()
            if action == "store":
                await js.add_stream(name="KEPT", subjects=["kept"], storage="file")
                await js.publish("kept", b"kept across instances")
            return bytes((await js.get_msg("KEPT", 1)).data or b"")
        finally:
            await client.close()

    try:
        return asyncio.run(asyncio.wait_for(run(), 5))
    except (OSError, nats.errors.Error, TimeoutError):
        return None


@pytest.mark.skipif(not BRIDGED, reason="bridged containers need runc, iproute2, nsenter, root")
def test_the_broker_example_keeps_its_streams_across_a_kill(
    platform: Platform, unique_name: Any
) -> None:
    """examples/broker-nats as it is: JetStream's store is the volume, so a stream and its
    message are still there when the restarted broker (at a new address, maybe) comes up."""
    name = unique_name("vol-nats")
    entry = yaml.safe_load((EXAMPLE / "stack.yml").read_text())["functions"]["broker-nats"]
    entry.pop("handler")
    answer = platform.request(
        "POST",
        "/system/bundles",
        content=pack(EXAMPLE),
        headers={"content-type": "application/zip"},
    )
    body = {"name": name, "bundle": answer.json()["sha256"], "spec": entry}
    assert platform.request("POST", "/system/functions", json=body).status_code == 202

    def address(other_than: int = 0) -> tuple[int, str] | None:
        for one in platform.status(name)["instances"]:
            if one["pid"] and one["pid"] != other_than and not pid_gone(one["pid"]):
                return int(one["pid"]), str(one["address"])
        return None

    pid, where = wait_until(address, timeout=20, what="the broker")
    stored = wait_until(lambda: jetstream(f"nats://{where}:4222", "store"), timeout=15)
    assert stored == b"kept across instances"
    assert (volume_of(platform, name) / "jetstream").is_dir()

    os.kill(pid, signal.SIGKILL)
    _, where = wait_until(lambda: address(other_than=pid), timeout=20, what="the restarted one")
    read = wait_until(lambda: jetstream(f"nats://{where}:4222", "read"), timeout=15)
    assert read == b"kept across instances"
    remove(platform, name)
    assert not volume_of(platform, name).exists()


# -- what is refused -------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spec", "field", "text"),
    [
        ({"volume": {"path": "data"}}, "volume.path", "must be an absolute path"),
        ({"volume": {"path": "/data/"}}, "volume.path", "normalised"),
        ({"volume": {"path": "/"}}, "volume.path", "cannot be /"),
        ({"volume": {"path": "/proc/data"}}, "volume.path", "inside /proc"),
        ({"volume": {"path": "/tmp"}}, "volume.path", "inside /tmp"),
        ({"volume": {}}, "volume.path", "required"),
        ({"volume": "/data"}, "volume", "expected a mapping"),
        ({"volume": {"path": "/data", "size": "1Gi"}}, "volume.size", "unknown key"),
        ({"volume": {"path": "/data"}, "isolation": "microvm"}, "volume", "microVM"),
    ],
)
def test_bad_volumes_are_400s_naming_the_field(
    platform: Platform, unique_name: Any, spec: dict[str, Any], field: str, text: str
) -> None:
    sha = platform.upload({"handler.py": "def handle(event, context):\n    return 1\n"})
    name = unique_name("vol-bad")
    body = {"name": name, "bundle": sha, "spec": spec}
    answer = platform.request("POST", "/system/functions", json=body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["field"] == field
    assert text in answer.json()["error"]
    assert platform.request("GET", f"/system/function/{name}").status_code == 404


@pytest.mark.skipif(not CONTAINERS, reason="needs runc and root")
def test_a_container_volume_over_the_platforms_own_binds_does_not_start(
    platform: Platform, unique_name: Any
) -> None:
    """The container binds the platform's virtualenv read-only: a volume there would hide it."""
    name = unique_name("vol-venv")
    path = str(REPO / ".venv" / "data")
    if not path.startswith(sys.prefix + "/"):  # the platform runs from the virtualenv at REPO
        pytest.skip("the platform's virtualenv is elsewhere")
    if path.startswith("/tmp/"):  # refused by the spec first (the sandbox's own /tmp)
        pytest.skip("the repository is under /tmp, where no volume may go")
    deploy(platform, name, command_spec("container", COUNTER, volume={"path": path}))
    status = wait_until(
        lambda: (s := platform.status(name))["last_error"] and s, timeout=10, what="the error"
    )
    assert status["last_error"].startswith("volume.path: ")
    assert "which the container mounts itself" in status["last_error"]
    assert status["instances"] == []
    remove(platform, name)
