"""The worker: a function-less shell until a Load frame arrives, then an instance of one function.

Runs in a process forked from the zygote. Reads frames from its stream socket, answers
Load with Loaded, Invoke with Result or Error, Ping with Pong. Handlers run inline when the
instance serves one request at a time, on a small thread pool otherwise.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import os
import resource
import socket
import sys
import threading
import time
import traceback
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NoReturn, Protocol

from nfaas.worker.handler_io import Context, make_event, to_response
from nfaas.worker.protocol import (
    Attach,
    Error,
    Exited,
    FrameBuffer,
    Invoke,
    Load,
    Loaded,
    Message,
    Ping,
    Pong,
    Result,
    encode,
)

_RLIMITS = {
    "cpu_time": resource.RLIMIT_CPU,
    "open_files": resource.RLIMIT_NOFILE,
    "processes": resource.RLIMIT_NPROC,
    "core": resource.RLIMIT_CORE,
}
THREAD_STACK = 512 * 1024
# Private data the runtime already maps; the zygote measures it once, children inherit it.
BASE_DATA = 0


def vm_data() -> int:
    """Bytes of private data the process already has (inherited from the zygote)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmData:"):
                return int(line.split()[1]) * 1024
    return 0


def apply_limits(rlimits: dict[str, int]) -> None:
    """Set rlimits; ``memory`` is counted on top of the runtime already mapped."""
    for key, value in rlimits.items():
        if key == "memory":
            limit = (BASE_DATA or vm_data()) + value
            resource.setrlimit(resource.RLIMIT_DATA, (limit, limit))
        elif key == "cpu_time":
            resource.setrlimit(resource.RLIMIT_CPU, (value, value + 5))
        else:
            resource.setrlimit(_RLIMITS[key], (value, value))


def drop_privileges(uid: int, gid: int) -> None:
    if uid < 0 or os.getuid() != 0:
        return
    os.setgroups([])
    os.setgid(gid)
    os.setuid(uid)


def unpack_bundle(data: bytes, code_dir: str) -> None:
    """Unpack shipped code, readable but not writable by the function's uid."""
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        for entry in archive.infolist():
            parts = entry.filename.split("/")
            if entry.filename.startswith("/") or ".." in parts:
                raise ValueError(f"bundle entry {entry.filename!r} points outside the bundle")
        archive.extractall(code_dir)
    for folder, _dirs, files in os.walk(code_dir):
        os.chmod(folder, 0o755)
        for name in files:
            os.chmod(os.path.join(folder, name), 0o644)


def import_module(code_dir: str, deps_dir: str) -> Any:
    """The function's handler.py, with its code and installed requirements importable."""
    for path in (deps_dir, code_dir):
        if path:
            sys.path.insert(0, path)
    spec = importlib.util.spec_from_file_location("handler", os.path.join(code_dir, "handler.py"))
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load handler.py from {code_dir}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["handler"] = module
    spec.loader.exec_module(module)
    return module


def import_handler(code_dir: str, deps_dir: str) -> Callable[[Any, Any], Any]:
    handle = getattr(import_module(code_dir, deps_dir), "handle", None)
    if not callable(handle):
        raise AttributeError("handler.py does not define a callable handle(event, context)")
    return handle


class Worker:
    """Serves one stream: anything with ``recv(n) -> bytes`` and ``sendall(data)``."""

    def __init__(self, sock: Channel) -> None:
        self.sock = sock
        self.lock = threading.Lock()
        self.handle: Callable[[Any, Any], Any] | None = None
        self.context: Context | None = None
        self.pool: ThreadPoolExecutor | None = None
        self.fds: list[int] = []  # descriptors attached for the next Load's ports
        self.nf: Any = None  # the NfRunner of a runtime nf instance
        self.program: Any = None  # the Program of a runtime command instance

    def send(self, message: Message) -> None:
        data = encode(message)
        with self.lock:
            self.sock.sendall(data)

    def load(self, msg: Load) -> Loaded:
        started = time.perf_counter()
        try:
            if msg.bundle:
                unpack_bundle(msg.bundle, msg.code_dir)
            if msg.deps:
                unpack_bundle(msg.deps, msg.deps_dir)
            os.chdir(msg.workdir)
            apply_limits(msg.rlimits)
            drop_privileges(msg.uid, msg.gid)
            os.environ.clear()  # already empty in a warmed-up shell: cheap
            os.environ.update(msg.env)
            self.context = Context(msg.function_name, msg.namespace, msg.instance_id, dict(msg.env))
            importing = time.perf_counter()
            if msg.runtime == "command":
                return self.load_command(msg, started)
            if msg.runtime == "nf":
                self.load_nf(msg)
            else:
                self.handle = import_handler(msg.code_dir, msg.deps_dir)
            imported = time.perf_counter() - importing
        except BaseException as exc:  # a broken handler must not take the shell down silently
            traceback.print_exc()
            sys.stderr.flush()
            return Loaded(msg.id, False, f"{type(exc).__name__}: {exc}")
        if msg.concurrency > 1:
            threading.stack_size(THREAD_STACK)
            self.pool = ThreadPoolExecutor(max_workers=msg.concurrency)
        return Loaded(msg.id, True, "", time.perf_counter() - started, imported)

    def load_command(self, msg: Load, started: float) -> Loaded:
        """Start the function's program in its code directory (a bundle may carry its config)."""
        from nfaas.worker.command import Program, ProgramError

        spawning = time.perf_counter()
        try:
            self.program = Program(msg.command, msg.code_dir, msg.env, msg.rlimits.get("memory", 0))
        except ProgramError as exc:
            print(f"[nfaas] {exc}", file=sys.stderr, flush=True)
            return Loaded(msg.id, False, str(exc))
        now = time.perf_counter()
        return Loaded(msg.id, True, "", now - started, now - spawning, self.program.pid)

    def program_exited(self, status: int, words: str) -> None:
        """The program ended: say how, and end the instance with it."""
        print(f"[nfaas] program {words}", file=sys.stderr, flush=True)
        with contextlib.suppress(OSError):
            self.send(Exited(0, status, f"program {words}"))
        os._exit(0)

    def load_nf(self, msg: Load) -> None:
        """Import the handler, build its graph, attach the ports, start the packet loop."""
        from nfaas.worker import nf_runner

        module = import_module(msg.code_dir, msg.deps_dir)
        handle = getattr(module, "handle", None)
        graph = nf_runner.build_graph(module, self.context)
        nf_runner.check_ports(graph, [binding.name for binding in msg.ports])
        fds, self.fds = self.fds, []
        ports = nf_runner.attach_ports(msg.ports, fds)
        runner = nf_runner.NfRunner(graph, ports, self.send)
        self.handle = handle if callable(handle) else _no_control_api
        self.nf = runner
        assert self.context is not None
        self.context.graph = graph
        runner.start()

    def call_handler(self, event: Any) -> Any:
        assert self.handle is not None
        if self.nf is None:
            return self.handle(event, self.context)
        with self.nf.lock:  # an NF's control API never runs in the middle of a batch
            return self.handle(event, self.context)

    def invoke(self, msg: Invoke) -> None:
        assert self.handle is not None
        try:
            event = make_event(msg.method, msg.path, msg.query, msg.headers, msg.body)
            status, headers, body = to_response(self.call_handler(event))
            reply: Message = Result(msg.id, status, headers, body)
        except BaseException as exc:
            traceback.print_exc()
            reply = Error(msg.id, type(exc).__name__, str(exc))
        sys.stdout.flush()
        sys.stderr.flush()
        self.send(reply)

    def dispatch(self, msg: Message) -> None:
        if isinstance(msg, Invoke):
            if self.handle is None:
                self.send(Error(msg.id, "NotLoaded", "no function loaded in this shell"))
            elif self.pool is not None:
                self.pool.submit(self.invoke, msg)
            else:
                self.invoke(msg)
        elif isinstance(msg, Load):
            self.send(self.load(msg))
            if self.program is not None:  # watched only now: Loaded goes before any Exited
                self.program.watch(self.program_exited)
        elif isinstance(msg, Ping):
            self.send(Pong(msg.id))
        elif isinstance(msg, Attach):
            self.fds = self.sock.take_fds() if isinstance(self.sock, SocketChannel) else []
            if len(self.fds) != msg.count:
                print(f"[nfaas] expected {msg.count} port descriptors, got {len(self.fds)}")

    def serve(self) -> NoReturn:
        frames = FrameBuffer()
        recv = self.sock.recv
        while True:
            data = recv(1 << 18)
            if not data:
                os._exit(0)
            for msg in frames.feed(data):
                self.dispatch(msg)


def _no_control_api(event: Any, context: Any) -> Any:
    return {"statusCode": 404, "body": "this NF function has no control API (handle)"}


def warm_up() -> None:
    """Run the load and invoke paths once on dummy data while the shell waits for work.

    After fork every page the interpreter touches is copied on first write; doing that now
    moves the copying from the cold-start path to shell preparation.
    """
    from nfaas.worker import handler_io

    spec = importlib.util.spec_from_file_location("_nfaas_warm", handler_io.__file__)
    if spec is not None and spec.loader is not None:
        with contextlib.suppress(OSError):  # the sources may not be readable by our uid
            spec.loader.exec_module(importlib.util.module_from_spec(spec))
    os.environ.clear()  # the function's environment replaces the zygote's at load
    to_response(make_event("POST", "/", "a=1", [("x", "y")], b"{}").body.decode())
    encode(Result(0, 200, [], b""))


class Channel(Protocol):
    def recv(self, size: int, /) -> bytes: ...

    def sendall(self, data: bytes, /) -> None: ...


class SocketChannel:
    """A stream socket whose peer may attach file descriptors (an NF's ports)."""

    MAX_FDS = 64

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.fds: list[int] = []
        self._space = socket.CMSG_SPACE(self.MAX_FDS * 4)

    def recv(self, size: int, /) -> bytes:
        data, ancillary, _flags, _addr = self.sock.recvmsg(size, self._space)
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                usable = len(payload) - len(payload) % 4
                self.fds += memoryview(payload)[:usable].cast("i").tolist()
        return data

    def sendall(self, data: bytes, /) -> None:
        self.sock.sendall(data)

    def take_fds(self) -> list[int]:
        fds, self.fds = self.fds, []
        return fds


class FdChannel:
    """A stream over a plain file descriptor (a serial port in a microVM)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def recv(self, size: int, /) -> bytes:
        return os.read(self.fd, size)

    def sendall(self, data: bytes, /) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]


def serve(sock: Channel, ahead: bool) -> NoReturn:
    """Serve the stream; a shell prepared ``ahead`` of demand warms up first."""
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    sys.stderr.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    sys.dont_write_bytecode = True
    if ahead:
        warm_up()
    Worker(SocketChannel(sock) if isinstance(sock, socket.socket) else sock).serve()
