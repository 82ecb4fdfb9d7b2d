"""Deploy (and remove) the monitoring platform on a running nfaas, with one call.

What a deployment is: a token scoped to the namespace (the functions' only credential), the
dashboards topic, and the functions of ``functions/`` — each bundle is its ``handler.py`` plus
``mon.py`` — created or updated with NFAAS_URL and NFAAS_TOKEN in their environment. Running
it again updates everything in place and revokes the token the previous deployment made.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from nfaas.core.bundle import FIXED_TIME
from nfaas.core.spec import validate_name

HERE = Path(__file__).resolve().parent
FUNCTIONS_DIR = HERE / "functions"
SHARED = HERE / "mon.py"
DEFAULT_NAMESPACE = "monitoring"
TOKEN_ID_ENV = "MONITOR_TOKEN_ID"  # which token to revoke when the deployment is replaced

# Management functions: quick, idempotent, at zero when idle (the point of seed 001 §III-B).
_MANAGEMENT: dict[str, Any] = {
    "scale": {"min": 0, "max": 2, "idle_timeout": "60s"},
    "limits": {"memory": "128Mi", "timeout": "30s"},
}
_CHAIN: dict[str, Any] = {  # waits for the functions it calls
    "scale": {"min": 0, "max": 2, "idle_timeout": "60s"},
    "limits": {"memory": "128Mi", "timeout": "120s"},
}
# consumer-start is called asynchronously: retried if the platform is briefly unavailable.
_ASYNC_RETRY = {"attempts": 5, "backoff": "500ms", "max_backoff": "10s"}
COLLECT_LABEL = "monitoring.collect"


def function_specs(namespace: str) -> dict[str, dict[str, Any]]:
    """Each function's spec, less its environment (added at deploy)."""
    return {
        "fetch-topic": dict(_MANAGEMENT),
        "create-topic": dict(_MANAGEMENT),
        "delete-topic": dict(_MANAGEMENT),
        "dcs-create": dict(_MANAGEMENT),
        "dcs-delete": dict(_MANAGEMENT),
        "dcm-create": dict(_CHAIN),
        "dcm-delete": dict(_CHAIN),
        "consumer-start": {**_MANAGEMENT, "retry": _ASYNC_RETRY},
        "consumer": {
            "scale": {"min": 0, "max": 4, "idle_timeout": "120s"},
            # a batch of 100 records of the seed's largest (1 MB) fits
            "limits": {"memory": "512Mi", "timeout": "60s"},
            "triggers": [
                {"topics": {COLLECT_LABEL: namespace}, "batch": {"size": 100, "wait": "200ms"}}
            ],
            "retry": {"attempts": 8, "backoff": "500ms", "max_backoff": "30s"},
        },
        "query": {**_MANAGEMENT, "limits": {"memory": "256Mi", "timeout": "60s"}},
        "dashboard": {**_MANAGEMENT, "limits": {"memory": "256Mi", "timeout": "30s"}},
    }


def function_names() -> list[str]:
    """The functions this package ships: folders of functions/ with a handler.py."""
    return sorted(
        p.name.replace("_", "-") for p in FUNCTIONS_DIR.iterdir() if (p / "handler.py").is_file()
    )


def handler_path(function: str) -> Path:
    return FUNCTIONS_DIR / function.replace("-", "_") / "handler.py"


def bundle(function: str) -> bytes:
    """The function's zip: its handler.py and the shared mon.py (same files, same bytes)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, path in (("handler.py", handler_path(function)), ("mon.py", SHARED)):
            info = zipfile.ZipInfo(name, FIXED_TIME)
            info.external_attr = 0o644 << 16
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, path.read_bytes())
    return buffer.getvalue()


class DeployError(Exception):
    """A platform call failed: ``step`` says which, ``status`` what it answered."""

    def __init__(self, step: str, status: int, detail: str) -> None:
        super().__init__(f"{step}: HTTP {status}: {detail}")
        self.step = step
        self.status = status


def _check(response: httpx.Response, step: str, ok: tuple[int, ...]) -> httpx.Response:
    if response.status_code not in ok:
        raise DeployError(step, response.status_code, response.text.strip()[:500])
    return response


@dataclass
class Deployment:
    namespace: str
    url: str
    functions: list[str]
    token_id: str
    dashboards_topic: str
    revoked: list[str] = field(default_factory=list)

    @property
    def dashboard_url(self) -> str:
        return f"{self.url}/function/dashboard.{self.namespace}"

    @property
    def query_url(self) -> str:
        return f"{self.url}/function/query.{self.namespace}"

    def to_json(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "functions": self.functions,
            "token_id": self.token_id,
            "revoked_token_ids": self.revoked,
            "dashboards_topic": self.dashboards_topic,
            "dashboard_url": self.dashboard_url,
            "query_url": self.query_url,
        }


def dashboards_topic(namespace: str) -> str:
    return f"{namespace}.dashboards"


def _admin(url: str, token: str, timeout: float) -> httpx.Client:
    return httpx.Client(
        base_url=url.rstrip("/"), headers={"authorization": f"Bearer {token}"}, timeout=timeout
    )


def _ensure_dashboards_topic(http: httpx.Client, namespace: str) -> str:
    """One message per experiment (the latest kept): the dashboard store."""
    name = dashboards_topic(namespace)
    body = {
        "name": name,
        "namespace": namespace,  # the deployment's functions read it with their scoped token
        "subjects": [f"{name}.*"],
        "max_msgs_per_subject": 1,
        "max_bytes": "16Mi",  # reserved on the node; a dashboard is a few hundred bytes
        "description": f"dashboards of monitoring deployment {namespace!r}, one per experiment",
        "labels": {"monitoring.role": "dashboards", "monitoring.deployment": namespace},
    }
    answer = http.post("/system/topics", json=body)
    if answer.status_code == 409:
        _check(http.get(f"/system/topics/{quote(name, safe='')}"), "dashboards topic", (200,))
    else:
        _check(answer, "dashboards topic", (201,))
    return name


def _previous_token_ids(http: httpx.Client, namespace: str) -> set[str]:
    """Tokens earlier deployments gave their functions (read from the functions' env)."""
    found = set()
    for name in function_names():
        answer = http.get(f"/system/function/{name}", params={"namespace": namespace})
        if answer.status_code == 200:
            token_id = (answer.json().get("envVars") or {}).get(TOKEN_ID_ENV)
            if token_id:
                found.add(token_id)
    return found


def deploy(
    url: str,
    admin_token: str,
    namespace: str = DEFAULT_NAMESPACE,
    function_url: str | None = None,
    public_dashboard: bool = False,
    env: dict[str, str] | None = None,
    timeout: float = 60.0,
) -> Deployment:
    """Create or update the whole package on the platform at ``url``.

    ``function_url``: how the functions reach the platform (default ``url``); ``env``: extra
    settings for every function (e.g. MONITOR_STORE_MAX_AGE).
    """
    validate_name(namespace, ("namespace",))
    if namespace == "nfaas":
        raise DeployError("namespace", 400, "'nfaas' subjects are reserved by the platform")
    url = url.rstrip("/")
    with _admin(url, admin_token, timeout) as http:
        previous = _previous_token_ids(http, namespace)
        issued = _check(
            http.post("/system/tokens", json={"namespace": namespace}), "token", (201,)
        ).json()
        topic = _ensure_dashboards_topic(http, namespace)
        environment = {
            **(env or {}),
            "NFAAS_URL": (function_url or url).rstrip("/"),
            "NFAAS_TOKEN": issued["token"],
            TOKEN_ID_ENV: issued["id"],
            "MONITOR_NAMESPACE": namespace,
        }
        specs = function_specs(namespace)
        deployed = []
        for name in function_names():
            sha = _check(
                http.post(
                    "/system/bundles",
                    content=bundle(name),
                    headers={"content-type": "application/zip"},
                ),
                f"upload {name}",
                (201,),
            ).json()["sha256"]
            spec = {**specs[name], "env": environment}
            if name == "dashboard" and public_dashboard:
                spec["public"] = True
            body = {"name": name, "namespace": namespace, "bundle": sha, "spec": spec}
            answer = http.put("/system/functions", json=body)
            if answer.status_code == 404:
                answer = http.post("/system/functions", json=body)
            _check(answer, f"deploy {name}", (202,))
            deployed.append(name)
        revoked = []
        for token_id in sorted(previous - {issued["id"]}):
            _check(http.delete(f"/system/tokens/{token_id}"), "revoke old token", (204, 404))
            revoked.append(token_id)
    return Deployment(namespace, url, deployed, issued["id"], topic, revoked)


@dataclass
class Removal:
    namespace: str
    functions: list[str]
    revoked: list[str]
    topics: list[str]


def remove(
    url: str,
    admin_token: str,
    namespace: str = DEFAULT_NAMESPACE,
    purge: bool = False,
    timeout: float = 60.0,
) -> Removal:
    """Remove the functions and revoke their token; with ``purge`` also every topic the
    deployment made (data topics, stores, dashboards) — the monitoring data is gone then."""
    validate_name(namespace, ("namespace",))
    with _admin(url, admin_token, timeout) as http:
        token_ids = _previous_token_ids(http, namespace)
        removed = []
        for name in function_names():
            answer = http.request(
                "DELETE",
                "/system/functions",
                json={"functionName": name, "namespace": namespace},
            )
            if _check(answer, f"remove {name}", (202, 404)).status_code == 202:
                removed.append(name)
        for token_id in sorted(token_ids):
            _check(http.delete(f"/system/tokens/{token_id}"), "revoke token", (204, 404))
        deleted = []
        if purge:
            for topic in _check(http.get("/system/topics"), "list topics", (200,)).json():
                labels = topic.get("labels") or {}
                if labels.get("monitoring.deployment") != namespace:
                    continue
                path = f"/system/topics/{quote(topic['name'], safe='')}"
                _check(http.delete(path), f"delete topic {topic['name']}", (204, 404))
                deleted.append(topic["name"])
    return Removal(namespace, removed, sorted(token_ids), deleted)
