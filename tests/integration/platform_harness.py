"""Harness for the integration suite: a real ``nfaas up`` subprocess and helpers to drive it.

Every test talks to the platform over HTTP or through the ``nfaas`` CLI, exactly as a user
would. The session-wide ``platform`` is shared by most modules; tests keep out of each other's
way by giving every function a unique name (``unique_name``). Tests that stop the platform or
may damage its state (restart, schemathesis) start their own with ``platform_factory``.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import textwrap
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO = Path(__file__).resolve().parents[2]
BIN = REPO / ".venv" / "bin"
NFAAS = str(BIN / "nfaas")
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
# The only exit status accepted from ``nfaas up`` after SIGTERM: a clean 0.
CLEAN_EXIT = (0,)

ADMIN = object()  # sentinel: "use the platform's admin token"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    predicate: Callable[[], Any], timeout: float = 10.0, interval: float = 0.05, what: str = ""
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what or predicate}")
        time.sleep(interval)


def pid_gone(pid: int) -> bool:
    """True when ``pid`` no longer runs. A zombie counts as gone: the container's init may not
    reap orphans, and a zombie holds no memory, files or sockets."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            state = stat.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return True
    return state in ("Z", "X")


def make_zip(files: dict[str, str | bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, content in files.items():
            archive.writestr(name, content)
    return buffer.getvalue()


def dedent(source: str) -> str:
    return textwrap.dedent(source).lstrip("\n")


def write_manifest(root: Path, functions: dict[str, tuple[str, dict[str, Any]]]) -> Path:
    """Write ``root/<name>/handler.py`` for each function and ``root/stack.yml`` naming them.

    ``functions`` maps a name to ``(handler source, spec mapping)``.
    """
    root.mkdir(parents=True, exist_ok=True)
    entries: dict[str, Any] = {}
    for name, (source, spec) in functions.items():
        folder = root / name
        folder.mkdir(exist_ok=True)
        (folder / "handler.py").write_text(dedent(source))
        entries[name] = {"handler": f"./{name}", **spec}
    manifest = root / "stack.yml"
    manifest.write_text(yaml.safe_dump({"functions": entries}, sort_keys=False))
    return manifest


class Platform:
    """One ``nfaas up`` subprocess on a private data directory and a free port."""

    def __init__(
        self,
        data_dir: Path,
        extra_env: dict[str, str] | None = None,
        extra_args: tuple[str, ...] = ("--microvm-pool", "0"),
    ) -> None:
        # No booted guest waiting by default: under TCG each takes seconds of CPU.
        self.extra_args = extra_args
        self.data_dir = data_dir
        self.extra_env = extra_env or {}
        self.port = 0
        self.proc: subprocess.Popen[bytes] | None = None
        self.last_pid = 0
        self.token = ""
        self.log_path = Path(f"{data_dir}.log")
        self._http: httpx.Client | None = None
        self.work = Path(tempfile.mkdtemp(prefix="nfaas-it-work-", dir="/tmp"))

    # -- lifecycle -------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        assert self.proc is None, "already running"
        for attempt in range(3):
            if self._launch():
                break
            if attempt == 2 or "address already in use" not in self.log_tail():
                raise RuntimeError(f"nfaas up exited early:\n{self.log_tail()}")
        self.token = (self.data_dir / "admin.token").read_text().strip()
        self._http = httpx.Client(base_url=self.url, timeout=60)

    def _launch(self) -> bool:
        """Start ``nfaas up`` on a free port; False if it exited before becoming healthy."""
        self.port = free_port()
        env = {"NFAAS_MQTT_PORT": "0", **os.environ, **self.extra_env}
        env.pop("NFAAS_TOKEN", None)
        with open(self.log_path, "ab") as log:
            proc = subprocess.Popen(
                [
                    NFAAS,
                    "up",
                    "--data",
                    str(self.data_dir),
                    "--port",
                    str(self.port),
                    *self.extra_args,
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
            )
        deadline = time.monotonic() + START_TIMEOUT
        while proc.poll() is None:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    self.proc = proc
                    return True
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                raise RuntimeError(f"nfaas up did not become healthy:\n{self.log_tail()}")
            time.sleep(0.05)
        return False

    def stop(self, timeout: float = STOP_TIMEOUT) -> int:
        """SIGTERM by pid; returns the exit status (raises if it does not exit in time)."""
        assert self.proc is not None, "not running"
        if self._http is not None:
            self._http.close()
            self._http = None
        os.kill(self.proc.pid, signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
            raise AssertionError(
                f"nfaas up did not exit within {timeout}s of SIGTERM:\n{self.log_tail()}"
            ) from None
        finally:
            self.last_pid = self.proc.pid
            self.proc = None
        return code

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def cleanup(self) -> None:
        shutil.rmtree(self.data_dir, ignore_errors=True)
        shutil.rmtree(self.work, ignore_errors=True)
        self.log_path.unlink(missing_ok=True)

    # -- HTTP ------------------------------------------------------------------------------
    def _auth(self, token: Any) -> dict[str, str]:
        if token is ADMIN:
            token = self.token
        return {"authorization": f"Bearer {token}"} if token else {}

    def request(
        self,
        method: str,
        path: str,
        token: Any = ADMIN,
        headers: dict[str, str] | None = None,
        **kwargs: Any,
    ) -> httpx.Response:
        assert self._http is not None, "platform not running"
        return self._http.request(
            method, path, headers={**self._auth(token), **(headers or {})}, **kwargs
        )

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return self.request("GET", path, **kwargs)

    def invoke(
        self,
        target: str,
        body: bytes = b"",
        method: str = "POST",
        token: Any = ADMIN,
        **kwargs: Any,
    ) -> httpx.Response:
        return self.request(method, f"/function/{target}", token=token, content=body, **kwargs)

    def upload(self, files: dict[str, str | bytes], token: Any = ADMIN) -> str:
        answer = self.request(
            "POST",
            "/system/bundles",
            token=token,
            content=make_zip(files),
            headers={"content-type": "application/zip"},
        )
        assert answer.status_code == 201, answer.text
        return str(answer.json()["sha256"])

    def deploy(
        self,
        name: str,
        source: str,
        spec: dict[str, Any] | None = None,
        token: Any = ADMIN,
        namespace: str | None = None,
    ) -> dict[str, Any]:
        """Create (or update) a function over the API; returns the 202 answer."""
        sha = self.upload({"handler.py": dedent(source)}, token=token)
        body = {"name": name, "namespace": namespace, "bundle": sha, "spec": spec or {}}
        answer = self.request("POST", "/system/functions", token=token, json=body)
        if answer.status_code == 409:
            answer = self.request("PUT", "/system/functions", token=token, json=body)
        assert answer.status_code == 202, answer.text
        return dict(answer.json())

    def describe(self, name: str, token: Any = ADMIN, namespace: str | None = None) -> Any:
        params = {"namespace": namespace} if namespace else {}
        answer = self.get(f"/system/function/{name}", token=token, params=params)
        assert answer.status_code == 200, answer.text
        return answer.json()

    def status(self, name: str, namespace: str | None = None) -> dict[str, Any]:
        return dict(self.describe(name, namespace=namespace)["status"])

    def logs(self, name: str, token: Any = ADMIN, namespace: str | None = None) -> list[str]:
        params: dict[str, Any] = {"name": name, "tail": 2000}
        if namespace:
            params["namespace"] = namespace
        answer = self.get("/system/logs", token=token, params=params)
        assert answer.status_code == 200, answer.text
        return [json.loads(line)["text"] for line in answer.text.splitlines() if line.strip()]

    def wait_for_log(self, name: str, needle: str, timeout: float = 10.0) -> list[str]:
        return wait_until(
            lambda: (lines := self.logs(name)) and any(needle in t for t in lines) and lines,
            timeout,
            what=f"{needle!r} in the logs of {name}",
        )

    # -- CLI -------------------------------------------------------------------------------
    def cli(
        self,
        *args: str,
        token: Any = ADMIN,
        input: bytes = b"",
        url: str | None = None,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run ``nfaas ARGS`` against this platform; stdin is a pipe carrying ``input``."""
        return subprocess.run(
            [NFAAS, *args],
            input=input,
            capture_output=True,
            env=self.cli_env(token, url),
            timeout=timeout,
        )

    def nats_url(self, admin: bool = False) -> str:
        """The platform's NATS URL: as a device sees it (no credentials), or with the
        platform's own credentials (JetStream API access, for inspecting streams)."""
        url = str(self.get("/system/info").json()["events"]["nats_server"]["url"])
        if not admin:
            return url
        password = (self.data_dir / "nats" / "platform.password").read_text().strip()
        return url.replace("nats://", f"nats://nfaas:{password}@", 1)

    def cli_env(self, token: Any = ADMIN, url: str | None = None) -> dict[str, str]:
        """The environment for ``nfaas`` commands: NFAAS_URL and NFAAS_TOKEN (if any)."""
        env = {**os.environ, "NFAAS_URL": url or self.url, "COLUMNS": "250"}
        env.pop("NFAAS_TOKEN", None)
        env["NFAAS_DATA"] = str(self.work / "no-default-data")  # never pick up a default token
        if token is ADMIN:
            token = self.token
        if token:
            env["NFAAS_TOKEN"] = token
        return env

    def manifest(self, functions: dict[str, tuple[str, dict[str, Any]]]) -> Path:
        """A fresh directory with handler folders and a stack.yml; returns the manifest path."""
        root = Path(tempfile.mkdtemp(prefix="stack-", dir=self.work))
        return write_manifest(root, functions)


def new_data_dir() -> Path:
    """A data directory instance uids can traverse (pytest's tmp_path is under a 0700 dir)."""
    path = Path(tempfile.mkdtemp(prefix="nfaas-it-", dir="/tmp"))
    path.chmod(0o711)
    return path
