"""``nfaas bench monitor``: the monitoring platform's management chains, timed as in seed 001
§IV-C: warm functions, functions from cold, and the same handlers as always-on services.

- warm: the chain's functions have instances (the previous run left them warm);
- cold: every function of the chain is scaled to zero (and the node left to settle) before
  each run, so each step of the chain is a cold start; the chain head, a new instance, wakes
  its later steps as it sends the first one (docs/monitoring.md, "Waking the steps");
- cold-no-wake: the same, on a second deployment of the package whose heads do not wake
  their steps (MONITOR_WAKE=0): the baseline of the wake-ups, measured side by side;
- always-on: the same handler files imported by one long-running HTTP server (a thread per
  request, like the microservices the seed compares with) that serves them at the same
  ``/function/<name>.<namespace>`` paths, so the chain's calls go to it; the topics API calls
  still go to the platform, so all three do the same platform work.

A run is one dcm-create (fetch -> create -> dcs-create -> consumer-start, async) of ``topics``
new topics, then one dcm-delete (fetch -> dcs-delete -> delete) of them, each timed end to end
by the client. The modes are interleaved round by round so they see the same machine.

A cold chain is several cold starts in a row, each a few ms after the previous one: more than
the prepared-shell pool holds (2 by default) and the later ones wait for a shell. So the same
is measured on a second platform with a larger pool (``shell_pools``).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

from nfaas.bench.harness import PlatformProcess, free_port
from nfaas.bench.report import markdown, print_table, save, summary
from nfaas.monitor.deploy import FUNCTIONS_DIR, deploy, function_names

NAMESPACE = "monitoring"
NO_WAKE_NAMESPACE = "monitoring-nowake"  # the same package, deployed with MONITOR_WAKE=0
CREATE_CHAIN = ("dcm-create", "fetch-topic", "create-topic", "dcs-create", "consumer-start")
DELETE_CHAIN = ("dcm-delete", "fetch-topic", "dcs-delete", "delete-topic")
MODES = ("warm", "always-on", "cold", "cold-no-wake")
TARGET_COLD_OVER_WARM = 2.0
SECTION = "Monitoring: management chains warm vs cold vs always-on (seed 001 §IV-C)"


# --- the always-on server ---------------------------------------------------------------------


def load_handlers() -> dict[str, Callable[[Any, Any], Any]]:
    """Every monitoring handler, imported once (they ``import mon`` from the package dir)."""
    sys.path.insert(0, str(FUNCTIONS_DIR.parent))
    handlers = {}
    for name in function_names():
        path = FUNCTIONS_DIR / name.replace("-", "_") / "handler.py"
        spec = importlib.util.spec_from_file_location(f"always_on_{name.replace('-', '_')}", path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        handlers[name] = module.handle
    return handlers


def make_server(port: int, namespace: str) -> ThreadingHTTPServer:
    """The handlers behind ``/function/<name>.<ns>`` (sync) and ``/async-function/…`` (202
    now, run on a thread), with the python runtime's event, context and response rules."""
    from nfaas.worker.handler_io import Context, make_event, to_response

    handlers = load_handlers()
    env = dict(os.environ)

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as the gateway offers
        disable_nagle_algorithm = True  # headers and body are separate writes

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _route(self) -> tuple[str, Callable[[Any, Any], Any], str, str] | None:
            path, _, query = self.path.partition("?")
            for prefix in ("/function/", "/async-function/"):
                if path.startswith(prefix):
                    target, _, sub = path[len(prefix) :].partition("/")
                    name, _, ns = target.partition(".")
                    if name in handlers and ns in ("", namespace):
                        return prefix, handlers[name], "/" + sub, query
            return None

        def _answer(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
            self.send_response(status)
            for key, value in headers:
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _serve(self) -> None:
            length = int(self.headers.get("content-length") or 0)
            body = self.rfile.read(length) if length else b""
            found = self._route()
            if found is None:
                self._answer(404, [("Content-Type", "text/plain")], b"no such function")
                return
            prefix, handle, sub, query = found
            event = make_event(self.command, sub, query, list(self.headers.items()), body)
            context = Context(handle.__module__, namespace, "always-on", env)

            def run() -> tuple[int, list[tuple[str, str]], bytes]:
                try:
                    return to_response(handle(event, context))
                except Exception as exc:
                    return 500, [("Content-Type", "text/plain")], repr(exc).encode()

            if prefix == "/async-function/":
                threading.Thread(target=run, daemon=True).start()
                self._answer(202, [("X-Call-Id", uuid.uuid4().hex)], b"")
                return
            self._answer(*run())

        do_GET = do_POST = do_PUT = do_DELETE = _serve

    return ThreadingHTTPServer(("127.0.0.1", port), Handler)


def serve_main(argv: list[str]) -> None:
    """``python -m nfaas.bench.monitor_chains PORT NAMESPACE``: serve until killed."""
    port, namespace = int(argv[0]), argv[1]
    make_server(port, namespace).serve_forever()


class AlwaysOn:
    """The server as a subprocess (stopped by its PID), configured like the functions."""

    def __init__(self, platform_url: str, token: str, namespace: str = NAMESPACE) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {
            **os.environ,
            "NFAAS_URL": platform_url,
            "NFAAS_TOKEN": token,
            "NFAAS_FUNCTIONS_URL": self.url,
            "MONITOR_NAMESPACE": namespace,
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "nfaas.bench.monitor_chains", str(self.port), namespace],
            env=env,
            stdout=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                httpx.get(f"{self.url}/function/none", timeout=1)
                return
            except httpx.TransportError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("the always-on server did not come up")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# --- one run of a chain -----------------------------------------------------------------------


def describe(platform: PlatformProcess, name: str, namespace: str = NAMESPACE) -> dict[str, Any]:
    answer = platform.api.get(f"/system/function/{name}", params={"namespace": namespace})
    data: dict[str, Any] = answer.raise_for_status().json()
    return data


def scale_to_zero(platform: PlatformProcess, functions: tuple[str, ...], namespace: str) -> None:
    """Every function at zero replicas, then the node idle (its shell pool refilled)."""
    for name in functions:
        platform.api.post(
            f"/system/scale-function/{name}", json={"namespace": namespace, "replicas": 0}
        ).raise_for_status()
    for name in functions:
        for _ in range(2000):
            if describe(platform, name, namespace)["replicas"] == 0:
                break
            time.sleep(0.005)
        else:
            raise RuntimeError(f"{name} did not scale to zero")
    wait_for_shells(platform)


def wait_for_shells(platform: PlatformProcess) -> None:
    """Until the process tier's prepared-shell pool is full again: an idle node, as a
    function at zero finds it after a quiet while."""
    for _ in range(2000):
        drivers = platform.api.get("/system/info").json()["drivers"]
        pool = next(d["shell_pool"] for d in drivers if d.get("driver") == "process")
        if pool["ready"] >= pool["target"] and pool["filling"] == 0:
            break
        time.sleep(0.005)
    time.sleep(0.02)


def timed_chain(client: httpx.Client, function: str, topics: list[str], namespace: str) -> float:
    """Milliseconds for one chain call; it must succeed for every topic."""
    started = time.perf_counter()
    answer = client.post(f"/function/{function}.{namespace}", json={"topics": topics})
    elapsed = (time.perf_counter() - started) * 1000
    if answer.status_code != 200:
        raise RuntimeError(f"{function}: {answer.status_code} {answer.text[:1000]}")
    return elapsed


def wait_collecting(platform: PlatformProcess, topics: list[str], namespace: str) -> None:
    """Until consumer-start (async) has labelled every topic: it must not overlap the next
    measured call."""
    for _ in range(2000):
        labels = [platform.api.get(f"/system/topics/{t}").json().get("labels", {}) for t in topics]
        if all(label.get("monitoring.collect") == namespace for label in labels):
            return
        time.sleep(0.005)
    raise RuntimeError(f"consumer-start did not label {topics}")


def one_run(
    platform: PlatformProcess,
    client: httpx.Client,
    mode: str,
    tag: str,
    count: int,
    namespace: str = NAMESPACE,
) -> tuple[float, float]:
    topics = [f"bench.{tag}.site1.kpi.m{i}" for i in range(count)]
    cold = mode.startswith("cold")
    if cold:
        scale_to_zero(platform, CREATE_CHAIN, namespace)
    else:
        time.sleep(0.02)  # the same idle pause before each measured call
    create = timed_chain(client, "dcm-create", topics, namespace)
    wait_collecting(platform, topics, namespace)
    if cold:
        scale_to_zero(platform, DELETE_CHAIN, namespace)
    else:
        time.sleep(0.02)
    delete = timed_chain(client, "dcm-delete", topics, namespace)
    return create, delete


def instantiation_ms(platform: PlatformProcess, name: str) -> list[float]:
    """The function's recent cold starts, from arrival to ready (what a chain step waits for
    beyond a warm call; the records' ``total`` also holds the handler's own first run)."""
    records = describe(platform, name)["status"]["cold_starts"]
    return [
        r["durations_ms"]["total"] - r["durations_ms"].get("first_response", 0.0)
        for r in records
        if "total" in r["durations_ms"]
    ]


# --- the experiment ---------------------------------------------------------------------------


class Setup:
    """One platform (with ``shell_pool`` prepared shells), the package deployed on it twice
    (with and without wake-ups), and the always-on server next to it."""

    def __init__(self, stack: ExitStack, shell_pool: int) -> None:
        self.shell_pool = shell_pool
        # only the process tier: no container or microVM shells warming up meanwhile
        args = ["--shell-pool", str(shell_pool), "--container-pool", "0", "--microvm-pool", "0"]
        self.platform = stack.enter_context(PlatformProcess(args))
        admin = (self.platform.data / "admin.token").read_text().strip()
        deploy(self.platform.url, admin, NAMESPACE)
        deploy(self.platform.url, admin, NO_WAKE_NAMESPACE, env={"MONITOR_WAKE": "0"})
        token = self.token(NAMESPACE)
        always_on = AlwaysOn(self.platform.url, token)
        stack.callback(always_on.stop)
        gateway = stack.enter_context(self.client(self.platform.url, token))
        unwoken = stack.enter_context(self.client(self.platform.url, self.token(NO_WAKE_NAMESPACE)))
        server = stack.enter_context(self.client(always_on.url, token))
        self.clients = {
            "warm": gateway,
            "cold": gateway,
            "cold-no-wake": unwoken,
            "always-on": server,
        }
        self.namespaces = {mode: NAMESPACE for mode in MODES} | {"cold-no-wake": NO_WAKE_NAMESPACE}
        self.times: dict[str, dict[str, list[float]]] = {
            m: {"create": [], "delete": []} for m in MODES
        }

    def token(self, namespace: str) -> str:
        answer = self.platform.api.post("/system/tokens", json={"namespace": namespace})
        return str(answer.raise_for_status().json()["token"])

    @staticmethod
    def client(url: str, token: str) -> httpx.Client:
        return httpx.Client(base_url=url, headers={"authorization": f"Bearer {token}"}, timeout=120)

    def warm_up(self, topics: int) -> None:
        """Instances, connections, imports: one unmeasured run in each mode."""
        for mode in MODES:
            client, namespace = self.clients[mode], self.namespaces[mode]
            one_run(self.platform, client, "warm", f"warmup-{mode}", topics, namespace)

    def measure(self, mode: str, tag: str, topics: int) -> None:
        client, namespace = self.clients[mode], self.namespaces[mode]
        create, delete = one_run(self.platform, client, mode, tag, topics, namespace)
        self.times[mode]["create"].append(create)
        self.times[mode]["delete"].append(delete)

    def cold_starts(self) -> dict[str, dict[str, float]]:
        return {
            name: summary(instantiation_ms(self.platform, name))
            for name in sorted(set(CREATE_CHAIN + DELETE_CHAIN))
        }


def run(
    runs: int = 20,
    topics: int = 2,
    shell_pools: tuple[int, ...] = (2, 5),
    out_dir: Path | None = None,
) -> dict[str, Any]:
    """``runs`` create+delete pairs per mode, each for ``topics`` new topics, on one platform
    per shell-pool size (the first is the headline: 2 is ``nfaas up``'s default). Rounds are
    interleaved across modes and platforms, so all see the same machine."""
    with ExitStack() as stack:
        setups = [Setup(stack, pool) for pool in shell_pools]
        for setup in setups:
            setup.warm_up(topics)
        for index in range(runs):
            for setup in setups:
                for mode in MODES:
                    setup.measure(mode, f"r{index}-{mode}", topics)
        measured = {
            setup.shell_pool: {"times_ms": setup.times, "cold_starts_ms": setup.cold_starts()}
            for setup in setups
        }
    return report(measured, runs, topics, out_dir)


def ratios_of(stats: dict[str, dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    return {
        chain: {
            "cold_over_warm_p50": stats["cold"][chain]["p50"] / stats["warm"][chain]["p50"],
            "cold_over_warm_p90": stats["cold"][chain]["p90"] / stats["warm"][chain]["p90"],
            "cold_no_wake_over_warm_p50": stats["cold-no-wake"][chain]["p50"]
            / stats["warm"][chain]["p50"],
            "wake_saves_ms_p50": stats["cold-no-wake"][chain]["p50"] - stats["cold"][chain]["p50"],
            "warm_over_always_on_p50": stats["warm"][chain]["p50"]
            / stats["always-on"][chain]["p50"],
        }
        for chain in ("create", "delete")
    }


def report(
    measured: dict[int, dict[str, Any]], runs: int, topics: int, out_dir: Path | None
) -> dict[str, Any]:
    pools: dict[int, dict[str, Any]] = {}
    rows, cold_rows = [], []
    for pool, data in measured.items():
        times = data["times_ms"]
        stats = {m: {c: summary(v) for c, v in chains.items()} for m, chains in times.items()}
        ratios = ratios_of(stats)
        pools[pool] = {**data, "stats_ms": stats, "ratios": ratios}
        for chain in ("create", "delete"):
            warm = stats["warm"][chain]["p50"]
            for mode in MODES:
                s = stats[mode][chain]
                rows.append(
                    [
                        f"dcm-{chain}",
                        mode,
                        str(pool),
                        f"{s['p50']:.1f}",
                        f"{s['p90']:.1f}",
                        f"{s['p50'] / warm:.2f}x",
                    ]
                )
        cold_rows += [
            [name, str(pool), f"{v.get('p50', 0):.1f}", f"{v.get('p90', 0):.1f}"]
            for name, v in data["cold_starts_ms"].items()
        ]
    header = ["chain", "mode", "shell pool", "p50 ms", "p90 ms", "p50 vs warm"]
    cold_header = ["function", "shell pool", "p50 ms", "p90 ms"]
    print_table(f"monitoring chains, {topics} topics per call, {runs} runs", header, rows)
    print_table("cold start of each function, arrival to ready", cold_header, cold_rows)
    headline_pool = next(iter(pools))
    headline = pools[headline_pool]["ratios"]
    met = all(r["cold_over_warm_p50"] <= TARGET_COLD_OVER_WARM for r in headline.values())
    result = {
        "experiment": "monitor-chains",
        "runs": runs,
        "topics_per_call": topics,
        "modes": list(MODES),
        "by_shell_pool": {str(k): v for k, v in pools.items()},
        "headline_shell_pool": headline_pool,
        "ratios": headline,
        "target": {"cold_over_warm_p50": TARGET_COLD_OVER_WARM, "met": met},
        "markdown": markdown(header, rows),
        "cold_starts_markdown": markdown(cold_header, cold_rows),
    }
    path = save("monitor-chains", result, out_dir) if out_dir else save("monitor-chains", result)
    _plot(pools, path.with_suffix(".png"))
    for pool, data in pools.items():
        r = data["ratios"]
        print(
            f"shell pool {pool}: cold/warm p50 create {r['create']['cold_over_warm_p50']:.2f}x, "
            f"delete {r['delete']['cold_over_warm_p50']:.2f}x (without wake-ups "
            f"{r['create']['cold_no_wake_over_warm_p50']:.2f}x, "
            f"{r['delete']['cold_no_wake_over_warm_p50']:.2f}x); warm/always-on p50 create "
            f"{r['create']['warm_over_always_on_p50']:.2f}x, delete "
            f"{r['delete']['warm_over_always_on_p50']:.2f}x"
        )
    print(f"target cold <= {TARGET_COLD_OVER_WARM}x warm: {'met' if met else 'missed'}")
    print(f"results: {path}")
    return result


def _plot(pools: dict[int, dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    first = next(iter(pools))
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8), sharey=True)
    for ax, chain in zip(axes, ("create", "delete"), strict=True):
        series = [pools[first]["times_ms"][m][chain] for m in ("always-on", "warm")]
        labels = ["always-on", "warm"]
        for pool, data in pools.items():
            series.append(data["times_ms"]["cold"][chain])
            labels.append(f"cold\n(pool {pool})")
            series.append(data["times_ms"]["cold-no-wake"][chain])
            labels.append(f"no wake\n(pool {pool})")
        ax.boxplot(series, tick_labels=labels, showfliers=False)
        ax.set_title(f"dcm-{chain} chain")
        ax.grid(axis="y", alpha=0.3)
    axes[0].set_ylabel("ms, end to end")
    fig.suptitle("Monitoring management chains (seed 001 §IV-C)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    serve_main(sys.argv[1:])
