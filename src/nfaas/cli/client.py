"""A small HTTP client for the platform: finds it through NFAAS_URL and NFAAS_TOKEN."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

DEFAULT_URL = "http://127.0.0.1:8080"
# root runs instances under other uids, which cannot reach into /root: use /var/lib then.
_HOME_DATA = Path.home() / ".local/share/nfaas"
DEFAULT_DATA = Path(
    os.environ.get("NFAAS_DATA") or ("/var/lib/nfaas" if os.getuid() == 0 else str(_HOME_DATA))
)


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


def default_token(data_dir: Path = DEFAULT_DATA) -> str | None:
    token = os.environ.get("NFAAS_TOKEN")
    if token:
        return token
    path = data_dir / "admin.token"
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _message(response: httpx.Response) -> str:
    try:
        data = response.json()
    except ValueError:
        return response.text.strip()
    if isinstance(data, dict) and "error" in data:
        field = f" (field: {data['field']})" if data.get("field") else ""
        return f"{data['error']}{field}"
    if isinstance(data, dict) and "detail" in data:
        return str(data["detail"])
    return response.text.strip()


class Client:
    def __init__(
        self, url: str | None = None, token: str | None = None, timeout: float = 120.0
    ) -> None:
        self.url = (url or os.environ.get("NFAAS_URL") or DEFAULT_URL).rstrip("/")
        self.token = token if token is not None else default_token()
        headers = {"authorization": f"Bearer {self.token}"} if self.token else {}
        self.http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ApiError(0, f"cannot reach the platform at {self.url}: {exc}") from None
        if response.status_code >= 400:
            raise ApiError(response.status_code, _message(response))
        return response

    def json(self, method: str, path: str, **kwargs: Any) -> Any:
        return self.request(method, path, **kwargs).json()

    def upload_bundle(self, data: bytes) -> str:
        answer = self.json(
            "POST", "/system/bundles", content=data, headers={"content-type": "application/zip"}
        )
        return str(answer["sha256"])

    def deploy(self, name: str, namespace: str | None, spec: dict[str, Any], bundle: str) -> Any:
        body = {"name": name, "namespace": namespace, "spec": spec, "bundle": bundle}
        try:
            return self.json("PUT", "/system/functions", json=body)
        except ApiError as exc:
            if exc.status != 404:
                raise
        return self.json("POST", "/system/functions", json=body)

    def stream_lines(self, path: str, params: dict[str, Any]) -> Iterator[str]:
        try:
            with self.http.stream("GET", path, params=params, timeout=None) as response:
                if response.status_code >= 400:
                    response.read()
                    raise ApiError(response.status_code, _message(response))
                yield from response.iter_lines()
        except httpx.TransportError as exc:
            raise ApiError(0, f"cannot reach the platform at {self.url}: {exc}") from None
