"""Process sandbox: instances are processes forked from a warm zygote.

Each instance gets its own working directory, rlimits from the function's limits and its own
unprivileged uid; it talks to the node over a Unix socketpair with the framed protocol, and its
stdout/stderr go to a pipe the node reads as the function's log.

There is no mount namespace per instance: a function's volume is its directory on the node,
whose path the instance finds in ``NFAAS_VOLUME``. Instances of one function that run at the
same time share a uid (so they share the volume's files); a shell forked under another uid is
replaced by one forked under the function's.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import itertools
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import Any

import msgspec

from nfaas.core.spec import FunctionSpec
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
from nfaas.sandbox.procstats import describe_exit, read_stats
from nfaas.sandbox.stream import LineReader, WorkerStream
from nfaas.sandbox.stream_instance import StreamInstance, StreamShell, rlimits_for
from nfaas.sandbox.uids import UidPool
from nfaas.sandbox.volumes import SharedUids, VolumeKey, prepare_volume, volumes_root

LOAD_TIMEOUT = 30.0
FORK_TIMEOUT = 30.0
_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(dict[str, Any])


class ProcessInstance(StreamInstance):
    def __init__(self, instance_id: str, pid: int, stream: WorkerStream, workdir: Path) -> None:
        super().__init__(instance_id, pid, stream)
        self._workdir = workdir
        self._stopped = False

    async def pause(self) -> None:
        self._signal(signal.SIGSTOP)

    async def resume(self) -> None:
        self._signal(signal.SIGCONT)

    def _signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, sig)

    async def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self._signal(signal.SIGKILL)
        self._stream.close()
        shutil.rmtree(self._workdir, ignore_errors=True)

    def stats(self) -> InstanceStats:
        return read_stats(self.pid)


class ProcessShell(StreamShell):
    """A forked, function-less worker whose stream and log pipe are already connected."""

    def __init__(
        self, shell_id: str, pid: int, uid: int, workdir: Path, driver: ProcessDriver
    ) -> None:
        super().__init__(shell_id)
        self.pid = pid
        self.uid = uid
        self.workdir = workdir
        self.driver = driver
        driver.track(pid, uid, self._exit_status)

    def _exit_status(self, status: int) -> None:
        self._line(f"[nfaas] instance {describe_exit(status)}")

    async def connect(self, sock: socket.socket, log_fd: int) -> None:
        loop = asyncio.get_running_loop()
        transport, self.stream = await loop.create_unix_connection(
            lambda: WorkerStream(self._lost), sock=sock
        )
        if transport.get_extra_info("socket").fileno() != sock.fileno():
            sock.close()  # uvloop works on a duplicate; ours would leak and hold the stream open
        await loop.connect_read_pipe(lambda: LineReader(self._line), os.fdopen(log_fd, "rb", 0))

    async def load(
        self,
        spec: FunctionSpec,
        namespace: str,
        bundle: CodeBundle,
        timings: LoadTimings,
        hooks: InstanceHooks,
        ports: Sequence[PortClaim] = (),
    ) -> Instance:
        if spec.volume is None:
            return await self._load(spec, namespace, bundle, timings, hooks, ports, {})
        shell, folder = await self._volume_shell((namespace, spec.name))
        env = {"NFAAS_VOLUME": str(folder)}  # the node's path: there is no mount to remap it
        return await shell._load(spec, namespace, bundle, timings, hooks, ports, env)

    async def _volume_shell(self, key: VolumeKey) -> tuple[ProcessShell, Path]:
        """The shell an instance of the function ``key`` runs in: this one, or one forked
        under the uid the function's other running instances have; and the volume's
        directory, handed over to the uid if no other instance runs."""
        driver = self.driver
        shell = self
        async with driver.volume_lock:  # a second instance waits for the first's hand-over
            uid, first = driver.shared_uids.join(key, self.uid)
            try:
                if uid != self.uid:
                    await self.discard()
                    shell = await driver.fork(self.id, uid, ahead=False)
                folder = await asyncio.to_thread(prepare_volume, driver.volumes, key, uid, first)
            except (SandboxError, OSError) as exc:
                await shell.discard()
                raise LoadFailed(f"volume: {exc}") from None
            except BaseException:  # cancelled: its process (and so the uid) must go
                await shell.discard()
                raise
        return shell, folder

    async def _load(
        self,
        spec: FunctionSpec,
        namespace: str,
        bundle: CodeBundle,
        timings: LoadTimings,
        hooks: InstanceHooks,
        ports: Sequence[PortClaim],
        extra_env: dict[str, str],
    ) -> Instance:
        stream, load = self.begin_load(
            spec,
            namespace,
            hooks,
            ports=ports,
            code_dir=bundle.code_dir,
            workdir=str(self.workdir),
            uid=self.uid,
            rlimits=rlimits_for(spec),
            deps_dir=bundle.deps_dir,
            extra_env=extra_env,
        )
        loaded = await self.finish_load(stream, load, timings, LOAD_TIMEOUT, ports)
        instance = ProcessInstance(self.id, self.pid, stream, self.workdir)
        instance.program_pid = loaded.pid  # the same PID namespace as the node's
        return instance

    async def discard(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)
        if self.stream is not None:
            self.stream.close()
        shutil.rmtree(self.workdir, ignore_errors=True)


def _set_once(fut: asyncio.Future[None]) -> None:
    if not fut.done():
        fut.set_result(None)


def _zygote_env() -> dict[str, str]:
    """A small environment: every shell starts from it and clearing it is cheap."""
    keep = ("PATH", "LANG", "PYTHONPATH", "VIRTUAL_ENV")
    return {k: v for k, v in os.environ.items() if k in keep}


class ProcessDriver(Driver):
    """Forks shells from one zygote process started at ``start()``."""

    name = "process"

    def __init__(self, data_dir: Path) -> None:
        self.instances_dir = data_dir / "instances"
        self.uids = UidPool()
        self.shared_uids = SharedUids(self.uids)
        self.volumes = volumes_root(data_dir)
        self.volume_lock = asyncio.Lock()
        self._ids = itertools.count(1)
        self._boot = f"{int(time.time()):x}"
        self._control: socket.socket | None = None
        self._zygote: subprocess.Popen[bytes] | None = None
        self._forks: dict[str, asyncio.Future[int]] = {}
        self._exit_watch: dict[int, Callable[[int], None]] = {}
        self._uid_of: dict[int, int] = {}
        self.zygote_pid = 0
        self._send_lock = asyncio.Lock()

    async def start(self) -> None:
        shutil.rmtree(self.instances_dir, ignore_errors=True)
        self.instances_dir.mkdir(parents=True, mode=0o711)
        self.instances_dir.chmod(0o711)
        # SEQPACKET keeps each command and its file descriptors together as one message.
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self._zygote = subprocess.Popen(
            [sys.executable, "-m", "nfaas.worker.zygote", str(theirs.fileno())],
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
            env=_zygote_env(),
            start_new_session=True,  # a Ctrl-C on the terminal is for nfaas up, not the zygote
        )
        theirs.close()
        ours.setblocking(False)
        self._control = ours
        loop = asyncio.get_running_loop()
        ready: asyncio.Future[int] = loop.create_future()
        self._forks["ready"] = ready
        loop.add_reader(ours.fileno(), self._on_control_readable)
        self.zygote_pid = await asyncio.wait_for(ready, 30)

    def _on_control_readable(self) -> None:
        assert self._control is not None
        while True:
            try:
                data = self._control.recv(65536)
            except BlockingIOError:
                return
            if not data:
                self._zygote_lost()
                return
            self._on_control_message(_decoder.decode(data))

    def _on_control_message(self, message: dict[str, Any]) -> None:
        op = message.get("op")
        if op == "ready":
            fut = self._forks.pop("ready", None)
        elif op == "forked":
            fut = self._forks.pop(message["shell"], None)
        elif op == "failed":
            fut = self._forks.pop(message.get("shell") or "", None)
            if fut is not None and not fut.done():
                fut.set_exception(SandboxError(f"zygote could not fork: {message.get('error')}"))
            return
        elif op == "exited":
            pid, status = message["pid"], message["status"]
            self.shared_uids.release(self._uid_of.pop(pid, -1))
            watcher = self._exit_watch.pop(pid, None)
            if watcher is not None:
                watcher(status)
            return
        else:
            return
        if fut is not None and not fut.done():
            fut.set_result(message["pid"])

    def _zygote_lost(self) -> None:
        if self._control is not None:
            asyncio.get_running_loop().remove_reader(self._control.fileno())
        for fut in self._forks.values():
            if not fut.done():
                fut.set_exception(SandboxError("zygote exited"))
        self._forks.clear()

    def track(self, pid: int, uid: int, on_status: Callable[[int], None]) -> None:
        """Hand ``uid`` back and report the exit status once the zygote has reaped ``pid``."""
        self._exit_watch[pid] = on_status
        self._uid_of[pid] = uid

    async def _send_with_fds(self, data: bytes, fds: list[int]) -> None:
        assert self._control is not None
        control = self._control
        ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds).tobytes())]
        loop = asyncio.get_running_loop()
        # One sender at a time: the loop keeps a single writer callback per descriptor.
        async with self._send_lock:
            while True:
                try:
                    control.sendmsg([data], ancillary)
                    return
                except BlockingIOError:
                    writable: asyncio.Future[None] = loop.create_future()
                    loop.add_writer(control.fileno(), _set_once, writable)
                    try:
                        await writable
                    finally:
                        loop.remove_writer(control.fileno())

    async def prepare(self, ahead: bool = True, shape: Hashable = None) -> Shell:
        if self._control is None:
            raise SandboxError("process driver not started")
        # The shell gets its own uid and private working directory before it exists, so it
        # never runs as root and none of this is left for the cold-start path.
        return await self.fork(f"p{self._boot}-{next(self._ids)}", self.uids.take(), ahead)

    async def fork(self, shell_id: str, uid: int, ahead: bool) -> ProcessShell:
        """A shell forked from the zygote, running as ``uid`` in a fresh working directory;
        ``uid`` is released if no process comes to run as it."""
        try:
            pid, ours, log_r, workdir = await self._fork(shell_id, uid, ahead)
        except BaseException:
            self.shared_uids.release(uid)
            raise
        shell = ProcessShell(shell_id, pid, uid, workdir, self)  # from here its exit releases it
        await shell.connect(ours, log_r)
        return shell

    async def _fork(
        self, shell_id: str, uid: int, ahead: bool
    ) -> tuple[int, socket.socket, int, Path]:
        """Ask the zygote for a shell; its pid, stream socket, log pipe and working directory."""
        if self._control is None:
            raise SandboxError("process driver not started")
        workdir = self.instances_dir / shell_id
        workdir.mkdir(mode=0o700)
        if uid >= 0:
            os.chown(workdir, uid, uid)
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        log_r, log_w = os.pipe()
        payload = _encoder.encode(
            {"op": "fork", "shell": shell_id, "uid": uid, "workdir": str(workdir), "ahead": ahead}
        )
        fut: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._forks[shell_id] = fut
        try:
            await self._send_with_fds(payload, [theirs.fileno(), log_w])
        finally:
            theirs.close()
            os.close(log_w)
        try:
            pid = await asyncio.wait_for(fut, FORK_TIMEOUT)
        except TimeoutError:
            self._forks.pop(shell_id, None)
            ours.close()
            os.close(log_r)
            raise SandboxError("zygote did not fork a shell in time") from None
        return pid, ours, log_r, workdir

    async def close(self) -> None:
        for pid in list(self._exit_watch):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        if self._control is not None:
            asyncio.get_running_loop().remove_reader(self._control.fileno())
            self._control.close()
            self._control = None
        if self._zygote is not None:
            self._zygote.terminate()
            await asyncio.to_thread(self._zygote.wait, 10)
            self._zygote = None

    def info(self) -> dict[str, object]:
        return {
            "driver": self.name,
            "zygote_pid": self.zygote_pid,
            "uid_isolation": self.uids.enabled,
        }
