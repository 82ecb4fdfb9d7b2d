"""The process tier's isolation: own uid, own directory, rlimits, a clean environment."""

from __future__ import annotations

import os
import stat

import pytest
from platform_harness import Platform, wait_until

PROBE = """
import os
import resource

def handle(event, context):
    mode = event.query.get("mode", "info")
    if mode == "info":
        return {
            "uid": os.getuid(),
            "euid": os.geteuid(),
            "gid": os.getgid(),
            "groups": os.getgroups(),
            "cwd": os.getcwd(),
            "instance": context.instance_id,
            "env": dict(os.environ),
            "nofile": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
            "nproc": resource.getrlimit(resource.RLIMIT_NPROC)[0],
            "cpu": resource.getrlimit(resource.RLIMIT_CPU)[0],
            "core": resource.getrlimit(resource.RLIMIT_CORE)[0],
        }
    if mode == "read":
        path = event.body.decode()
        try:
            with open(path, "rb") as handle:
                handle.read(1)
            return "allowed"
        except PermissionError:
            return "denied"
    if mode == "list":
        try:
            return sorted(os.listdir(event.body.decode()))
        except PermissionError:
            return "denied"
    if mode == "write":
        try:
            with open(event.body.decode(), "w") as handle:
                handle.write("x")
            return "allowed"
        except (PermissionError, OSError) as exc:
            return "denied: " + type(exc).__name__
    if mode == "secret":
        with open("secret.txt", "w") as handle:
            handle.write("mine")
        return os.path.join(os.getcwd(), "secret.txt")
    if mode == "hog":
        block = bytearray(int(event.query["mb"]) * 1024 * 1024)
        return len(block)
    if mode == "grow":
        chunks = []
        while len(chunks) < 1000:
            chunks.append(bytearray(4 * 1024 * 1024))
        return len(chunks)
    return "?"
"""


@pytest.fixture(scope="module")
def probe(platform: Platform) -> str:
    name = "iso-probe"
    platform.deploy(
        name,
        PROBE,
        {
            "env": {"GREETING": "hi"},
            "limits": {"memory": "64Mi", "open_files": 100, "processes": 16, "cpu_time": "10m"},
            "scale": {"idle_timeout": "30s"},
        },
    )
    return name


def call(platform: Platform, name: str, mode: str, body: bytes = b"", **query: str):
    return platform.invoke(name, body, params={"mode": mode, **query})


def test_runs_unprivileged_in_its_own_directory(platform: Platform, probe: str) -> None:
    answer = call(platform, probe, "info")
    assert answer.status_code == 200, answer.text
    info = answer.json()
    assert info["uid"] != 0 and info["euid"] != 0 and info["gid"] != 0
    assert info["groups"] == []  # supplementary groups dropped
    expected = platform.data_dir / "instances" / info["instance"]
    assert info["cwd"] == str(expected)
    st = os.stat(expected)
    assert st.st_uid == info["uid"]
    assert stat.S_IMODE(st.st_mode) == 0o700
    assert info["env"]["HOME"] == info["cwd"]


def test_environment_is_the_functions_only(platform: Platform, probe: str) -> None:
    env = call(platform, probe, "info").json()["env"]
    assert env["GREETING"] == "hi"
    assert env["NFAAS_FUNCTION"] == probe
    assert env["NFAAS_NAMESPACE"] == "default"
    assert "NFAAS_CANARY_SECRET" not in env  # set in the platform's own environment
    assert set(env) <= {
        "PATH",
        "HOME",
        "LANG",
        "GREETING",
        "NFAAS_FUNCTION",
        "NFAAS_NAMESPACE",
        "NFAAS_INSTANCE",
    }


def test_rlimits_follow_the_spec(platform: Platform, probe: str) -> None:
    info = call(platform, probe, "info").json()
    assert info["nofile"] == 100
    assert info["nproc"] == 16
    assert info["cpu"] == 600
    assert info["core"] == 0


def test_cannot_reach_platform_state_or_its_own_code(platform: Platform, probe: str) -> None:
    for secret in ("admin.token", "state.db"):
        path = str(platform.data_dir / secret).encode()
        assert call(platform, probe, "read", path).text == "denied", secret
    code_dir = platform.describe(probe)["bundle"]
    handler = platform.data_dir / "code" / code_dir / "handler.py"
    assert call(platform, probe, "read", str(handler).encode()).text == "allowed"  # read-only
    verdict = call(platform, probe, "write", str(handler).encode()).text
    assert verdict.startswith("denied"), verdict
    new_file = str(platform.data_dir / "code" / code_dir / "planted.py").encode()
    assert call(platform, probe, "write", new_file).text.startswith("denied")


def test_instances_cannot_read_each_other(platform: Platform, probe: str, unique_name) -> None:
    other = unique_name("iso-other")
    platform.deploy(other, PROBE, {"scale": {"idle_timeout": "30s"}})
    secret = call(platform, other, "secret").text
    other_info = call(platform, other, "info").json()
    mine = call(platform, probe, "info").json()
    assert other_info["uid"] != mine["uid"]
    assert call(platform, probe, "read", secret.encode()).text == "denied"
    assert call(platform, probe, "list", other_info["cwd"].encode()).text == "denied"
    assert call(platform, other, "read", secret.encode()).text == "allowed"  # the owner can


@pytest.mark.parametrize("mode", ["hog", "grow"])
def test_memory_hog_fails_and_platform_keeps_serving(
    platform: Platform, probe: str, mode: str
) -> None:
    small = call(platform, probe, "hog", mb="8")  # well within 64Mi
    assert small.status_code == 200 and small.text == str(8 * 1024 * 1024)

    hog = call(platform, probe, mode, mb="512")
    assert hog.status_code == 500, hog.text
    assert hog.text.startswith("function raised MemoryError")

    assert platform.get("/healthz", token=None).text == "OK"
    again = call(platform, probe, "info")  # the function itself recovers too
    assert again.status_code == 200


def test_cpu_time_limit_kills_the_instance(platform: Platform, unique_name) -> None:
    name = unique_name("iso-cpu")
    source = """
    import os
    import time

    def handle(event, context):
        end = time.process_time() + float(event.query.get("spin", "0"))
        while time.process_time() < end:
            pass
        return {"pid": os.getpid()}
    """
    platform.deploy(name, source, {"limits": {"cpu_time": "1s", "timeout": "20s"}})
    warm = platform.invoke(name)
    assert warm.status_code == 200
    spinning = platform.invoke(name, params={"spin": "3"})
    assert spinning.status_code == 502  # SIGXCPU after 1 s of CPU, well before the timeout
    assert spinning.text.startswith("function instance died during the request")
    platform.wait_for_log(name, "instance killed by SIGXCPU")
    again = platform.invoke(name)
    assert again.status_code == 200
    assert again.json()["pid"] != warm.json()["pid"]


VICTIM = """
def handle(event, context):
    print("victim-log: card 4111-1111-1111-1111", flush=True)
    return "ok"
"""


@pytest.fixture(scope="module")
def victim(platform: Platform) -> tuple[str, str, str]:
    """Another tenant's function with a secret in its env and in its logs."""
    namespace, name, secret = "iso-victim", "victim", "sk-live-7d1f0c"
    platform.deploy(name, VICTIM, {"env": {"API_KEY": secret}}, namespace=namespace)
    assert platform.invoke(f"{name}.{namespace}").status_code == 200
    log_file = platform.data_dir / "logs" / namespace / f"{name}.log"
    wait_until(
        lambda: log_file.exists() and "victim-log" in log_file.read_text(),
        timeout=10,
        what="the victim's log line on disk",
    )
    return namespace, name, secret


@pytest.mark.parametrize(
    ("mode", "relative"),
    [
        ("read", "state.db-wal"),
        ("list", "bundles"),
        ("read", "logs/iso-victim/victim.log"),
        ("read", "state.db"),
        ("read", "admin.token"),
        ("list", "code"),
        ("list", "instances"),
    ],
)
def test_instance_cannot_read_other_tenants_data(
    platform: Platform, probe: str, victim: tuple[str, str, str], mode: str, relative: str
) -> None:
    path = platform.data_dir / relative
    assert path.exists(), path  # the platform did create it: the probe below is meaningful
    answer = call(platform, probe, mode, str(path).encode())
    assert answer.status_code == 200, answer.text
    assert answer.text == "denied", f"{relative} is open to function code: {answer.text[:200]}"
