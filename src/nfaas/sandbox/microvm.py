"""MicroVM sandbox: each instance in its own QEMU ``-M microvm`` guest with its own kernel.

A shell is a booted guest (Debian's cloud kernel + the initramfs of ``guest_image``) whose init
runs the worker on its second serial port; QEMU connects that port to a Unix socket on the
node, so the same framed protocol is spoken. Pause and resume are QMP ``stop``/``cont``. KVM is
used only once a real boot under KVM has succeeded (probed in the background); until then,
and where it fails, guests run under TCG, which is much slower to boot.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import itertools
import json
import logging
import math
import os
import secrets
import shutil
import signal
import socket
import time
from collections.abc import Hashable, Sequence
from pathlib import Path
from typing import NamedTuple

from nfaas.core.spec import FunctionSpec, Limits
from nfaas.nf.ports.claim import PortClaim
from nfaas.sandbox.base import (
    CodeBundle,
    Driver,
    Instance,
    InstanceHooks,
    InstanceStats,
    LoadFailed,
    LoadTimings,
    SandboxError,
    Shell,
)
from nfaas.sandbox.guest_image import build_image, find_kernel
from nfaas.sandbox.procstats import describe_exit, read_stats, vmm_overhead
from nfaas.sandbox.qmp import Qmp
from nfaas.sandbox.stream import LineReader, WorkerStream
from nfaas.sandbox.stream_instance import StreamInstance, StreamShell, rlimits_for
from nfaas.sandbox.uids import UidPool
from nfaas.worker.protocol import HELLO_ID, Pong

log = logging.getLogger("nfaas.microvm")
BOOT_TIMEOUT = {"kvm": 20.0, "tcg": 120.0}
LOAD_TIMEOUT = 60.0
GUEST_WORKDIR = "/tmp"
GUEST_CODE = "/code"
GUEST_DEPS = "/deps"
GUEST_UID = 1000  # the guest is the instance's own machine: any unprivileged uid will do
# RAM a guest needs besides the function's memory limit: the kernel, and the initramfs, which
# is held in RAM twice while it unpacks (a 192 MiB guest does not boot; 256 MiB does).
GUEST_RESERVE_MIB = 192
QEMU_UIDS = (400_000, 60_000)  # QEMU drops root for one of these before the guest starts
# QEMU's own seccomp filter: no obsolete calls, no exec, no scheduler/affinity changes.
# (elevateprivileges=deny would also forbid the setuid of -runas; once QEMU runs as an
# unprivileged uid it cannot elevate anyway.)
TB_SIZE_MIB = 64
SANDBOX = "on,obsolete=deny,spawn=deny,resourcecontrol=deny"
CMDLINE = (
    "console=ttyS0 rdinit=/init panic=-1 loglevel=4 8250.nr_uarts=2 tsc=reliable no_timer_check"
)


def kvm_usable_by_file() -> bool:
    return os.path.exists("/dev/kvm") and os.access("/dev/kvm", os.R_OK | os.W_OK)


def cache_dir() -> Path:
    """Node-wide cache (guest images, the KVM probe), shared by every data directory."""
    default = "/var/cache/nfaas" if os.getuid() == 0 else str(Path.home() / ".cache" / "nfaas")
    return Path(os.environ.get("NFAAS_CACHE", default))


def _probe_file() -> Path:
    boot_id = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return cache_dir() / f"kvm-probe-{boot_id}.json"


def _read_probe() -> tuple[str, str] | None:
    try:
        data = json.loads(_probe_file().read_text())
        return str(data["accel"]), str(data["detail"])
    except (OSError, ValueError, KeyError):
        return None


def _write_probe(accel: str, detail: str) -> None:
    path = _probe_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"accel": accel, "detail": detail}))


class GuestShape(NamedTuple):
    """A guest's fixed size: a shell can only take a function that fits it."""

    memory_mib: int
    vcpus: int

    def __str__(self) -> str:
        return f"{self.memory_mib} MiB, {self.vcpus} vCPU"


def guest_shape(limits: Limits, max_vcpus: int) -> GuestShape:
    """The function gets its whole memory limit; the guest's kernel and image get the reserve."""
    memory = math.ceil(limits.memory / 1024**2) + GUEST_RESERVE_MIB
    vcpus = min(max(1, math.ceil(limits.cpu)), max_vcpus)
    return GuestShape(memory_mib=-(-memory // 2) * 2, vcpus=vcpus)


class MicroVmInstance(StreamInstance):
    def __init__(self, shell: MicroVmShell, stream: WorkerStream) -> None:
        super().__init__(shell.id, shell.pid, stream)
        self._shell = shell

    async def pause(self) -> None:
        await self._shell.qmp_execute("stop")

    async def resume(self) -> None:
        await self._shell.qmp_execute("cont")

    async def stop(self) -> None:
        await self._shell.discard()

    def stats(self) -> InstanceStats:
        stats = read_stats(self.pid)  # the QEMU process is the whole sandbox
        stats.extra["vmm_pss"] = float(vmm_overhead(self.pid, self._shell.shape.memory_mib))
        return stats


class MicroVmShell(StreamShell):
    shape: GuestShape

    def __init__(self, driver: MicroVmDriver, shell_id: str, shape: GuestShape) -> None:
        super().__init__(shell_id)
        self.driver = driver
        self.shape = shape
        self.uid = -1
        self.dir = driver.shells_dir / shell_id
        self.pid = 0
        self.accel = driver.accel
        self.boot_seconds = 0.0
        self._qmp: Qmp | None = None
        self._process: asyncio.subprocess.Process | None = None
        self._discarded = False
        self._watcher: asyncio.Task[None] | None = None

    def command(self, accel: str) -> list[str]:
        driver = self.driver
        return [
            driver.qemu,
            "-M",
            "microvm,isa-serial=on,rtc=on,pit=on,pic=on",
            "-accel",
            # TCG's translated-code cache defaults to 1 GiB; a worker's code needs far less
            f"{accel},tb-size={TB_SIZE_MIB}" if accel == "tcg" else accel,
            "-cpu",
            "host" if accel == "kvm" else "max",
            # Under TCG, guest time follows executed instructions: a busy host then cannot make
            # the kernel's early clock calibration hang (it did, without this).
            *(["-icount", "shift=auto"] if accel == "tcg" else []),
            "-m",
            f"{self.shape.memory_mib}M",
            "-smp",
            str(self.shape.vcpus),
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-no-reboot",
            "-kernel",
            str(driver.kernel),
            "-initrd",
            str(driver.image),
            "-append",
            CMDLINE,
            "-serial",
            "stdio",
            "-chardev",
            f"socket,id=nfaas,path={self.dir / 'stream.sock'},server=on,wait=off",
            "-device",
            "isa-serial,chardev=nfaas,iobase=0x2f8,irq=3,index=1",
            "-qmp",
            f"unix:{self.dir / 'qmp.sock'},server=on,wait=off",
            "-sandbox",
            SANDBOX,
            # after the kernel, image and sockets are open, QEMU needs no privilege at all
            *(["-runas", f"{self.uid}:{self.uid}"] if self.uid >= 0 else []),
        ]

    async def start(self) -> None:
        self.dir.mkdir(mode=0o700)
        self.uid = self.driver.uids.take()
        started = time.monotonic()
        log_r, log_w = os.pipe()
        loop = asyncio.get_running_loop()
        try:
            self._process = await asyncio.create_subprocess_exec(
                *self.command(self.accel),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_w,
                stderr=log_w,
                start_new_session=True,
                preexec_fn=_die_with_parent,  # a killed nfaas must not leave guests running
            )
        finally:
            os.close(log_w)
        self.pid = self._process.pid
        await loop.connect_read_pipe(lambda: LineReader(self._line), os.fdopen(log_r, "rb", 0))
        self._watcher = loop.create_task(self._watch(self._process))
        try:
            await self._connect(started)
        except (TimeoutError, OSError, SandboxError) as exc:
            await self.discard()
            raise SandboxError(
                f"microVM shell did not boot ({self.accel}): {str(exc) or 'timed out'}: {self.early_output()}"
            ) from None
        self.boot_seconds = time.monotonic() - started

    async def _connect(self, started: float) -> None:
        sock_path = str(self.dir / "stream.sock")
        while not os.path.exists(sock_path):
            if self._process is None or self._process.returncode is not None:
                raise SandboxError("QEMU exited")
            if time.monotonic() - started > 10:
                raise SandboxError("QEMU did not open its sockets")
            await asyncio.sleep(0.005)
        sock = await self._connect_when_listening(sock_path, started)
        _, self.stream = await asyncio.get_running_loop().create_unix_connection(
            lambda: WorkerStream(self._lost), sock=sock
        )
        hello = self.stream.expect(HELLO_ID)
        reply = await asyncio.wait_for(hello, BOOT_TIMEOUT[self.accel])
        if not isinstance(reply, Pong):
            raise SandboxError("the guest did not say hello")
        self._qmp = await Qmp.connect(str(self.dir / "qmp.sock"))

    async def _connect_when_listening(self, sock_path: str, started: float) -> socket.socket:
        # QEMU binds the socket (the file appears) a moment before it listens: refused until then
        while True:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                await asyncio.get_running_loop().sock_connect(sock, sock_path)
                return sock
            except ConnectionRefusedError:
                sock.close()
                if self._process is None or self._process.returncode is not None:
                    raise SandboxError("QEMU exited") from None
                if time.monotonic() - started > 10:
                    raise
                await asyncio.sleep(0.005)

    async def _watch(self, process: asyncio.subprocess.Process) -> None:
        status = await process.wait()
        self._line(f"[nfaas] microVM {describe_exit(status)}")

    async def qmp_execute(self, command: str) -> None:
        if self._qmp is None:
            raise SandboxError("no QMP connection")
        await self._qmp.execute(command)

    async def load(
        self,
        spec: FunctionSpec,
        namespace: str,
        bundle: CodeBundle,
        timings: LoadTimings,
        hooks: InstanceHooks,
        ports: Sequence[PortClaim] = (),
    ) -> Instance:
        if ports:
            await self.discard()
            raise LoadFailed("a microVM cannot take an NF's ports: use process or container")
        stream, load = self.begin_load(
            spec,
            namespace,
            hooks,
            code_dir=GUEST_CODE,
            workdir=GUEST_WORKDIR,
            uid=GUEST_UID,
            rlimits=rlimits_for(spec),
            bundle=Path(bundle.archive).read_bytes(),
            # installed requirements travel as a zip too; the guest unpacks them into its RAM
            deps_dir=GUEST_DEPS if bundle.deps_archive else "",
            deps=Path(bundle.deps_archive).read_bytes() if bundle.deps_archive else b"",
        )
        await self.finish_load(stream, load, timings, LOAD_TIMEOUT)
        return MicroVmInstance(self, stream)

    async def discard(self) -> None:
        if self._discarded:
            return
        self._discarded = True
        if self._qmp is not None:
            self._qmp.close()
        if self.stream is not None:
            self.stream.close()
        if self._process is not None and self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGKILL)
            await self._process.wait()
        self.driver.forget(self)
        self.driver.uids.give_back(self.uid)
        self.uid = -1
        shutil.rmtree(self.dir, ignore_errors=True)


class MicroVmDriver(Driver):
    name = "microvm"

    def __init__(self, data_dir: Path, kernel: str | None = None) -> None:
        self.root = data_dir / "microvm"
        self.shells_dir = self.root / "shells"
        self.qemu = shutil.which("qemu-system-x86_64") or "qemu-system-x86_64"
        self.kernel = find_kernel(kernel)
        self.image = Path()
        self.uids = UidPool(*QEMU_UIDS)
        self.accel = "tcg"
        self.kvm_probe = "not probed"
        self.boot = f"{os.getpid():x}{secrets.token_hex(2)}"
        self._ids = itertools.count(1)
        self._shells: set[MicroVmShell] = set()
        self._probe: asyncio.Task[None] | None = None
        self._image_lock = asyncio.Lock()

    async def start(self) -> None:
        """Checks only; the guest image is built (once per node) by the first ``prepare``."""
        if not os.path.exists(self.qemu):
            raise SandboxError("qemu-system-x86_64 not found")
        if self.kernel is None or not self.kernel.exists():
            raise SandboxError("no guest kernel (install linux-image-cloud-amd64 or configure one)")
        if not os.access(self.kernel, os.R_OK):
            raise SandboxError(f"guest kernel {self.kernel} is not readable")
        shutil.rmtree(self.shells_dir, ignore_errors=True)
        self.shells_dir.mkdir(parents=True, mode=0o700)
        known = _read_probe()
        if known is not None:
            self.accel, self.kvm_probe = known
        elif kvm_usable_by_file():
            self._probe = asyncio.get_running_loop().create_task(self._probe_kvm())
        else:
            self.kvm_probe = "no usable /dev/kvm"
        if self.accel == "tcg":
            log.warning("microVMs run under TCG (software emulation): %s", self.kvm_probe)

    async def _ensure_image(self) -> None:
        async with self._image_lock:
            if not self.image.is_file():
                self.image = await asyncio.to_thread(build_image, cache_dir() / "guest")

    async def _probe_kvm(self) -> None:
        """Boot one guest under KVM; only if it says hello do later shells use KVM.

        The answer holds until the host reboots, so it is kept (per boot id) for later runs."""
        await self._ensure_image()
        shell = MicroVmShell(self, f"probe-{self.boot}", guest_shape(Limits(), 1))
        shell.accel = "kvm"
        try:
            await shell.start()
        except SandboxError as exc:
            self.kvm_probe = f"a KVM boot failed: {str(exc)[:300]}"
            log.warning("microVMs run under TCG (software emulation): %s", self.kvm_probe)
        else:
            self.accel = "kvm"
            self.kvm_probe = f"a KVM boot took {shell.boot_seconds * 1000:.0f} ms"
        finally:
            await shell.discard()
        _write_probe(self.accel, self.kvm_probe)

    def shape(self, limits: Limits) -> GuestShape:
        # -icount runs TCG on one host thread, and a multi-vCPU guest's boot hangs under it
        return guest_shape(limits, (os.cpu_count() or 1) if self.accel == "kvm" else 1)

    async def prepare(self, ahead: bool = True, shape: Hashable = None) -> Shell:
        await self._ensure_image()
        size = shape if isinstance(shape, GuestShape) else self.shape(Limits())
        shell = MicroVmShell(self, f"v{self.boot}-{next(self._ids)}", size)
        self._shells.add(shell)
        await shell.start()
        return shell

    def forget(self, shell: MicroVmShell) -> None:
        self._shells.discard(shell)

    async def close(self) -> None:
        if self._probe is not None:
            self._probe.cancel()
        for shell in list(self._shells):
            await shell.discard()

    def info(self) -> dict[str, object]:
        return {
            "driver": self.name,
            "accel": self.accel,
            "kvm_probe": self.kvm_probe,
            "kernel": str(self.kernel),
            "image": str(self.image),
            "guest_reserve_mib": GUEST_RESERVE_MIB,
        }


_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
