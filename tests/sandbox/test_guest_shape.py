"""MicroVM guests are sized from the function's limits; the prepared pool only serves the
default size, and a function of another size gets a guest booted for it."""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from pathlib import Path

import pytest

from nfaas.core.bundle import pack
from nfaas.core.spec import validate_spec
from nfaas.node.shells import ShellPool
from nfaas.sandbox.base import CodeBundle, InstanceHooks, LoadTimings, Request
from nfaas.sandbox.guest_image import find_kernel
from nfaas.sandbox.microvm import GUEST_RESERVE_MIB, GuestShape, MicroVmDriver

pytestmark = pytest.mark.skipif(
    shutil.which("qemu-system-x86_64") is None or find_kernel() is None,
    reason="needs QEMU and a guest kernel",
)
HANDLER = """
import os

def handle(event, context):
    with open("/proc/meminfo") as meminfo:
        total_kib = int(meminfo.readline().split()[1])
    return {"mem_total_kib": total_kib, "cpus": os.cpu_count()}
"""


def test_a_function_gets_a_guest_of_its_own_size() -> None:
    root = Path(tempfile.mkdtemp(dir="/tmp", prefix="nfaas-shape-"))
    root.chmod(0o711)
    (root / "code").mkdir()
    (root / "code" / "handler.py").write_text(HANDLER)
    (root / "bundle.zip").write_bytes(pack(root / "code"))
    bundle = CodeBundle("x", str(root / "code"), archive=str(root / "bundle.zip"))
    spec = validate_spec("big", {"limits": {"memory": "512Mi", "cpu": 2}})

    async def main() -> tuple[dict[str, int], ShellPool, bool, int]:
        driver = MicroVmDriver(root / "data")
        (root / "data").mkdir(mode=0o711)
        await driver.start()
        pool = ShellPool(driver, 1)
        try:
            pool.refill()
            while not pool.ready:
                await asyncio.sleep(0.1)
            shell, prepared = await pool.acquire(spec.limits)
            vcpus = 2 if driver.accel == "kvm" else 1  # TCG guests get one (see MicroVmDriver)
            assert shell.shape == GuestShape(512 + GUEST_RESERVE_MIB, vcpus)
            hooks = InstanceHooks(on_log=lambda _: None, on_exit=lambda _: None)
            inst = await shell.load(spec, "t", bundle, LoadTimings(), hooks)
            answer = json.loads((await inst.invoke(Request("GET", "/", "", [], b""), 30)).body)
            assert inst.stats().extra["vmm_pss"] > 0
            await inst.stop()
            return answer, pool, prepared, vcpus
        finally:
            await pool.close()
            await driver.close()

    try:
        answer, pool, prepared, vcpus = asyncio.run(main())
    finally:
        shutil.rmtree(root, ignore_errors=True)
    assert not prepared and pool.info()["taken_fresh"] == 1  # the default-size shell stayed
    assert pool.info()["shape"] == f"{256 + GUEST_RESERVE_MIB} MiB, 1 vCPU"
    # the guest kernel reserves some of its RAM for itself: MemTotal is a little below it
    expected_kib = (512 + GUEST_RESERVE_MIB) * 1024
    assert 0.85 * expected_kib < answer["mem_total_kib"] <= expected_kib
    assert answer["cpus"] == vcpus
