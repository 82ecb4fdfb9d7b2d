"""Error paths: bad specs and bundles, limits, failing handlers, dying instances, overload."""

from __future__ import annotations

import io
import os
import signal
import threading
import time
import zipfile

import httpx
import pytest
from platform_harness import Platform, make_zip, pid_gone, wait_until

FAULTY = """
import os
import time

def handle(event, context):
    mode = event.query.get("mode", "ok")
    if mode == "raise":
        raise ValueError("boom " + event.query.get("tag", ""))
    if mode == "sleep":
        time.sleep(float(event.query.get("s", "5")))
    if mode == "unserialisable":
        return {1, 2}
    return {"instance": context.instance_id, "pid": os.getpid(), "size": len(event.body)}
"""

OK_HANDLER = "def handle(event, context):\n    return 'ok'\n"


@pytest.fixture(scope="module")
def bundle(platform: Platform) -> str:
    return platform.upload({"handler.py": OK_HANDLER})


# -- malformed specs and bundles ----------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"scale": {"max": 0}}, "scale.max"),
        ({"scale": {"min": 3, "max": 2}}, "scale.max"),
        ({"scale": {"target_concurrency": "many"}}, "scale.target_concurrency"),
        ({"scale": {"idle_timeout": "forever"}}, "scale.idle_timeout"),
        ({"scale": "big"}, "scale"),
        ({"limits": {"memory": "1Mi"}}, "limits.memory"),
        ({"limits": {"memory": "lots"}}, "limits.memory"),
        ({"limits": {"timeout": -1}}, "limits.timeout"),
        ({"limits": {"memroy": "64Mi"}}, "limits.memroy"),
        ({"limits": {"open_files": 1}}, "limits.open_files"),
        ({"runtime": "node"}, "runtime"),
        ({"isolation": "vm"}, "isolation"),
        ({"public": "yes"}, "public"),
        ({"env": {"A": ["x"]}}, "env.A"),
        ({"labels": "x"}, "labels"),
        ({"handler": "./x"}, "handler"),  # manifest-only key, not part of the API spec
        ({"limits": {"memory": "9" * 400}}, "limits.memory"),  # float overflow
        ({"limits": {"max_body": "9" * 400 + "Gi"}}, "limits.max_body"),
        ({"scale": {"idle_timeout": "9" * 400}}, "scale.idle_timeout"),  # inf seconds
        ({"limits": {"cpu": "nan"}}, "limits.cpu"),
        ({"limits": {"cpu": "inf"}}, "limits.cpu"),
    ],
)
def test_malformed_spec_is_400_with_field(
    platform: Platform, bundle: str, unique_name, spec: dict, field: str
) -> None:
    name = unique_name("badspec")
    answer = platform.request(
        "POST", "/system/functions", json={"name": name, "bundle": bundle, "spec": spec}
    )
    assert answer.status_code == 400, answer.text
    body = answer.json()
    assert body["field"] == field
    assert body["error"].startswith(f"{field}: ")
    assert platform.get(f"/system/function/{name}").status_code == 404  # nothing was created


def test_non_finite_json_number_is_400(platform: Platform, bundle: str, unique_name) -> None:
    name = unique_name("badspec")
    spec = '{"limits": {"timeout": 1e999}}'  # Python's json reads 1e999 as inf
    raw = f'{{"name": "{name}", "bundle": "{bundle}", "spec": {spec}}}'
    answer = platform.request(
        "POST", "/system/functions", content=raw, headers={"content-type": "application/json"}
    )
    assert answer.status_code == 400, answer.text
    assert answer.json()["field"] == "limits.timeout"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"name": "Bad_Name"}, "name"),
        ({"name": "-x"}, "name"),
        ({"name": "a" * 64}, "name"),
        ({}, "name"),  # neither name nor service
        ({"name": "ok-name", "namespace": "Bad NS"}, "namespace"),
        ({"name": "ok-name", "bundle": "0" * 64}, "bundle"),
    ],
)
def test_malformed_deployment_is_400_with_field(
    platform: Platform, bundle: str, body: dict, field: str
) -> None:
    answer = platform.request("POST", "/system/functions", json={"bundle": bundle, **body})
    assert answer.status_code == 400, answer.text
    assert answer.json()["field"] == field


@pytest.mark.parametrize("files", [{"main.py": OK_HANDLER}, {"sub/handler.py": OK_HANDLER}])
def test_bundle_without_handler_is_400_at_deploy(
    platform: Platform, unique_name, files: dict[str, str]
) -> None:
    # any zip uploads; a runtime that imports handler.py is refused one without it at deploy,
    # while a command function (which runs a program, not a handler) takes it
    sha = platform.upload(files)
    name = unique_name("nohandler")
    answer = platform.request("POST", "/system/functions", json={"name": name, "bundle": sha})
    assert answer.status_code == 400, answer.text
    assert answer.json()["field"] == "bundle"
    assert "no handler.py at its top level (runtime python)" in answer.json()["error"]
    assert platform.request("GET", f"/system/function/{name}").status_code == 404
    command = {"runtime": "command", "command": ["sleep", "60"]}
    body = {"name": name, "bundle": sha, "spec": command}
    assert platform.request("POST", "/system/functions", json=body).status_code == 202
    gone = platform.request("DELETE", "/system/functions", json={"functionName": name})
    assert gone.status_code < 300, gone.text


def test_deployment_conflicts(platform: Platform, bundle: str, unique_name) -> None:
    name = unique_name("conflict")
    body = {"service": name, "bundle": bundle}  # OpenFaaS's spelling of the name
    assert platform.request("PUT", "/system/functions", json=body).status_code == 404
    assert platform.request("POST", "/system/functions", json=body).status_code == 202
    again = platform.request("POST", "/system/functions", json=body)
    assert again.status_code == 409
    assert "already exists" in again.json()["error"]
    assert platform.request("PUT", "/system/functions", json=body).status_code == 202
    wrong_shape = platform.request("POST", "/system/functions", json={"name": name, "spec": []})
    assert 400 <= wrong_shape.status_code < 500  # FastAPI's 422: bundle missing, spec not a map


def _zip_with(entries: list[tuple[zipfile.ZipInfo | str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for info, data in entries:
            archive.writestr(info, data)
    return buffer.getvalue()


def _symlink_entry() -> zipfile.ZipInfo:
    info = zipfile.ZipInfo("link.py")
    info.external_attr = 0o120777 << 16
    return info


def _corrupt_zip() -> bytes:
    data = bytearray(_zip_with([("handler.py", b"def handle(e, c):\n    return 'intact'\n")]))
    index = data.index(b"intact")
    data[index] ^= 0xFF  # stored uncompressed: flips content, CRC no longer matches
    return bytes(data)


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (b"this is not a zip archive", "not a valid zip archive"),
        (b"", "not a valid zip archive"),
        (
            make_zip({"handler.py": OK_HANDLER, "../escape.py": "x = 1"}),
            "'../escape.py' points outside the bundle",
        ),
        (
            make_zip({"handler.py": OK_HANDLER, "/etc/evil.py": "x = 1"}),
            "'/etc/evil.py' points outside the bundle",
        ),
        (
            _zip_with([("handler.py", OK_HANDLER.encode()), (_symlink_entry(), b"/etc/passwd")]),
            "'link.py' is a symbolic link",
        ),
        (_corrupt_zip(), "'handler.py' is corrupt"),
    ],
    ids=[
        "garbage",
        "empty",
        "dotdot",
        "absolute",
        "symlink",
        "crc",
    ],
)
def test_malformed_bundle_is_400(platform: Platform, data: bytes, problem: str) -> None:
    answer = platform.request(
        "POST", "/system/bundles", content=data, headers={"content-type": "application/zip"}
    )
    assert answer.status_code == 400, answer.text
    assert problem in answer.json()["error"]
    assert answer.json()["field"] == "bundle"


# -- invoking -----------------------------------------------------------------------------


def test_unknown_function_is_404(platform: Platform) -> None:
    for target in ("no-such-fn", "no-such-fn.default", "no-such-fn.other-ns", "no-such/sub"):
        answer = platform.invoke(target)
        assert answer.status_code == 404, target
        assert "not found" in answer.text
    assert platform.get("/system/function/no-such-fn").status_code == 404
    assert platform.get("/system/logs", params={"name": "no-such-fn"}).status_code == 404


def test_body_over_max_body_is_413(platform: Platform, unique_name) -> None:
    name = unique_name("maxbody")
    platform.deploy(name, FAULTY, {"limits": {"max_body": "1Ki"}})
    exact = platform.invoke(name, b"x" * 1024)
    assert exact.status_code == 200 and exact.json()["size"] == 1024
    over = platform.invoke(name, b"x" * 1025)
    assert over.status_code == 413
    assert "max_body (1024 bytes)" in over.text

    def chunks():  # no content-length: the limit must hold while streaming
        for _ in range(8):
            yield b"y" * 512

    streamed = platform.invoke(name, chunks())
    assert streamed.status_code == 413
    assert platform.invoke(name, b"small").status_code == 200


def test_handler_exception_is_500_with_traceback_in_logs(platform: Platform, unique_name) -> None:
    name = unique_name("raises")
    platform.deploy(name, FAULTY)
    answer = platform.invoke(name, params={"mode": "raise", "tag": "tag-5521"})
    assert answer.status_code == 500
    assert answer.text == "function raised ValueError: boom tag-5521"

    def logged() -> str | None:
        out = platform.cli("logs", name).stdout.decode()
        return out if "ValueError: boom tag-5521" in out else None

    out = wait_until(logged, timeout=10, what="the traceback in nfaas logs")
    assert "Traceback (most recent call last)" in out
    assert 'raise ValueError("boom "' in out

    odd = platform.invoke(name, params={"mode": "unserialisable"})
    assert odd.status_code == 500
    assert odd.text.startswith("function raised TypeError")
    fine = platform.invoke(name)  # the instance survives a raising handler
    assert fine.status_code == 200
    assert len(platform.status(name)["instances"]) == 1


def test_timeout_is_504_and_instance_replaced(platform: Platform, unique_name) -> None:
    name = unique_name("timeout")
    platform.deploy(name, FAULTY, {"limits": {"timeout": "1s"}})
    before = platform.invoke(name).json()

    started = time.monotonic()
    slow = platform.invoke(name, params={"mode": "sleep", "s": "5"})
    elapsed = time.monotonic() - started
    assert slow.status_code == 504
    assert slow.text == "function exceeded its timeout of 1s"
    assert 0.9 <= elapsed < 5.0

    assert before["instance"] not in {i["id"] for i in platform.status(name)["instances"]}
    wait_until(lambda: pid_gone(before["pid"]), timeout=5, what="the timed-out instance to die")
    after = platform.invoke(name)
    assert after.status_code == 200
    assert after.json()["instance"] != before["instance"]
    assert after.json()["pid"] != before["pid"]
    platform.wait_for_log(name, "request exceeded the timeout; replacing the instance")


def _slow_call(platform: Platform, name: str, seconds: float) -> tuple[threading.Thread, list]:
    answers: list[httpx.Response] = []
    thread = threading.Thread(
        target=lambda: answers.append(
            platform.invoke(name, params={"mode": "sleep", "s": str(seconds)})
        )
    )
    thread.start()
    return thread, answers


def test_worker_killed_mid_request_is_502_then_recovers(platform: Platform, unique_name) -> None:
    name = unique_name("sigkill")
    platform.deploy(name, FAULTY, {"limits": {"timeout": "10s"}})
    assert platform.invoke(name).status_code == 200  # a warm instance that has served
    thread, answers = _slow_call(platform, name, 5)
    try:
        status = wait_until(
            lambda: (s := platform.status(name))["inflight"] == 1 and s, timeout=5, what="inflight"
        )
        pid = status["instances"][0]["pid"]
        os.kill(pid, signal.SIGKILL)
    finally:
        thread.join(20)
    (answer,) = answers
    assert answer.status_code == 502
    assert answer.text.startswith("function instance died during the request")

    following = platform.invoke(name)
    assert following.status_code == 200, following.text
    assert following.json()["pid"] != pid
    platform.wait_for_log(name, "instance killed by SIGKILL")


def test_worker_killed_during_first_request_next_succeeds(platform: Platform, unique_name) -> None:
    name = unique_name("sigkill-cold")
    platform.deploy(name, FAULTY, {"limits": {"timeout": "10s"}})
    thread, answers = _slow_call(platform, name, 5)  # the instance's very first request
    try:
        status = wait_until(
            lambda: (s := platform.status(name))["inflight"] == 1 and s, timeout=5, what="inflight"
        )
        os.kill(status["instances"][0]["pid"], signal.SIGKILL)
    finally:
        thread.join(20)
    assert answers[0].status_code == 502
    following = platform.invoke(name)
    assert following.status_code == 200, following.text


def test_import_error_accepted_then_500_and_last_error(platform: Platform, unique_name) -> None:
    name = unique_name("importerr")
    deployed = platform.deploy(
        name, "import nfaas_no_such_module_xyz\n\ndef handle(e, c):\n    pass\n"
    )
    assert deployed["name"] == name  # the deploy itself is accepted (202)
    answer = platform.invoke(name)
    assert answer.status_code == 500
    assert answer.text == (
        "function failed to load: ModuleNotFoundError: No module named 'nfaas_no_such_module_xyz'"
    )
    assert int(answer.headers["retry-after"]) >= 1

    status = platform.status(name)
    assert "ModuleNotFoundError" in status["last_error"]
    assert status["replicas"] == 0
    assert status["cold_starts"][-1]["error"] == status["last_error"]
    described = platform.cli("describe", name)
    assert "last error: ModuleNotFoundError" in " ".join(described.stdout.decode().split())
    platform.wait_for_log(name, "Traceback (most recent call last)")

    missing_handle = unique_name("nohandle")
    platform.deploy(missing_handle, "x = 1\n")
    answer = platform.invoke(missing_handle)
    assert answer.status_code == 500
    assert "does not define a callable handle" in answer.text


def test_crash_loop_backs_off(platform: Platform, unique_name) -> None:
    name = unique_name("crashloop")
    platform.deploy(name, "import os\n\nos._exit(1)\n")
    codes = []
    started = time.monotonic()
    while time.monotonic() - started < 1.2:
        answer = platform.invoke(name)
        codes.append(answer.status_code)
        assert answer.status_code in (500, 503), answer.text
        assert int(answer.headers["retry-after"]) >= 1
        time.sleep(0.05)
    status = platform.status(name)
    attempts = len(status["cold_starts"])
    assert len(codes) >= 8
    assert 1 <= attempts <= 3, f"{attempts} start attempts for {len(codes)} requests"
    assert all(r["error"] for r in status["cold_starts"])
    assert status["last_error"]
    assert status["replicas"] == 0
    assert status["crash_loop_retry_in"] > 0
    platform.wait_for_log(name, "next attempt in")


def test_overload_is_429_with_retry_after(platform: Platform, unique_name) -> None:
    name = unique_name("overload")
    platform.deploy(
        name,
        FAULTY,
        {"scale": {"max": 1, "target_concurrency": 1}, "limits": {"timeout": "2s"}},
    )
    assert platform.invoke(name).status_code == 200  # warm: one instance, one slot
    results: list[tuple[int, float, str | None]] = []
    lock = threading.Lock()

    def call() -> None:
        began = time.monotonic()
        with httpx.Client(base_url=platform.url, timeout=30) as client:
            answer = client.post(
                f"/function/{name}",
                params={"mode": "sleep", "s": "1.5"},
                headers={"authorization": f"Bearer {platform.token}"},
            )
        with lock:
            results.append(
                (answer.status_code, time.monotonic() - began, answer.headers.get("retry-after"))
            )

    threads = [threading.Thread(target=call) for _ in range(4)]
    for thread in threads:
        thread.start()
        time.sleep(0.02)
    for thread in threads:
        thread.join(30)
    codes = sorted(code for code, _, _ in results)
    assert set(codes) == {200, 429}, results
    assert codes.count(200) >= 1 and codes.count(429) >= 1, results
    for code, elapsed, retry_after in results:
        if code == 429:
            assert retry_after == "2"  # max(1, min(timeout, 30))
            assert elapsed >= 1.9  # it waited for the function's timeout first
    assert platform.describe(name)["replicas"] == 1  # max holds


BAD_RESPONSES = """
def handle(event, context):
    case = event.query["case"]
    if case == "content-length":
        return {"statusCode": 200, "headers": {"content-length": "100"}, "body": "ok"}
    if case == "status-1000":
        return {"statusCode": 1000, "body": "x"}
    if case == "status-99":
        return {"statusCode": 99, "body": "x"}
    if case == "non-latin-1-header":
        return {"statusCode": 200, "headers": {"x-name": "caf\\u00e9 \\u2615"}, "body": "x"}
    if case == "crlf-in-header":
        return {"statusCode": 200, "headers": {"x-a": "b\\r\\nx-injected: 1"}, "body": "x"}
    return "fine"
"""


@pytest.fixture(scope="module")
def bad_responses(platform: Platform) -> str:
    platform.deploy("bad-responses", BAD_RESPONSES, {"scale": {"idle_timeout": "30s"}})
    return "bad-responses"


@pytest.mark.parametrize(
    "case",
    ["content-length", "status-1000", "status-99", "non-latin-1-header", "crlf-in-header"],
)
def test_invalid_handler_response_is_a_clean_502(
    platform: Platform, bad_responses: str, case: str
) -> None:
    try:
        answer = platform.invoke(bad_responses, params={"case": case}, timeout=5)
    except httpx.HTTPError as exc:
        pytest.fail(f"no complete HTTP response: {exc!r}")
    finally:
        assert platform.invoke(bad_responses, params={"case": "ok"}).text == "fine"
    assert "x-injected" not in answer.headers
    # Either a repaired response (the gateway computing its own framing) or a 502.
    if case == "content-length":
        assert (answer.status_code, answer.text) in ((200, "ok"), (502, answer.text))
    else:
        assert answer.status_code == 502, (answer.status_code, answer.text)
