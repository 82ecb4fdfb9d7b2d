"""The microVM tier through the real platform, and the attacks a function may try from it.

The guest has its own kernel: the host's files, network and processes do not exist in it.
Under TCG (no usable KVM) a guest boots in seconds, so these tests keep one warm instance.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from platform_harness import Platform
from test_container_tier import (
    PROBE,
    ask,
    assert_scales_to_zero_and_back,
    connect_to_host_loopback,
)

from nfaas.sandbox.guest_image import find_kernel

pytestmark = pytest.mark.skipif(
    not shutil.which("qemu-system-x86_64") or find_kernel() is None,
    reason="the microVM tier needs QEMU and a guest kernel",
)

SPEC = {
    "isolation": "microvm",
    "scale": {"max": 1, "idle_timeout": "300s"},
    "limits": {"memory": "64Mi", "processes": 32, "timeout": "120s"},
}


@pytest.fixture(scope="module")
def vm(platform_factory) -> Platform:
    return platform_factory(extra_args=("--microvm-pool", "1"))


@pytest.fixture(scope="module")
def probe(vm: Platform) -> str:
    vm.deploy("vm-probe", PROBE, SPEC)
    return "vm-probe"


def test_runs_unprivileged_in_its_own_machine(vm: Platform, probe: str) -> None:
    me = ask(vm, probe, what="whoami")
    assert me["uid"] != 0
    assert me["cwd"] == "/tmp"
    assert me["etc"] is False
    info = vm.get("/system/info").json()
    microvm = next(d for d in info["drivers"] if d["driver"] == "microvm")
    assert microvm["accel"] in {"kvm", "tcg"} and microvm["kvm_probe"]
    instance = vm.status(probe)["instances"][0]
    assert instance["id"].startswith("v")
    assert 0 < instance["vmm_pss_bytes"] < instance["pss_bytes"]
    # QEMU itself dropped root before the guest started and runs under its seccomp filter
    lines = Path(f"/proc/{instance['pid']}/status").read_text().splitlines()
    status = dict(line.split(":", 1) for line in lines)
    assert status["Uid"].split()[0] != "0" and status["Seccomp"].strip() == "2"


@pytest.mark.parametrize("path", ["/etc/shadow", "{data}/state.db", "{data}/admin.token"])
def test_host_files_do_not_exist_in_the_guest(vm: Platform, probe: str, path: str) -> None:
    assert ask(vm, probe, what="read", path=path.format(data=vm.data_dir)) == "ENOENT"


@pytest.mark.parametrize("path", ["/usr/lib/evil", "/code/handler.py", "/evil"])
def test_cannot_write_outside_tmp(vm: Platform, probe: str, path: str) -> None:
    assert ask(vm, probe, what="write", path=path) in {"EACCES", "EROFS"}
    assert ask(vm, probe, what="write", path="/tmp/mine") == "allowed"


def test_cannot_reach_a_service_on_the_hosts_loopback(vm: Platform, probe: str) -> None:
    assert connect_to_host_loopback(vm, probe) in {"ECONNREFUSED", "ENETUNREACH"}


@pytest.mark.parametrize("call", ["mount", "ptrace", "bpf"])
def test_dangerous_system_calls_are_refused(vm: Platform, probe: str, call: str) -> None:
    assert ask(vm, probe, what=call) == "EPERM"


def test_fork_bomb_is_stopped_by_the_process_limit(vm: Platform, probe: str) -> None:
    result = ask(vm, probe, what="forkbomb")
    assert result["error"] == "EAGAIN"
    assert result["stopped_after"] < 32
    assert ask(vm, probe, what="whoami")["uid"] != 0  # the instance still serves


def test_memory_hog_fails_in_its_own_guest(vm: Platform, probe: str) -> None:
    response = vm.invoke(probe, params={"what": "hog"})
    assert response.status_code == 500
    assert "MemoryError" in response.text
    assert ask(vm, probe, what="whoami")["uid"] != 0  # the platform and the guest keep serving


def test_scales_to_zero_and_back(vm: Platform) -> None:
    assert_scales_to_zero_and_back(vm, "vm-zero", SPEC, wait=120)
