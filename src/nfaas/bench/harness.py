"""Start a real platform in a subprocess for an experiment, and talk to it."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from nfaas.core.bundle import pack


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PlatformProcess:
    """``nfaas up`` on a free port with a fresh data directory; stopped by its PID."""

    def __init__(self, extra_args: list[str] | None = None) -> None:
        self.data = Path(tempfile.mkdtemp(prefix="nfaas-bench-", dir="/tmp"))
        self.data.chmod(0o711)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_args = extra_args or []
        self.proc: subprocess.Popen[bytes] | None = None
        self.http: httpx.Client | None = None

    def __enter__(self) -> PlatformProcess:
        self.launch()
        return self

    def launch(self) -> None:
        """Start ``nfaas up`` (again, after ``kill9``: same data directory and port)."""
        self.log = open(f"{self.data}.log", "ab")  # noqa: SIM115 - closed at exit
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "nfaas",
                "up",
                "--data",
                str(self.data),
                "--port",
                str(self.port),
                "--mqtt-port",
                "0",
                *self.extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=self.log,  # a pipe nobody reads would stall the platform once full
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                time.sleep(0.05)
        else:
            raise RuntimeError("platform did not come up")
        token = (self.data / "admin.token").read_text().strip()
        self.http = httpx.Client(
            base_url=self.url, headers={"authorization": f"Bearer {token}"}, timeout=120
        )

    def kill9(self) -> None:
        """SIGKILL the platform, as a crash would (its nats-server follows it)."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.proc = None
        if self.http is not None:
            self.http.close()
            self.http = None

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.http is not None:
            self.http.close()
        if self.proc is not None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.data, ignore_errors=True)

    @property
    def api(self) -> httpx.Client:
        assert self.http is not None
        return self.http

    def deploy(self, name: str, handler_dir: Path, spec: dict[str, Any]) -> None:
        sha = (
            self.api.post("/system/bundles", content=pack(handler_dir))
            .raise_for_status()
            .json()["sha256"]
        )
        self.api.post(
            "/system/functions", json={"name": name, "bundle": sha, "spec": spec}
        ).raise_for_status()

    def describe(self, name: str) -> dict[str, Any]:
        data: dict[str, Any] = self.api.get(f"/system/function/{name}").raise_for_status().json()
        return data

    def scale(self, name: str, replicas: int) -> None:
        self.api.post(
            f"/system/scale-function/{name}", json={"replicas": replicas}
        ).raise_for_status()

    def zygote_pid(self) -> int:
        info = self.api.get("/system/info").raise_for_status().json()
        return int(info["drivers"][0]["zygote_pid"])


def examples_dir() -> Path:
    """examples/ of the source checkout this package runs from."""
    here = Path(__file__).resolve()
    for parent in here.parents:
        candidate = parent / "examples" / "hello" / "handler.py"
        if candidate.exists():
            return parent / "examples"
    raise FileNotFoundError("examples/ not found next to the nfaas sources")
