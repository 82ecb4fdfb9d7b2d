"""``nfaas``: run the platform (``up``) and manage functions on it."""

from __future__ import annotations

import contextlib
import json
import signal
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer
from rich.markup import escape
from rich.table import Table

from nfaas.cli.calls import calls_app
from nfaas.cli.client import DEFAULT_DATA, ApiError, Client
from nfaas.cli.common import JSON_OPT, NS_OPT, call, client, emit_json, err, fail, out
from nfaas.cli.monitor import monitor_app
from nfaas.cli.topics import topic_app
from nfaas.core.bundle import pack
from nfaas.core.manifest import ManifestError, load_manifest
from nfaas.core.spec import spec_to_dict
from nfaas.node.coldstart import PHASES

app = typer.Typer(
    help="nfaas: serverless network and IoT functions on edge nodes.", no_args_is_help=True
)
token_app = typer.Typer(
    help="Create, list and revoke API tokens (admin only).", no_args_is_help=True
)
app.add_typer(token_app, name="token")
app.add_typer(calls_app, name="calls")
app.add_typer(topic_app, name="topic")
app.add_typer(monitor_app, name="monitor")


@app.command()
def up(
    data: Path = typer.Option(
        DEFAULT_DATA, "--data", help="State directory (SQLite, bundles, logs)."
    ),
    host: str = typer.Option("127.0.0.1", "--host"),
    port: int = typer.Option(8080, "--port"),
    deploy: list[Path] = typer.Option([], "--deploy", "-f", help="Manifest(s) to deploy once up."),
    exercise: bool = typer.Option(
        False, "--exercise", help="Invoke each deployed function with its sample."
    ),
    shell_pool: int = typer.Option(2, "--shell-pool", help="Prepared process shells kept ready."),
    container_pool: int = typer.Option(
        1, "--container-pool", help="Prepared container shells kept ready."
    ),
    microvm_pool: int = typer.Option(
        1, "--microvm-pool", help="Prepared (booted) microVM shells kept ready."
    ),
    guest_kernel: str | None = typer.Option(
        None,
        "--guest-kernel",
        help="Kernel for microVM guests (default: /boot/vmlinuz-*-cloud-amd64).",
    ),
    oci_runtime: str = typer.Option(
        "runc",
        "--oci-runtime",
        help="OCI runtime for the container tier (runc, crun, runsc, kata-runtime).",
    ),
    nats: str | None = typer.Option(
        None,
        "--nats",
        envvar="NFAAS_NATS_URL",
        help="Use this NATS server (with JetStream) instead of starting a local one.",
    ),
    mqtt_port: int = typer.Option(
        1883,
        "--mqtt-port",
        envvar="NFAAS_MQTT_PORT",
        help="MQTT listener of the local nats-server on 127.0.0.1 (0: any free port; -1: none).",
    ),
) -> None:
    """Run the platform in the foreground: gateway, controller, node agent and event bus."""
    import uvicorn

    from nfaas.api.app import create_app
    from nfaas.control.platform import Platform, PlatformConfig

    try:
        platform = Platform(
            PlatformConfig(
                data_dir=data,
                shell_pool=shell_pool,
                container_pool=container_pool,
                oci_runtime=oci_runtime,
                microvm_pool=microvm_pool,
                guest_kernel=guest_kernel,
                nats_url=nats,
                mqtt_port=None if mqtt_port < 0 else mqtt_port,
            )
        )
    except RuntimeError as exc:
        fail(str(exc))
    asgi = create_app(platform)
    config = uvicorn.Config(
        asgi,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        log_level="warning",
        access_log=False,
        timeout_graceful_shutdown=5,
    )
    server = _server_class()(config)
    url = f"http://{host}:{port}"
    err.print(f"nfaas {url} data={data} admin token in {data / 'admin.token'}", highlight=False)
    if deploy:
        threading.Thread(
            target=_deploy_when_up, args=(server, url, data, deploy, exercise), daemon=True
        ).start()
    server.run()


def _server_class() -> type:
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn re-raises SIGINT/SIGTERM after its graceful shutdown, so the process dies
        of the signal; nfaas stops everything and then exits 0."""

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            previous = {sig: signal.signal(sig, self.handle_exit) for sig in HANDLED_SIGNALS}
            try:
                yield
            finally:
                for sig, handler in previous.items():
                    signal.signal(sig, handler)

    return Server


HANDLED_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def _deploy_when_up(
    server: Any, url: str, data: Path, manifests: list[Path], exercise: bool
) -> None:
    while not server.started:
        time.sleep(0.05)
    api = Client(url, (data / "admin.token").read_text().strip())
    for path in manifests:
        try:
            manifest = load_manifest(path)
        except ManifestError as exc:
            err.print(f"[red]{escape(str(exc))}[/]", highlight=False)
            continue
        for name, entry in manifest.functions.items():
            try:
                sha = api.upload_bundle(pack(entry.handler_dir))
                api.deploy(name, None, _raw_spec(entry.spec), sha)
                err.print(f"deployed {name} ({sha[:12]})", highlight=False)
                if exercise:
                    _exercise(api, name, entry.handler_dir)
            except ApiError as exc:
                err.print(f"[red]deploy {escape(name)}: {escape(str(exc))}[/]", highlight=False)


def _exercise(api: Client, name: str, handler_dir: Path) -> None:
    samples: list[Path | None] = [*sorted(handler_dir.glob("sample*"))]
    for sample in samples or [None]:
        body = sample.read_bytes() if sample else b""
        response = api.http.post(f"/function/{name}", content=body)
        cold = " (cold start)" if response.headers.get("x-nfaas-cold-start") else ""
        err.print(
            f"  {name} {sample.name if sample else ''} -> {response.status_code}{cold}: "
            f"{response.text.strip()[:200]}",
            highlight=False,
        )


def _raw_spec(spec: Any) -> dict[str, Any]:
    raw = spec_to_dict(spec)
    raw.pop("name", None)
    return raw


@app.command("deploy")
def deploy_cmd(
    file: Path = typer.Option(..., "-f", "--file", help="Manifest (stack.yml)."),
    names: list[str] = typer.Argument(None, help="Deploy only these functions."),
    namespace: str | None = NS_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Deploy functions from a manifest (creates or updates)."""
    try:
        manifest = load_manifest(file)
    except ManifestError as exc:
        fail(str(exc))
    selected = names or list(manifest.functions)
    unknown = [n for n in selected if n not in manifest.functions]
    if unknown:
        fail(f"{file}: no function named {', '.join(unknown)} in the manifest")
    api = client()
    results = []
    with out.status("deploying…") if out.is_terminal and not as_json else _Null():
        for name in selected:
            entry = manifest.functions[name]
            sha = call(api.upload_bundle, pack(entry.handler_dir))
            answer = call(api.deploy, name, namespace, _raw_spec(entry.spec), sha)
            results.append(answer)
            if not as_json:
                out.print(f"deployed [bold]{name}[/] in {answer['namespace']} (bundle {sha[:12]})")
    if as_json:
        emit_json(results)


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


@app.command()
def invoke(
    name: str,
    header: list[str] = typer.Option([], "-H", "--header", help="KEY=VALUE, repeatable."),
    method: str = typer.Option("POST", "--method", "-X"),
    namespace: str | None = NS_OPT,
    query: str = typer.Option("", "--query", help="Query string, e.g. a=1&b=2."),
    asynchronous: bool = typer.Option(
        False, "--async", help="Queue the call (durably); prints its call id."
    ),
    callback: str | None = typer.Option(
        None, "--callback", help="With --async: POST the result to this URL (X-Callback-Url)."
    ),
) -> None:
    """Invoke a function: stdin is the request body, the response body goes to stdout
    (with --async: the call id; follow it with `nfaas calls show ID`)."""
    headers = {}
    for item in header:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"bad header {item!r}: expected KEY=VALUE")
        headers[key] = value
    body = b"" if sys.stdin.isatty() else sys.stdin.buffer.read()
    target = f"{name}.{namespace}" if namespace else name
    if callback and not asynchronous:
        fail("--callback needs --async")
    if callback:
        headers["X-Callback-Url"] = callback
    path = f"/async-function/{target}" if asynchronous else f"/function/{target}"
    api = client()
    try:
        response = api.http.request(
            "POST" if asynchronous else method.upper(),
            path,
            content=body,
            headers=headers,
            params=query or None,
        )
    except Exception as exc:
        fail(f"cannot reach the platform at {api.url}: {exc}")
    if asynchronous and response.status_code == 202:
        sys.stdout.write(response.headers["x-call-id"] + "\n")
        return
    sys.stdout.buffer.write(response.content)
    sys.stdout.flush()
    if response.status_code >= 400:
        err.print(f"HTTP {response.status_code}", highlight=False)
        raise typer.Exit(1)


@app.command("ls")
def list_cmd(namespace: str | None = NS_OPT, as_json: bool = JSON_OPT) -> None:
    """List functions."""
    params = {"namespace": namespace} if namespace else {}
    functions = call(client().json, "GET", "/system/functions", params=params)
    if as_json:
        emit_json(functions)
        return
    table = Table("NAME", "NAMESPACE", "ISOLATION", "REPLICAS", "INVOCATIONS", "PUBLIC", "BUNDLE")
    for fn in functions:
        table.add_row(
            fn["name"],
            fn["namespace"],
            fn["isolation"],
            str(fn["replicas"]),
            str(fn["invocationCount"]),
            "yes" if fn["public"] else "no",
            fn["bundle"][:12],
        )
    out.print(table)


@app.command()
def describe(name: str, namespace: str | None = NS_OPT, as_json: bool = JSON_OPT) -> None:
    """Show a function: spec, instances, recent cold starts and their percentiles."""
    params = {"namespace": namespace} if namespace else {}
    fn = call(client().json, "GET", f"/system/function/{name}", params=params)
    if as_json:
        emit_json(fn)
        return
    status = fn["status"]
    out.print(
        f"[bold]{fn['name']}[/] in {fn['namespace']}  runtime={fn['runtime']} "
        f"isolation={fn['isolation']} public={fn['public']} bundle={fn['bundle'][:12]}"
    )
    out.print(f"scale: {fn['scale']}")
    out.print(f"limits: {fn['limits']}")
    out.print(
        f"replicas={status.get('replicas', 0)} starting={status.get('starting', 0)} "
        f"inflight={status.get('inflight', 0)} queued={status.get('queued', 0)} "
        f"invocations={status.get('invocations', 0)}"
    )
    if status.get("last_error"):
        out.print(f"[red]last error: {escape(status['last_error'])}[/]", highlight=False)
    table = Table("INSTANCE", "PID", "INFLIGHT", "SERVED", "IDLE s", title="instances")
    for inst in status.get("instances", []):
        table.add_row(
            inst["id"],
            str(inst["pid"]),
            str(inst["inflight"]),
            str(inst["served"]),
            f"{inst['idle_seconds']:.1f}",
        )
    out.print(table)
    pct = status.get("cold_start_percentiles_ms", {})
    if pct:
        table = Table("PHASE", "p50 ms", "p90 ms", "p99 ms", "n", title="cold-start phases")
        for phase, values in pct.items():
            table.add_row(
                phase,
                f"{values['p50']:.3f}",
                f"{values['p90']:.3f}",
                f"{values['p99']:.3f}",
                str(values["n"]),
            )
        out.print(table)
    recent = status.get("cold_starts", [])
    if recent:
        table = Table(
            "INSTANCE",
            "TRIGGER",
            "scheduled",
            "shell",
            "shipped",
            "loaded",
            "ready",
            "first_response",
            "total ms",
            "error",
            title="recent cold starts (ms per phase)",
        )
        for rec in recent:
            d = rec["durations_ms"]
            table.add_row(
                rec["instance_id"],
                rec["trigger"],
                *(f"{d[p]:.3f}" if p in d else "-" for p in (*PHASES, "total")),
                rec["error"][:40],
            )
        out.print(table)


@app.command()
def logs(
    name: str,
    follow: bool = typer.Option(False, "-f", "--follow"),
    tail: int = typer.Option(100, "--tail"),
    namespace: str | None = NS_OPT,
    as_json: bool = JSON_OPT,
) -> None:
    """Print a function's logs; -f keeps following."""
    params: dict[str, Any] = {"name": name, "tail": tail, "follow": follow}
    if namespace:
        params["namespace"] = namespace
    try:
        for line in client().stream_lines("/system/logs", params):
            if not line.strip():
                continue
            if as_json:
                sys.stdout.write(line + "\n")
            else:
                entry = json.loads(line)
                stamp = time.strftime("%H:%M:%S", time.localtime(entry["timestamp"]))
                sys.stdout.write(f"{stamp} {entry['instance']} {entry['text']}\n")
            sys.stdout.flush()
    except ApiError as exc:
        fail(f"{exc.message} (HTTP {exc.status})" if exc.status else exc.message)
    except KeyboardInterrupt:
        pass


@app.command("rm")
def remove(name: str, namespace: str | None = NS_OPT) -> None:
    """Remove a function and stop its instances."""
    call(
        client().json,
        "DELETE",
        "/system/functions",
        json={"functionName": name, "namespace": namespace},
    )
    out.print(f"removed {name}")


@app.command()
def scale(
    name: str, replicas: int = typer.Option(..., "--replicas"), namespace: str | None = NS_OPT
) -> None:
    """Start or stop instances now to reach N replicas (the autoscaler and idle timeout still apply)."""
    call(
        client().json,
        "POST",
        f"/system/scale-function/{name}",
        json={"serviceName": name, "replicas": replicas, "namespace": namespace},
    )
    out.print(f"scaled {name} to {replicas}")


@token_app.command("create")
def token_create(
    namespace: str = typer.Option(..., "--namespace", "-n"), as_json: bool = JSON_OPT
) -> None:
    """Create a token scoped to one namespace; prints it once."""
    answer = call(client().json, "POST", "/system/tokens", json={"namespace": namespace})
    if as_json:
        emit_json(answer)
    else:
        out.print(f"token id {answer['id']} for namespace {answer['namespace']}:")
        sys.stdout.write(answer["token"] + "\n")


@token_app.command("revoke")
def token_revoke(token_id: str) -> None:
    """Revoke a token by its id (the part after 'nfaas_')."""
    call(client().request, "DELETE", f"/system/tokens/{token_id}")
    out.print(f"revoked {token_id}")


@token_app.command("ls")
def token_list(as_json: bool = JSON_OPT) -> None:
    """List tokens (ids and namespaces; never the secrets)."""
    tokens = call(client().json, "GET", "/system/tokens")
    if as_json:
        emit_json(tokens)
        return
    table = Table("ID", "NAMESPACE", "CREATED", "REVOKED")
    for tok in tokens:
        table.add_row(
            tok["id"],
            tok["namespace"],
            time.ctime(tok["created"]),
            time.ctime(tok["revoked"]) if tok["revoked"] else "",
        )
    out.print(table)


def _register_bench() -> None:
    from nfaas.bench.cli import bench_app

    app.add_typer(bench_app, name="bench")


_register_bench()
