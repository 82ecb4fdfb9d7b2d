"""One conformance suite for every sandbox driver: process, container and microVM.

Each test runs a real driver: prepare a shell, load a function into it, invoke it.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import tempfile
import textwrap
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from requirements_bundle import LOCAL_WHEEL, bundle_with_requirements

from nfaas.control.bundles import BundleStore
from nfaas.core.bundle import pack
from nfaas.core.spec import validate_spec
from nfaas.sandbox.base import (
    CodeBundle,
    Driver,
    HandlerError,
    Instance,
    InstanceHooks,
    InvokeTimeout,
    LoadFailed,
    LoadTimings,
    Request,
    WorkerDied,
)
from nfaas.sandbox.container import ContainerDriver
from nfaas.sandbox.guest_image import find_kernel
from nfaas.sandbox.microvm import MicroVmDriver
from nfaas.sandbox.process import ProcessDriver

HANDLER = textwrap.dedent(
    """
    import os, time

    def handle(event, context):
        op = event.path.strip("/")
        if op == "raise":
            raise ValueError("bad input")
        if op == "sleep":
            time.sleep(float(event.body or b"1"))
        if op == "hog":
            blob = bytearray(512 * 1024 * 1024)
            return str(len(blob))
        if op == "log":
            print("line from the handler")
        return {"uid": os.getuid(), "cwd": os.getcwd(), "env": context.env.get("GREETING"),
                "body": event.body.decode(), "query": event.query}
    """
)
DRIVERS: dict[str, Callable[[Path], Driver]] = {"process": ProcessDriver}
if shutil.which("runc") and os.getuid() == 0:
    DRIVERS["container"] = ContainerDriver
if shutil.which("qemu-system-x86_64") and find_kernel() is not None:
    DRIVERS["microvm"] = MicroVmDriver


@pytest.fixture(params=sorted(DRIVERS))
def world(request: pytest.FixtureRequest):
    root = Path(tempfile.mkdtemp(dir="/tmp", prefix="nfaas-conf-"))
    root.chmod(0o711)
    code = root / "code"
    code.mkdir()
    (code / "handler.py").write_text(HANDLER)
    (code / "broken").mkdir()
    (code / "broken" / "handler.py").write_text("import no_such_module\n")
    for path in [code, *code.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    yield DRIVERS[request.param], root
    shutil.rmtree(root, ignore_errors=True)


def run(world, body: Callable[[Driver, Path, list[str], list[str]], Awaitable[None]]) -> None:
    make, root = world

    async def main() -> None:
        driver = make(root / "data")
        (root / "data").mkdir(mode=0o711)
        await driver.start()
        logs: list[str] = []
        exits: list[str] = []
        try:
            await body(driver, root, logs, exits)
        finally:
            await driver.close()

    asyncio.run(main())


async def load(
    driver: Driver, root: Path, logs: list[str], exits: list[str], sub: str = "", **spec
) -> Instance:
    raw = {"env": {"GREETING": "hi"}, "limits": {"memory": "64Mi"}, **spec}
    function = validate_spec("conf", raw)
    shell = await driver.prepare(shape=driver.shape(function.limits))
    hooks = InstanceHooks(on_log=logs.append, on_exit=exits.append)
    code = root / "code" / sub if sub else root / "code"
    archive = root / f"{sub or 'main'}.zip"
    if not archive.exists():
        archive.write_bytes(pack(code))
    bundle = CodeBundle("x", str(code), archive=str(archive))
    return await shell.load(function, "tests", bundle, LoadTimings(), hooks)


def req(path: str = "/", body: bytes = b"", query: str = "") -> Request:
    return Request("POST", path, query, [("X-Test", "1")], body)


def test_invoke_returns_the_handlers_answer(world) -> None:
    async def body(driver, root, logs, exits) -> None:
        inst = await load(driver, root, logs, exits)
        response = await inst.invoke(req("/", b"ping", "a=1"), 5)
        assert response.status == 200
        data = __import__("json").loads(response.body)
        assert data["body"] == "ping" and data["query"] == {"a": "1"} and data["env"] == "hi"
        if os.getuid() == 0:
            assert data["uid"] != 0
        if isinstance(driver, ProcessDriver):
            assert data["cwd"].startswith(str(root / "data"))  # its own instance directory
        else:
            assert data["cwd"] == "/tmp"  # the sandbox's private tmpfs
        assert inst.stats().uss > 0
        await inst.stop()
        assert not inst.alive

    run(world, body)


def test_handler_exception_is_reported_with_its_type_and_logged(world) -> None:
    async def body(driver, root, logs, exits) -> None:
        inst = await load(driver, root, logs, exits)
        with pytest.raises(HandlerError) as info:
            await inst.invoke(req("/raise"), 5)
        assert info.value.kind == "ValueError" and "bad input" in info.value.message
        for _ in range(100):
            if any("Traceback" in line for line in logs):
                break
            await asyncio.sleep(0.05)
        assert any("Traceback" in line for line in logs)
        assert (await inst.invoke(req(), 5)).status == 200  # still serving
        await inst.stop()

    run(world, body)


def test_timeout(world) -> None:
    async def body(driver, root, logs, exits) -> None:
        inst = await load(driver, root, logs, exits)
        with pytest.raises(InvokeTimeout):
            await inst.invoke(req("/sleep", b"5"), 0.3)
        await inst.stop()

    run(world, body)


def test_kill_mid_request_is_worker_died(world) -> None:
    async def body(driver, root, logs, exits) -> None:
        inst = await load(driver, root, logs, exits)
        pending = asyncio.ensure_future(inst.invoke(req("/sleep", b"5"), 10))
        await asyncio.sleep(0.2)
        os.kill(inst.pid, signal.SIGKILL)
        with pytest.raises(WorkerDied):
            await pending
        await asyncio.sleep(0.2)
        assert exits and not inst.alive
        assert any("SIGKILL" in line for line in logs)

    run(world, body)


def test_memory_limit(world) -> None:
    async def body(driver, root, logs, exits) -> None:
        inst = await load(driver, root, logs, exits)
        if not isinstance(driver, ContainerDriver):
            # rlimit (process, and inside a guest): the allocation fails in the handler
            with pytest.raises(HandlerError) as info:
                await inst.invoke(req("/hog"), 10)
            assert info.value.kind == "MemoryError"
            assert (await inst.invoke(req(), 5)).status == 200
        else:
            # cgroup: the kernel kills that instance only, and the caller is told why
            with pytest.raises(WorkerDied, match="OOM killer"):
                await inst.invoke(req("/hog"), 10)
        await inst.stop()

    run(world, body)


def test_load_failure(world) -> None:
    async def body(driver, root, logs, exits) -> None:
        with pytest.raises(LoadFailed, match="ModuleNotFoundError"):
            await load(driver, root, logs, exits, sub="broken")

    run(world, body)


def test_pause_holds_requests_until_resume(world) -> None:
    async def body(driver, root, logs, exits) -> None:
        inst = await load(driver, root, logs, exits)
        await inst.pause()
        pending = asyncio.ensure_future(inst.invoke(req(), 5))
        await asyncio.sleep(0.3)
        assert not pending.done()
        cpu = inst.stats().cpu_seconds
        await asyncio.sleep(0.5)
        # paused: no CPU. CPU time is sampled in clock ticks (10 ms), so one tick may be
        # charged for the VMM's event loop taking in the pending request's bytes.
        assert inst.stats().cpu_seconds - cpu <= 0.011
        await inst.resume()
        assert (await pending).status == 200
        await inst.stop()

    run(world, body)


def test_log_lines_reach_the_node(world) -> None:
    async def body(driver, root, logs, exits) -> None:
        inst = await load(driver, root, logs, exits)
        await inst.invoke(req("/log"), 5)
        for _ in range(100):  # a guest's console is a slow serial line
            if "line from the handler" in logs:
                break
            await asyncio.sleep(0.05)
        assert "line from the handler" in logs
        await inst.stop()

    run(world, body)


def test_installed_requirements_are_importable(world) -> None:
    async def body(driver, root, logs, exits) -> None:
        store = BundleStore(root / "data")  # the platform's layout: the driver sees data/deps
        code = store.unpack(store.put(bundle_with_requirements(LOCAL_WHEEL)))
        shell = await driver.prepare()
        hooks = InstanceHooks(on_log=logs.append, on_exit=exits.append)
        spec = validate_spec("req", {})
        inst = await shell.load(spec, "tests", code, LoadTimings(), hooks)
        response = await inst.invoke(req("/"), 10)
        assert (response.status, response.body) == (200, b'{"answer":42}'), logs
        await inst.stop()

    run(world, body)
