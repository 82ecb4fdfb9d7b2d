"""Container sandbox: each instance in its own namespaces and cgroup, through an OCI runtime.

A shell is a container started with ``<runtime> run`` from a generated bundle, running the
worker (``nfaas.worker.shell_main``) on a Unix socket handed in as fd 3. Loading a function
writes its limits into the container's cgroup and ships the code bundle over the stream; the
worker unpacks it into /code and drops to the instance's uid (which clears its capabilities).
The runtime binary is configurable: runc by default; crun, runsc or kata-runtime where a host
has them. A function's volume is mounted into the container at load (``mount_into``); the
function's instances that run at the same time share one uid, so they share its files.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import itertools
import json
import os
import secrets
import shutil
import signal
import socket
import sys
from collections.abc import Hashable, Sequence
from ipaddress import IPv4Address
from pathlib import Path

from nfaas.core.spec import FunctionSpec, Volume
from nfaas.nf.ports.claim import PortClaim
from nfaas.sandbox import oci
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
from nfaas.sandbox.bridge import Bridge, BridgeError
from nfaas.sandbox.cgroups import Cgroup
from nfaas.sandbox.procstats import describe_exit, read_stats
from nfaas.sandbox.stream import LineReader, WorkerStream
from nfaas.sandbox.stream_instance import StreamInstance, StreamShell, rlimits_for
from nfaas.sandbox.uids import UidPool
from nfaas.sandbox.volumes import SharedUids, VolumeKey, prepare_volume, volumes_root
from nfaas.worker.protocol import Ping, Pong

START_TIMEOUT = 30.0
LOAD_TIMEOUT = 30.0
MIB = 1024**2
MOUNT_HELPER = str(Path(__file__).with_name("mount_into.py"))


class ContainerInstance(StreamInstance):
    def __init__(self, shell: ContainerShell, stream: WorkerStream, memory: int) -> None:
        super().__init__(shell.id, shell.pid, stream)
        self._shell = shell
        self._memory = memory
        self.address = str(shell.address) if shell.address is not None else ""

    def death_reason(self, reason: str) -> str:
        if self._shell.cgroup.oom_kills() > self._shell.oom_baseline:
            return f"killed by the kernel's OOM killer: the instance reached its memory limit ({self._memory // MIB}Mi)"
        return reason

    async def pause(self) -> None:
        await asyncio.to_thread(self._shell.cgroup.freeze, True)

    async def resume(self) -> None:
        self._shell.cgroup.freeze(False)

    async def stop(self) -> None:
        await self._shell.discard()

    def stats(self) -> InstanceStats:
        total = InstanceStats(pid=self.pid, rss=0, pss=0, uss=0, cpu_seconds=0.0)
        for pid in self._shell.cgroup.pids():
            one = read_stats(pid)
            total.rss += one.rss
            total.pss += one.pss
            total.uss += one.uss
            total.cpu_seconds += one.cpu_seconds
        return total


class ContainerShell(StreamShell):
    def __init__(self, driver: ContainerDriver, shell_id: str) -> None:
        super().__init__(shell_id)
        self.driver = driver
        self.bundle_dir = driver.bundles_dir / shell_id
        self.cgroup = Cgroup(f"nfaas/{driver.boot}/{shell_id}")
        self.pid = 0
        self.oom_baseline = 0
        self.uid = -1
        self.address: IPv4Address | None = None
        self.veth = ""
        self._exited: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._discarded = False

    async def start(self) -> None:
        driver = self.driver
        self.bundle_dir.mkdir(mode=0o700)
        python = str(Path(sys.prefix) / "bin" / "python3")
        config = oci.shell_config(
            self.id,
            [python, "-m", "nfaas.worker.shell_main", "3"],
            driver.rootfs,
            driver.binds,
            f"/{self.cgroup.path}",
        )
        (self.bundle_dir / "config.json").write_text(json.dumps(config))
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        log_r, log_w = os.pipe()
        loop = asyncio.get_running_loop()
        try:
            # The runtime hands fds 3.. to the container: put the stream there. Detached, the
            # runtime exits once the container runs, so no runtime process stays per instance;
            # the container's init is re-parented to us (we are a child subreaper).
            runtime = await asyncio.create_subprocess_exec(
                "/bin/bash",  # dash cannot redirect descriptors above 9
                "-c",
                # umask: the mount points runc creates (e.g. /tmp/<checkout>/src under the
                # /tmp tmpfs) take it; the platform's 077 would make them untraversable for
                # the instance's uid.
                f'umask 022; exec "$0" "$@" 3<&{theirs.fileno()}',
                driver.runtime,
                "run",
                "--detach",
                "--preserve-fds",
                "1",
                "--bundle",
                str(self.bundle_dir),
                self.id,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log_w,
                stderr=log_w,
                pass_fds=(theirs.fileno(),),
                start_new_session=True,
            )
            status = await asyncio.wait_for(runtime.wait(), START_TIMEOUT)
        finally:
            theirs.close()
            os.close(log_w)
        pids = self.cgroup.pids()
        if status != 0 or not pids:
            ours.close()
            os.close(log_r)
            await self.discard()
            raise SandboxError(f"{driver.runtime} run failed with status {status}")
        self.pid = pids[0]
        self._watch_exit(loop)
        transport, self.stream = await loop.create_unix_connection(
            lambda: WorkerStream(self._lost), sock=ours
        )
        if transport.get_extra_info("socket").fileno() != ours.fileno():
            ours.close()
        await loop.connect_read_pipe(lambda: LineReader(self._line), os.fdopen(log_r, "rb", 0))
        ping = self.stream.request(Ping(self.stream.next_id()))
        try:
            reply = await asyncio.wait_for(ping, START_TIMEOUT)
        except (TimeoutError, SandboxError) as exc:
            await self.discard()
            raise SandboxError(
                f"container shell did not start: {str(exc) or 'timed out'}: {self.early_output()}"
            ) from None
        if not isinstance(reply, Pong):
            await self.discard()
            raise SandboxError("container shell answered the ping wrongly")
        self.oom_baseline = self.cgroup.oom_kills()

    def _watch_exit(self, loop: asyncio.AbstractEventLoop) -> None:
        """Reap the container's init when it exits and log its status."""
        pidfd = os.pidfd_open(self.pid)

        def exited() -> None:
            loop.remove_reader(pidfd)
            os.close(pidfd)
            try:
                _, status = os.waitpid(self.pid, 0)
                self._line(f"[nfaas] instance {describe_exit(os.waitstatus_to_exitcode(status))}")
            except ChildProcessError:
                self._line("[nfaas] instance exited")
            if not self._exited.done():
                self._exited.set_result(None)

        loop.add_reader(pidfd, exited)

    async def load(
        self,
        spec: FunctionSpec,
        namespace: str,
        bundle: CodeBundle,
        timings: LoadTimings,
        hooks: InstanceHooks,
        ports: Sequence[PortClaim] = (),
    ) -> Instance:
        limits = spec.limits
        try:
            self.cgroup.set_limits(limits.memory, limits.cpu, limits.processes)
        except OSError as exc:
            await self.discard()
            raise LoadFailed(f"cannot apply cgroup limits: {exc}") from None
        extra_env = {}
        if spec.volume is None:
            self.uid, _ = self.driver.shared_uids.take(None)
        else:
            try:
                extra_env["NFAAS_VOLUME"] = await self._attach_volume(
                    spec.volume, (namespace, spec.name)
                )
            except BaseException:  # cancelled too: the uid it holds must go back
                await self.discard()
                raise
        if spec.network == "bridged":
            try:
                extra_env["NFAAS_ADDRESS"] = str(await self._attach_network())
            except BridgeError as exc:
                await self.discard()
                raise LoadFailed(f"network: bridged: {exc}") from None
        stream, load = self.begin_load(
            spec,
            namespace,
            hooks,
            ports=ports,
            code_dir=oci.CODE_DIR,
            workdir=oci.WORK_DIR,
            uid=self.uid,
            rlimits=rlimits_for(spec, memory=False, processes=False),  # the cgroup bounds those
            deps_dir=bundle.deps_dir,
            bundle=Path(bundle.archive).read_bytes(),
            extra_env=extra_env,
        )
        loaded = await self.finish_load(stream, load, timings, LOAD_TIMEOUT, ports)
        instance = ContainerInstance(self, stream, limits.memory)
        if loaded.pid:
            instance.program_pid = self.host_pid(loaded.pid)
        return instance

    def host_pid(self, inner: int) -> int:
        """The node's pid of the container's process ``inner`` (a pid in its own namespace)."""
        for pid in self.cgroup.pids():
            try:
                with open(f"/proc/{pid}/status") as status:
                    for line in status:
                        if line.startswith("NSpid:"):
                            if int(line.split()[-1]) == inner:
                                return pid
                            break
            except (FileNotFoundError, ProcessLookupError):
                continue
        return 0

    async def _attach_volume(self, volume: Volume, key: VolumeKey) -> str:
        """Take the function's uid (its volume handed to it if no other instance of it runs)
        and mount the volume at its path in this container; returns the path."""
        driver = self.driver
        try:
            oci.volume_mount_point(driver.rootfs, volume.path, driver.binds)
        except (OSError, ValueError) as exc:
            raise LoadFailed(f"volume.path: {exc}") from None
        async with driver.volume_lock:  # a second instance waits for the first's hand-over
            self.uid, first = driver.shared_uids.take(key)
            try:
                folder = await asyncio.to_thread(
                    prepare_volume, driver.volumes, key, self.uid, first
                )
            except OSError as exc:
                raise LoadFailed(f"volume: cannot prepare its directory: {exc}") from None
        helper = await asyncio.create_subprocess_exec(
            sys.executable,
            "-I",
            "-S",
            MOUNT_HELPER,
            str(self.pid),
            str(folder),
            volume.path,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        _, error = await helper.communicate()
        if helper.returncode != 0:
            raise LoadFailed(f"volume: cannot mount it at {volume.path}: {error.decode().strip()}")
        return volume.path

    async def _attach_network(self) -> IPv4Address:
        bridge = await self.driver.bridge()
        self.address = bridge.take_address()
        self.veth = "nfv" + self.id.rsplit("-", 1)[0][-6:] + self.id.rsplit("-", 1)[1][-5:]
        await bridge.attach(self.pid, self.veth, self.address)
        return self.address

    async def discard(self) -> None:
        if self._discarded:
            return
        self._discarded = True
        with contextlib.suppress(OSError):
            self.cgroup.freeze(False)  # a frozen container cannot die
        for pid in self.cgroup.pids():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        if self.stream is not None:
            self.stream.close()
        if self.pid:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._exited), 10)
        await self.driver.delete(self.id)
        self.driver.shared_uids.release(self.uid)
        if self.address is not None:
            bridge = await self.driver.bridge()
            await bridge.detach(self.veth)
            bridge.give_back(self.address)
        self.driver.forget(self)
        shutil.rmtree(self.bundle_dir, ignore_errors=True)


PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> None:
    """Detached containers' init processes become our children, so we can reap them."""
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        raise SandboxError(f"prctl(PR_SET_CHILD_SUBREAPER) failed: errno {ctypes.get_errno()}")


class ContainerDriver(Driver):
    name = "container"

    def __init__(self, data_dir: Path, runtime: str = "runc") -> None:
        self.runtime = shutil.which(runtime) or runtime
        self.root = data_dir / "containers"
        self.rootfs = self.root / "rootfs"
        self.bundles_dir = self.root / "bundles"
        # installed requirements (one directory per requirements.txt, under a 0711 parent that
        # cannot be listed) are visible at the node's own path, so deps_dir needs no mapping
        self.deps_dir = data_dir / "deps"
        self.binds = [*oci.read_only_paths(), str(self.deps_dir)]
        self.uids = UidPool(first=300_000)
        self.shared_uids = SharedUids(self.uids)
        self.volumes = volumes_root(data_dir)
        self.volume_lock = asyncio.Lock()
        # container ids and cgroups are host-wide: unique per platform process, not per second
        self.boot = f"{os.getpid():x}{secrets.token_hex(2)}"
        self._ids = itertools.count(1)
        self._shells: set[ContainerShell] = set()
        self._bridge: Bridge | None = None
        self._bridge_lock = asyncio.Lock()

    async def start(self) -> None:
        if not os.path.exists(self.runtime):
            raise SandboxError(f"OCI runtime {self.runtime!r} not found")
        if os.getuid() != 0:
            raise SandboxError("the container tier needs root")
        become_subreaper()
        shutil.rmtree(self.bundles_dir, ignore_errors=True)
        self.bundles_dir.mkdir(parents=True, mode=0o700)
        self.root.chmod(0o711)
        self.deps_dir.mkdir(mode=0o711, exist_ok=True)
        oci.prepare_rootfs(self.rootfs, self.binds)

    async def prepare(self, ahead: bool = True, shape: Hashable = None) -> Shell:
        shell = ContainerShell(self, f"c{self.boot}-{next(self._ids)}")
        await shell.start()
        self._shells.add(shell)
        return shell

    async def bridge(self) -> Bridge:
        """The node's bridge, created when the first bridged instance needs it."""
        async with self._bridge_lock:
            if self._bridge is None:
                bridge = Bridge()
                await bridge.ensure()
                self._bridge = bridge
            return self._bridge

    def forget(self, shell: ContainerShell) -> None:
        self._shells.discard(shell)

    async def delete(self, container_id: str) -> None:
        """Remove what the runtime may have left (normally ``run`` cleans up itself)."""
        process = await asyncio.create_subprocess_exec(
            self.runtime,
            "delete",
            "--force",
            container_id,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )
        await process.wait()

    async def close(self) -> None:
        for shell in list(self._shells):
            await shell.discard()
        self._shells.clear()

    def info(self) -> dict[str, object]:
        return {
            "driver": self.name,
            "runtime": self.runtime,
            "cgroup": "v2" if Cgroup("x").v2 else "v1",
        }
