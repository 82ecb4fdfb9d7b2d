"""The ``nfaas`` CLI end to end: deploy, invoke, ls, describe, logs, scale, rm, token."""

from __future__ import annotations

import json
import queue
import re
import subprocess
import threading
import time

import pytest
from platform_harness import NFAAS, Platform, pid_gone, wait_until

ECHO = """
import json

def handle(event, context):
    print(f"cli-echo method={event.method} body={event.body!r}", flush=True)
    if event.headers.get("x-mode") == "info":
        return {
            "method": event.method,
            "headers": event.headers,
            "query": event.query,
            "path": event.path,
            "body": event.body.decode(),
            "instance": context.instance_id,
        }
    if event.headers.get("x-mode") == "teapot":
        return {"statusCode": 418, "body": "short and stout"}
    return event.body
"""

PHASES = ("scheduled", "spawned", "shipped", "loaded", "ready", "first_response")


def text(completed) -> str:
    """stdout + stderr, whitespace collapsed (rich wraps long lines)."""
    return " ".join((completed.stdout + completed.stderr).decode(errors="replace").split())


@pytest.fixture(scope="module")
def echo(platform: Platform) -> str:
    """A function deployed with ``nfaas deploy -f``; returns its name."""
    name = "cli-echo"
    manifest = platform.manifest(
        {name: (ECHO, {"scale": {"max": 2, "idle_timeout": "20s"}, "labels": {"suite": "cli"}})}
    )
    done = platform.cli("deploy", "-f", str(manifest))
    assert done.returncode == 0, text(done)
    assert f"deployed {name} in default" in text(done)
    return name


def test_deploy_json_output(platform: Platform, unique_name) -> None:
    first, second = unique_name("cli-a"), unique_name("cli-b")
    manifest = platform.manifest({first: (ECHO, {}), second: (ECHO, {"public": True})})
    done = platform.cli("deploy", "-f", str(manifest), "--json", second)
    assert done.returncode == 0, text(done)
    results = json.loads(done.stdout)
    assert [r["name"] for r in results] == [second]  # only the named function
    assert results[0]["namespace"] == "default"
    assert results[0]["public"] is True
    assert re.fullmatch(r"[0-9a-f]{64}", results[0]["bundle"])
    listed = {f["name"] for f in json.loads(platform.cli("ls", "--json").stdout)}
    assert second in listed
    assert first not in listed

    anonymous = platform.cli("invoke", second, input=b"anon", token=None)
    assert anonymous.returncode == 0, text(anonymous)  # public: no token needed
    assert anonymous.stdout == b"anon"
    assert platform.cli("deploy", "-f", str(manifest), first).returncode == 0
    private = platform.cli("invoke", first, input=b"anon", token=None)
    assert private.returncode == 1
    assert "HTTP 401" in text(private)
    no_token = platform.cli("ls", token=None)
    assert no_token.returncode == 1 and "HTTP 401" in text(no_token)


def test_invoke_stdin_to_stdout(platform: Platform, echo: str) -> None:
    payload = b"hello \x00\xff binary\npayload"
    done = platform.cli("invoke", echo, input=payload)
    assert done.returncode == 0, text(done)
    assert done.stdout == payload


def test_invoke_headers_method_and_query(platform: Platform, echo: str) -> None:
    done = platform.cli(
        "invoke",
        echo,
        "-H",
        "x-mode=info",
        "-H",
        "X-Custom=a=b",
        "--method",
        "put",
        "--query",
        "a=1&b=two",
        input=b"body!",
    )
    assert done.returncode == 0, text(done)
    seen = json.loads(done.stdout)
    assert seen["method"] == "PUT"
    assert seen["headers"]["x-custom"] == "a=b"  # split on the first '=' only
    assert seen["query"] == {"a": "1", "b": "two"}
    assert seen["body"] == "body!"
    assert seen["path"] == "/"


def test_invoke_non_2xx_exits_nonzero_but_prints_body(platform: Platform, echo: str) -> None:
    done = platform.cli("invoke", echo, "-H", "x-mode=teapot")
    assert done.returncode == 1
    assert done.stdout == b"short and stout"
    assert "HTTP 418" in done.stderr.decode()


def test_invoke_failures_exit_nonzero(platform: Platform) -> None:
    missing = platform.cli("invoke", "no-such-function")
    assert missing.returncode == 1
    assert "not found" in missing.stdout.decode()
    assert "HTTP 404" in missing.stderr.decode()

    bad_header = platform.cli("invoke", "whatever", "-H", "no-equals-sign")
    assert bad_header.returncode != 0
    assert "bad header" in text(bad_header)

    unreachable = platform.cli("ls", url="http://127.0.0.1:9")
    assert unreachable.returncode == 1
    assert "cannot reach the platform" in text(unreachable)


def test_ls(platform: Platform, echo: str) -> None:
    platform.cli("invoke", echo, input=b"x")
    done = platform.cli("ls", "--json")
    assert done.returncode == 0, text(done)
    entry = next(f for f in json.loads(done.stdout) if f["name"] == echo)
    assert entry["namespace"] == "default"
    assert entry["isolation"] == "process"
    assert entry["runtime"] == "python"
    assert entry["public"] is False
    assert entry["labels"] == {"suite": "cli"}
    assert entry["replicas"] >= 1
    assert entry["invocationCount"] >= 1
    assert entry["scale"]["idle_timeout"] == 20.0

    table = platform.cli("ls")
    assert table.returncode == 0
    row = next(line for line in table.stdout.decode().splitlines() if echo in line)
    assert "default" in row
    assert entry["bundle"][:12] in row


def test_describe_json_cold_start_records(platform: Platform, unique_name) -> None:
    name = unique_name("cli-desc")
    manifest = platform.manifest({name: (ECHO, {"scale": {"idle_timeout": "20s"}})})
    assert platform.cli("deploy", "-f", str(manifest)).returncode == 0
    assert platform.cli("invoke", name, input=b"one").returncode == 0
    assert platform.cli("invoke", name, input=b"two").returncode == 0

    done = platform.cli("describe", name, "--json")
    assert done.returncode == 0, text(done)
    fn = json.loads(done.stdout)
    assert fn["name"] == name
    assert fn["limits"]["timeout"] == 30.0
    status = fn["status"]
    assert status["replicas"] == 1
    assert status["invocations"] == 2
    assert status["last_error"] == ""
    (instance,) = status["instances"]
    assert instance["pid"] > 0
    assert instance["served"] == 2
    assert instance["inflight"] == 0

    (record,) = status["cold_starts"]
    assert record["instance_id"] == instance["id"]
    assert record["trigger"] == "request"
    assert record["error"] == ""
    stamps = [record["accepted"], *(record[p] for p in PHASES)]
    assert all(s > 0 for s in stamps), record
    assert stamps == sorted(stamps), f"phase timestamps out of order: {record}"
    durations = record["durations_ms"]
    assert set(durations) == {*PHASES, "total"}
    assert all(v >= 0 for v in durations.values())
    assert durations["total"] == pytest.approx(sum(durations[p] for p in PHASES), abs=0.01)
    assert durations["total"] < 10_000

    percentiles = status["cold_start_percentiles_ms"]
    assert set(percentiles) == {*PHASES, "total"}
    for phase, values in percentiles.items():
        assert values["n"] == 1
        assert values["p50"] <= values["p90"] <= values["p99"]
        assert values["p50"] == pytest.approx(durations[phase], abs=0.01)

    human = platform.cli("describe", name)
    assert human.returncode == 0
    out = text(human)
    assert f"{name} in default" in out
    assert "cold-start phases" in out
    assert instance["id"] in out


def test_logs(platform: Platform, echo: str) -> None:
    marker = b"log-marker-8431"
    assert platform.cli("invoke", echo, input=marker).returncode == 0
    needle = f"cli-echo method=POST body={marker!r}"

    def human_lines() -> str | None:
        done = platform.cli("logs", echo)
        assert done.returncode == 0, text(done)
        return done.stdout.decode() if needle in done.stdout.decode() else None

    out = wait_until(human_lines, timeout=10, what="the handler's print in nfaas logs")
    line = next(line for line in out.splitlines() if needle in line)
    assert re.match(r"\d\d:\d\d:\d\d \S+ cli-echo", line), line

    done = platform.cli("logs", echo, "--json", "--tail", "5")
    assert done.returncode == 0
    entries = [json.loads(line) for line in done.stdout.decode().splitlines()]
    assert 1 <= len(entries) <= 5
    assert {"timestamp", "namespace", "name", "instance", "text"} <= set(entries[-1])
    assert all(e["name"] == echo and e["namespace"] == "default" for e in entries)

    missing = platform.cli("logs", "no-such-function")
    assert missing.returncode == 1
    assert "HTTP 404" in text(missing)


def test_scale(platform: Platform, unique_name) -> None:
    name = unique_name("cli-scale")
    manifest = platform.manifest({name: (ECHO, {"scale": {"max": 3, "idle_timeout": "30s"}})})
    assert platform.cli("deploy", "-f", str(manifest)).returncode == 0
    assert platform.status(name)["replicas"] == 0

    done = platform.cli("scale", name, "--replicas", "2")
    assert done.returncode == 0, text(done)
    assert f"scaled {name} to 2" in text(done)
    status = wait_until(
        lambda: (s := platform.status(name))["replicas"] == 2 and s, timeout=10, what="2 replicas"
    )
    pids = {i["pid"] for i in status["instances"]}
    assert len(pids) == 2
    listed = next(f for f in json.loads(platform.cli("ls", "--json").stdout) if f["name"] == name)
    assert listed["replicas"] == 2
    triggers = {r["trigger"] for r in platform.status(name)["cold_starts"]}
    assert triggers <= {"scale"}  # records appear only after a first response

    too_many = platform.cli("scale", name, "--replicas", "4")
    assert too_many.returncode == 1
    assert "replicas" in text(too_many)
    assert "HTTP 400" in text(too_many)

    done = platform.cli("scale", name, "--replicas", "0")
    assert done.returncode == 0, text(done)
    wait_until(lambda: platform.status(name)["replicas"] == 0, timeout=10, what="0 replicas")
    wait_until(lambda: all(pid_gone(p) for p in pids), timeout=5, what="instances to exit")

    unknown = platform.cli("scale", "no-such-function", "--replicas", "1")
    assert unknown.returncode == 1
    assert "HTTP 404" in text(unknown)


def test_rm(platform: Platform, unique_name) -> None:
    name = unique_name("cli-rm")
    manifest = platform.manifest({name: (ECHO, {})})
    assert platform.cli("deploy", "-f", str(manifest)).returncode == 0
    assert platform.cli("invoke", name, input=b"x").returncode == 0
    (instance,) = platform.status(name)["instances"]

    done = platform.cli("rm", name)
    assert done.returncode == 0, text(done)
    assert f"removed {name}" in text(done)
    assert name not in {f["name"] for f in json.loads(platform.cli("ls", "--json").stdout)}
    gone = platform.cli("describe", name)
    assert gone.returncode == 1
    assert "HTTP 404" in text(gone)
    assert platform.invoke(name).status_code == 404
    wait_until(lambda: pid_gone(instance["pid"]), timeout=5, what="the instance to exit")

    again = platform.cli("rm", name)
    assert again.returncode == 1
    assert "HTTP 404" in text(again)


def test_redeploy_updates_code(platform: Platform, unique_name) -> None:
    name = unique_name("cli-update")
    manifest = platform.manifest({name: ("def handle(e, c):\n    return 'v1'\n", {})})
    assert platform.cli("deploy", "-f", str(manifest)).returncode == 0
    assert platform.cli("invoke", name).stdout == b"v1"
    (manifest.parent / name / "handler.py").write_text("def handle(e, c):\n    return 'v2'\n")
    assert platform.cli("deploy", "-f", str(manifest)).returncode == 0
    assert platform.cli("invoke", name).stdout == b"v2"


def test_token_create_use_revoke(platform: Platform, echo: str) -> None:
    done = platform.cli("token", "create", "--namespace", "cli-tenant", "--json")
    assert done.returncode == 0, text(done)
    created = json.loads(done.stdout)
    assert created["namespace"] == "cli-tenant"
    assert created["token"].startswith(f"nfaas_{created['id']}_")

    plain = platform.cli("token", "create", "--namespace", "cli-tenant")
    assert plain.returncode == 0
    second = plain.stdout.decode().strip().splitlines()[-1]
    assert second.startswith("nfaas_") and second != created["token"]

    as_tenant = platform.cli("ls", "--json", token=created["token"])
    assert as_tenant.returncode == 0, text(as_tenant)
    assert json.loads(as_tenant.stdout) == []  # the tenant's namespace is empty
    hidden = platform.cli("describe", echo, token=created["token"])
    assert hidden.returncode == 1 and "HTTP 404" in text(hidden)

    tokens = json.loads(platform.cli("token", "ls", "--json").stdout)
    mine = next(t for t in tokens if t["id"] == created["id"])
    assert mine["namespace"] == "cli-tenant" and mine["revoked"] is None
    assert all("token" not in t and "hash" not in t for t in tokens)  # secrets never listed

    revoked = platform.cli("token", "revoke", created["id"])
    assert revoked.returncode == 0, text(revoked)
    assert f"revoked {created['id']}" in text(revoked)
    refused = platform.cli("ls", token=created["token"])
    assert refused.returncode == 1
    assert "HTTP 401" in text(refused)
    tokens = json.loads(platform.cli("token", "ls", "--json").stdout)
    assert next(t for t in tokens if t["id"] == created["id"])["revoked"] is not None

    twice = platform.cli("token", "revoke", created["id"])
    assert twice.returncode == 1 and "HTTP 404" in text(twice)
    not_admin = platform.cli("token", "create", "--namespace", "other", token=second)
    assert not_admin.returncode == 1 and "HTTP 403" in text(not_admin)


def test_malformed_manifest_names_file_line_and_key(platform: Platform) -> None:
    manifest = platform.manifest({"cli-bad": (ECHO, {})})
    manifest.write_text(
        "functions:\n"  # 1
        "  cli-bad:\n"  # 2
        "    handler: ./cli-bad\n"  # 3
        "    scale:\n"  # 4
        "      min: 0\n"  # 5
        "      max: 0\n"  # 6
    )
    done = platform.cli("deploy", "-f", str(manifest))
    assert done.returncode != 0
    assert f"{manifest}:6: functions.cli-bad.scale.max" in text(done)

    manifest.write_text(
        "functions:\n  cli-bad:\n    handler: ./cli-bad\n    limits:\n      memroy: 64Mi\n"
    )
    done = platform.cli("deploy", "-f", str(manifest))
    assert done.returncode != 0
    assert f"{manifest}:5: functions.cli-bad.limits.memroy: unknown key" in text(done)

    manifest.write_text("functions:\n  cli-bad:\n    handler: ./cli-bad\n   bad: [indent\n")
    done = platform.cli("deploy", "-f", str(manifest))
    assert done.returncode != 0
    assert re.search(rf"{re.escape(str(manifest))}:\d+: invalid YAML", text(done))

    manifest.write_text("functions:\n  cli-bad:\n    handler: ./missing-dir\n")
    done = platform.cli("deploy", "-f", str(manifest))
    assert done.returncode != 0
    assert f"{manifest}:3: functions.cli-bad.handler: handler directory not found" in text(done)

    done = platform.cli("deploy", "-f", str(manifest.parent / "nope.yml"))
    assert done.returncode != 0
    assert "cannot read manifest" in text(done)
    assert "cli-bad" not in {f["name"] for f in json.loads(platform.cli("ls", "--json").stdout)}

    ok = platform.manifest({"cli-ok": (ECHO, {})})
    done = platform.cli("deploy", "-f", str(ok), "not-in-manifest")
    assert done.returncode != 0
    assert "no function named not-in-manifest" in text(done)


def test_logs_follow(platform: Platform, echo: str) -> None:
    follower = subprocess.Popen(
        [NFAAS, "logs", echo, "-f", "--tail", "1"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=platform.cli_env(),
    )
    lines: queue.Queue[str] = queue.Queue()
    reader = threading.Thread(
        target=lambda: [lines.put(line.decode()) for line in follower.stdout], daemon=True
    )
    reader.start()
    try:
        time.sleep(0.5)  # let it connect and print the backlog
        assert platform.cli("invoke", echo, input=b"followed-7731").returncode == 0
        deadline = time.monotonic() + 10
        while True:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            if "followed-7731" in line:
                break
        assert follower.poll() is None  # still following
    finally:
        follower.terminate()  # our own child, by pid
        follower.wait(5)


def test_redeploy_drains_in_flight_requests(platform: Platform, unique_name) -> None:
    name = unique_name("cli-drain")
    slow_v1 = """
    import os
    import time

    def handle(event, context):
        time.sleep(2)
        return f"v1 {os.getpid()}"
    """
    platform.deploy(name, slow_v1, {"limits": {"timeout": "10s"}})
    answers: list = []
    caller = threading.Thread(target=lambda: answers.append(platform.invoke(name)))
    caller.start()
    try:
        status = wait_until(
            lambda: (s := platform.status(name))["inflight"] == 1 and s, timeout=10, what="inflight"
        )
        old_pid = status["instances"][0]["pid"]
        platform.deploy(name, "def handle(e, c):\n    return 'v2'\n")  # update (PUT)
        fresh = platform.invoke(name)
        assert fresh.status_code == 200 and fresh.text == "v2"
    finally:
        caller.join(20)
    (old,) = answers
    assert old.status_code == 200 and old.text == f"v1 {old_pid}"  # finished on the old code
    wait_until(lambda: pid_gone(old_pid), timeout=5, what="the drained instance to stop")


@pytest.mark.parametrize("key", ["[/x]", "[red]"])
def test_error_messages_are_printed_verbatim(platform: Platform, key: str) -> None:
    manifest = platform.manifest({"cli-markup": (ECHO, {})})
    manifest.write_text(
        f'functions:\n  cli-markup:\n    handler: ./cli-markup\n    limits:\n      "{key}": 1\n'
    )
    done = platform.cli("deploy", "-f", str(manifest))
    assert done.returncode == 1
    assert "Traceback" not in text(done) and "MarkupError" not in text(done)
    assert f"{manifest}:5: functions.cli-markup.limits.{key}: unknown key '{key}'" in text(done)
