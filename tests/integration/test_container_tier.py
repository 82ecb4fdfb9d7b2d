"""The container tier through the real platform, and the attacks a function may try from it.

Each attack runs inside an `isolation: container` function; each must fail, and where the
instance dies its caller gets a clear error while other functions keep serving.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import threading

import pytest
from platform_harness import Platform, pid_gone, wait_until

pytestmark = pytest.mark.skipif(
    not shutil.which("runc") or os.getuid() != 0, reason="the container tier needs runc and root"
)

PROBE = """
import ctypes, errno, json, os, socket

libc = ctypes.CDLL(None, use_errno=True)


def attempt(fn):
    try:
        fn()
        return "allowed"
    except OSError as exc:
        return errno.errorcode.get(exc.errno, str(exc.errno))


def syscall(number, *args):
    if libc.syscall(number, *args) == -1:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def read(path):
    with open(path, "rb") as handle:
        handle.read(1)


def write(path):
    with open(path, "w") as handle:
        handle.write("x")


def connect(port):
    with socket.create_connection(("127.0.0.1", port), timeout=1):
        pass


def fork_bomb():
    children = 0
    try:
        for _ in range(10000):
            if os.fork() == 0:
                import time
                time.sleep(5)
                os._exit(0)
            children += 1
    except OSError as exc:
        return {"stopped_after": children, "error": errno.errorcode.get(exc.errno)}
    return {"stopped_after": children, "error": None}


def handle(event, context):
    what = event.query.get("what", "")
    if what == "whoami":
        return {"uid": os.getuid(), "cwd": os.getcwd(), "etc": os.path.exists("/etc/passwd"),
                "root": sorted(os.listdir("/"))}
    if what == "read":
        return attempt(lambda: read(event.query["path"]))
    if what == "write":
        return attempt(lambda: write(event.query["path"]))
    if what == "connect":
        return attempt(lambda: connect(int(event.query["port"])))
    if what == "mount":
        return attempt(lambda: syscall(165, b"none", b"/tmp", b"tmpfs", 0, None))
    if what == "ptrace":
        return attempt(lambda: syscall(101, 16, 1, None, None))  # PTRACE_ATTACH to pid 1
    if what == "bpf":
        return attempt(lambda: syscall(321, 0, None, 0))
    if what == "forkbomb":
        return fork_bomb()
    if what == "hog":
        blob = bytearray(1024 * 1024 * 1024)
        return len(blob)
    return "ok"
"""

SPEC = {
    "isolation": "container",
    "scale": {"max": 1, "idle_timeout": "60s"},
    "limits": {"memory": "96Mi", "processes": 32, "timeout": "20s"},
}


@pytest.fixture(scope="module")
def probe(platform: Platform) -> str:
    platform.deploy("ctr-probe", PROBE, SPEC)
    return "ctr-probe"


def assert_scales_to_zero_and_back(platform: Platform, name: str, spec: dict, wait: float) -> None:
    """Cold start, idle to zero (the sandbox's processes gone), cold start again."""
    platform.deploy(name, PROBE, {**spec, "scale": {"max": 1, "idle_timeout": "1s"}})
    first = platform.invoke(name, params={"what": "whoami"})
    assert first.status_code == 200 and first.headers["x-nfaas-cold-start"] == "1", first.text
    sandbox_pid = platform.status(name)["instances"][0]["pid"]
    wait_until(lambda: platform.describe(name)["replicas"] == 0, timeout=wait, what="zero")
    wait_until(lambda: pid_gone(sandbox_pid), timeout=wait, what="the sandbox to go")
    again = platform.invoke(name, params={"what": "whoami"})
    assert again.status_code == 200 and again.headers["x-nfaas-cold-start"] == "1", again.text
    assert platform.status(name)["instances"][0]["pid"] != sandbox_pid
    assert (
        platform.request("DELETE", "/system/functions", json={"functionName": name}).status_code
        == 202
    )


def ask(platform: Platform, name: str, **query: str):
    response = platform.invoke(name, params=query)
    assert response.status_code == 200, response.text
    if response.headers["content-type"].startswith("application/json"):
        return response.json()
    return response.text


def test_runs_unprivileged_in_a_minimal_root(platform: Platform, probe: str) -> None:
    me = ask(platform, probe, what="whoami")
    assert me["uid"] != 0
    assert me["cwd"] == "/tmp"
    assert me["etc"] is False  # no host /etc
    assert "root" not in me["root"] and "home" not in me["root"]
    assert platform.status(probe)["instances"][0]["id"].startswith("c")


@pytest.mark.parametrize(
    "path", ["/etc/shadow", "{data}/state.db", "{data}/admin.token", "/root/.bashrc"]
)
def test_cannot_read_host_secrets_or_platform_data(
    platform: Platform, probe: str, path: str
) -> None:
    target = path.format(data=platform.data_dir)
    assert ask(platform, probe, what="read", path=target) in {"ENOENT", "EACCES"}


@pytest.mark.parametrize("path", ["/usr/lib/evil", "/code/handler.py", "/evil"])
def test_cannot_write_outside_tmp(platform: Platform, probe: str, path: str) -> None:
    assert ask(platform, probe, what="write", path=path) in {"EROFS", "EACCES", "ENOENT"}
    assert ask(platform, probe, what="write", path="/tmp/mine") == "allowed"


def connect_to_host_loopback(platform: Platform, probe: str) -> str:
    """What the function gets connecting to a server the test runs on the host's 127.0.0.1;
    asserts the server saw no connection."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    accepted: list[object] = []

    def accept() -> None:
        with contextlib.suppress(OSError):  # closed when the test is done: nobody came
            accepted.append(server.accept())

    threading.Thread(target=accept, daemon=True).start()
    try:
        result = ask(platform, probe, what="connect", port=str(server.getsockname()[1]))
        assert not accepted
        return str(result)
    finally:
        server.close()


def test_cannot_reach_a_service_on_the_hosts_loopback(platform: Platform, probe: str) -> None:
    assert connect_to_host_loopback(platform, probe) == "ECONNREFUSED"


@pytest.mark.parametrize("call", ["mount", "ptrace", "bpf"])
def test_dangerous_system_calls_are_refused(platform: Platform, probe: str, call: str) -> None:
    assert ask(platform, probe, what=call) == "EPERM"


def test_fork_bomb_is_stopped_by_the_pids_limit(platform: Platform, probe: str) -> None:
    other = "ctr-bystander"
    platform.deploy(other, PROBE, SPEC)
    result = ask(platform, probe, what="forkbomb")
    assert result["error"] == "EAGAIN"
    assert result["stopped_after"] < 32
    assert platform.invoke(other, params={"what": "whoami"}).status_code == 200


def test_memory_hog_kills_only_that_instance(platform: Platform, probe: str) -> None:
    name = "ctr-hog"
    platform.deploy(name, PROBE, SPEC)
    before = platform.invoke(name, params={"what": "whoami"})
    assert before.status_code == 200
    response = platform.invoke(name, params={"what": "hog"})
    assert response.status_code == 502
    assert "OOM killer" in response.text and "96Mi" in response.text
    assert platform.invoke(probe, params={"what": "whoami"}).status_code == 200  # others serve
    again = platform.invoke(name, params={"what": "whoami"})  # a new instance takes over
    assert again.status_code == 200


def test_scales_to_zero_and_back(platform: Platform) -> None:
    assert_scales_to_zero_and_back(platform, "ctr-zero", SPEC, wait=10)
