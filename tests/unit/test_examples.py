"""The example functions in examples/: exact outputs for good input, 400 + field for bad input.

Handlers are loaded by file path (the example folders are not packages) and called with fake
event/context objects, the way the python runtime calls them.
"""

from __future__ import annotations

import ast
import copy
import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType, SimpleNamespace

import pytest
import yaml

from nfaas.core.manifest import load_manifest
from nfaas.core.spec import validate_spec

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
HANDLER_DIRS = ("hello", "iot-normaliser", "cv2x")


def load_handler(directory: str) -> ModuleType:
    path = EXAMPLES / directory / "handler.py"
    name = "example_" + directory.replace("-", "_")
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


hello = load_handler("hello")
iot = load_handler("iot-normaliser")
cv2x = load_handler("cv2x")


def make_event(body: object = b"", method: str = "POST", headers: dict | None = None):
    if not isinstance(body, bytes | str):
        body = json.dumps(body).encode()
    return SimpleNamespace(body=body, headers=headers or {}, method=method, query={}, path="/")


def make_context(env: dict | None = None, name: str = "test"):
    logs: list[str] = []
    return SimpleNamespace(
        function_name=name,
        namespace="default",
        instance_id=f"{name}-0",
        env=env or {},
        log=logs.append,
        logs=logs,
    )


def call(module: ModuleType, body: object = b"", **kwargs):
    env = kwargs.pop("env", None)
    return module.handle(make_event(body, **kwargs), make_context(env))


def json_body(result: dict) -> object:
    assert result["headers"]["content-type"] == "application/json"
    return json.loads(result["body"])


def assert_bad(result: dict, field: str) -> dict:
    assert result["statusCode"] == 400, result
    body = json_body(result)
    assert body["field"] == field, body
    assert isinstance(body["error"], str) and body["error"]
    return body


# --- every handler -------------------------------------------------------------------------


@pytest.mark.parametrize("directory", HANDLER_DIRS)
def test_handlers_import_only_the_standard_library(directory):
    tree = ast.parse((EXAMPLES / directory / "handler.py").read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            imported.add(node.module.split(".")[0])
    assert imported - sys.stdlib_module_names == set()


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"   ",
        b"\xff\xfe\x00",
        b"not json",
        b"{",
        b"[",
        b"[" * 5000,
        b"null",
        b"42",
        b'"text"',
        b"[]",
        b"NaN",
        b"1e999",
        b'{"a": Infinity}',
        b"9" * 5000,
    ],
)
@pytest.mark.parametrize("module", [iot, cv2x], ids=["iot-normaliser", "cv2x"])
def test_json_handlers_reject_junk_bodies(module, body):
    assert_bad(call(module, body), "body")


@pytest.mark.parametrize("module", [iot, cv2x], ids=["iot-normaliser", "cv2x"])
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", ""])
def test_json_handlers_want_post(module, method):
    result = call(module, b"{}", method=method)
    assert result["statusCode"] == 405
    assert result["headers"]["allow"] == "POST"
    assert json_body(result)["field"] == "method"


@pytest.mark.parametrize("module", [iot, cv2x], ids=["iot-normaliser", "cv2x"])
def test_rejections_are_logged(module):
    context = make_context()
    module.handle(make_event(b"{"), context)
    assert len(context.logs) == 1 and context.logs[0].startswith("rejected: body:")


# --- hello ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "text"),
    [
        (b"nfaas", "Hello, nfaas!"),
        (b"", "Hello, world!"),
        (b"  \n", "Hello, world!"),
        (b"edge node\n", "Hello, edge node!"),
        ("str body", "Hello, str body!"),
        ("Zürich".encode(), "Hello, Zürich!"),
    ],
)
def test_hello(body, text):
    result = call(hello, body)
    assert result == {
        "statusCode": 200,
        "body": text,
        "headers": {"content-type": "text/plain; charset=utf-8"},
    }


def test_hello_missing_body_greets_the_world():
    event = SimpleNamespace(body=None, headers={}, method="GET", query={}, path="/")
    assert hello.handle(event, make_context())["body"] == "Hello, world!"


def test_hello_rejects_non_utf8():
    assert_bad(call(hello, b"\xff\xfe"), "body")


# --- iot-normaliser ------------------------------------------------------------------------

IOT_GOOD = {
    "device_id": "greenhouse-7",
    "ts": "2024-05-01T14:00:00+02:00",
    "readings": [
        {"type": "temperature", "value": 71.6, "unit": "F"},
        {"type": "humidity", "value": 45.25, "unit": "%RH"},
        {"type": "pressure", "value": 101325, "unit": "Pa"},
        {"type": "co2", "value": 612.4, "unit": "ppm"},
    ],
}


def test_iot_normalises_a_batch():
    result = call(iot, IOT_GOOD)
    assert result["statusCode"] == 200
    assert json_body(result) == {
        "device_id": "greenhouse-7",
        "ts": "2024-05-01T12:00:00.000Z",
        "readings": [
            {"type": "temperature", "value": 22.0, "unit": "°C"},
            {"type": "humidity", "value": 45.2, "unit": "%"},
            {"type": "pressure", "value": 1013.25, "unit": "hPa"},
            {"type": "co2", "value": 612, "unit": "ppm"},
        ],
    }


def test_iot_accepts_a_single_reading_object():
    body = {
        "device_id": "d1",
        "ts": 1714564800,
        "readings": {"type": "co2", "value": 400, "unit": "ppm"},
    }
    assert json_body(call(iot, body)) == {
        "device_id": "d1",
        "ts": "2024-05-01T12:00:00.000Z",
        "readings": [{"type": "co2", "value": 400, "unit": "ppm"}],
    }


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        ("2024-05-01T12:00:00Z", "2024-05-01T12:00:00.000Z"),
        ("2024-05-01T12:00:00.123456+00:00", "2024-05-01T12:00:00.123Z"),
        ("2024-05-01T08:30:00-03:30", "2024-05-01T12:00:00.000Z"),
        ("2024-05-01T12:00:00", "2024-05-01T12:00:00.000Z"),  # no offset: UTC
        ("2024-05-01", "2024-05-01T00:00:00.000Z"),
        (1714564800, "2024-05-01T12:00:00.000Z"),  # epoch seconds
        (1714564800.25, "2024-05-01T12:00:00.250Z"),
        (1714564800123, "2024-05-01T12:00:00.123Z"),  # epoch milliseconds
        ("1714564800", "2024-05-01T12:00:00.000Z"),
        (" 1714564800123 ", "2024-05-01T12:00:00.123Z"),
        (0, "1970-01-01T00:00:00.000Z"),
    ],
)
def test_iot_timestamps(ts, expected):
    body = {"device_id": "d", "ts": ts, "readings": [{"type": "co2", "value": 1, "unit": "ppm"}]}
    assert json_body(call(iot, body))["ts"] == expected


@pytest.mark.parametrize(
    ("kind", "value", "unit", "expected"),
    [
        ("temperature", 21.5, "C", {"type": "temperature", "value": 21.5, "unit": "°C"}),
        ("temperature", 21.5, "°C", {"type": "temperature", "value": 21.5, "unit": "°C"}),
        ("temperature", 21.5, "degC", {"type": "temperature", "value": 21.5, "unit": "°C"}),
        ("temperature", 32, "F", {"type": "temperature", "value": 0.0, "unit": "°C"}),
        ("temperature", 98.6, "°F", {"type": "temperature", "value": 37.0, "unit": "°C"}),
        ("temperature", 31.999, "F", {"type": "temperature", "value": 0.0, "unit": "°C"}),
        ("temperature", 273.15, "K", {"type": "temperature", "value": 0.0, "unit": "°C"}),
        ("temperature", 300, "kelvin", {"type": "temperature", "value": 26.85, "unit": "°C"}),
        ("Temperature", -89.9, "c", {"type": "temperature", "value": -89.9, "unit": "°C"}),
        ("humidity", 55.55, "%", {"type": "humidity", "value": 55.5, "unit": "%"}),
        ("humidity", 0, "rh", {"type": "humidity", "value": 0.0, "unit": "%"}),
        ("humidity", 100, "percent", {"type": "humidity", "value": 100.0, "unit": "%"}),
        ("pressure", 101325, "Pa", {"type": "pressure", "value": 1013.25, "unit": "hPa"}),
        ("pressure", 1013.25, "hPa", {"type": "pressure", "value": 1013.25, "unit": "hPa"}),
        ("pressure", 101.325, "kPa", {"type": "pressure", "value": 1013.25, "unit": "hPa"}),
        ("pressure", 998, "mbar", {"type": "pressure", "value": 998.0, "unit": "hPa"}),
        ("pressure", 14.696, "psi", {"type": "pressure", "value": 1013.25, "unit": "hPa"}),
        ("co2", 415.6, "ppm", {"type": "co2", "value": 416, "unit": "ppm"}),
        ("co2", 50000, "PPM", {"type": "co2", "value": 50000, "unit": "ppm"}),
    ],
)
def test_iot_unit_conversion(kind, value, unit, expected):
    body = {"device_id": "d", "ts": 0, "readings": [{"type": kind, "value": value, "unit": unit}]}
    result = call(iot, body)
    assert json_body(result)["readings"] == [expected]
    assert "-0.0" not in result["body"]


def _iot_with(reading: dict | None = None, **top) -> dict:
    body = copy.deepcopy(IOT_GOOD)
    if reading is not None:
        body["readings"][1] = reading
    for key, value in top.items():
        if value is _MISSING:
            del body[key]
        else:
            body[key] = value
    return body


_MISSING = object()


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (_iot_with(device_id=_MISSING), "device_id"),
        (_iot_with(device_id=7), "device_id"),
        (_iot_with(device_id=" "), "device_id"),
        (_iot_with(ts=_MISSING), "ts"),
        (_iot_with(ts="yesterday"), "ts"),
        (_iot_with(ts="2024-13-01T00:00:00Z"), "ts"),
        (_iot_with(ts=True), "ts"),
        (_iot_with(ts=None), "ts"),
        (_iot_with(ts=-5), "ts"),
        (_iot_with(ts=1e300), "ts"),
        (_iot_with(readings=_MISSING), "readings"),
        (_iot_with(readings="21C"), "readings"),
        (_iot_with(readings=[]), "readings"),
        (_iot_with(readings=[IOT_GOOD["readings"][0], 5]), "readings[1]"),
        (_iot_with({"value": 1, "unit": "C"}), "readings[1].type"),
        (_iot_with({"type": "lux", "value": 1, "unit": "lx"}), "readings[1].type"),
        (_iot_with({"type": ["temperature"], "value": 1, "unit": "C"}), "readings[1].type"),
        (_iot_with({"type": "temperature", "unit": "C"}), "readings[1].value"),
        (_iot_with({"type": "temperature", "value": "21", "unit": "C"}), "readings[1].value"),
        (_iot_with({"type": "temperature", "value": True, "unit": "C"}), "readings[1].value"),
        (_iot_with({"type": "temperature", "value": None, "unit": "C"}), "readings[1].value"),
        (_iot_with({"type": "temperature", "value": 10**400, "unit": "C"}), "readings[1].value"),
        (_iot_with({"type": "temperature", "value": 21}), "readings[1].unit"),
        (_iot_with({"type": "temperature", "value": 21, "unit": "R"}), "readings[1].unit"),
        (_iot_with({"type": "humidity", "value": 50, "unit": "C"}), "readings[1].unit"),
        (_iot_with({"type": "pressure", "value": 1, "unit": "bar"}), "readings[1].unit"),
        (_iot_with({"type": "co2", "value": 1, "unit": 5}), "readings[1].unit"),
        (_iot_with({"type": "temperature", "value": -90.01, "unit": "C"}), "readings[1].value"),
        (_iot_with({"type": "temperature", "value": 70.01, "unit": "C"}), "readings[1].value"),
        (_iot_with({"type": "temperature", "value": 200, "unit": "F"}), "readings[1].value"),
        (_iot_with({"type": "temperature", "value": -5, "unit": "K"}), "readings[1].value"),
        (_iot_with({"type": "humidity", "value": -0.1, "unit": "%"}), "readings[1].value"),
        (_iot_with({"type": "humidity", "value": 100.5, "unit": "%"}), "readings[1].value"),
        (_iot_with({"type": "pressure", "value": 299, "unit": "hPa"}), "readings[1].value"),
        (_iot_with({"type": "pressure", "value": 1013, "unit": "Pa"}), "readings[1].value"),
        (_iot_with({"type": "pressure", "value": 1101, "unit": "mbar"}), "readings[1].value"),
        (_iot_with({"type": "co2", "value": -1, "unit": "ppm"}), "readings[1].value"),
        (_iot_with({"type": "co2", "value": 50001, "unit": "ppm"}), "readings[1].value"),
        (
            {"device_id": "d", "ts": 0, "readings": {"type": "co2", "value": -1, "unit": "ppm"}},
            "readings.value",
        ),
    ],
)
def test_iot_rejects_bad_fields(body, field):
    assert_bad(call(iot, body), field)


def test_iot_range_error_names_the_value_and_range():
    body = _iot_with({"type": "temperature", "value": 200, "unit": "F"})
    assert assert_bad(call(iot, body), "readings[1].value") == {
        "error": "temperature 93.33 °C is outside the plausible range -90..70 °C",
        "field": "readings[1].value",
    }


# --- cv2x ----------------------------------------------------------------------------------

NOW_MS = 1_714_564_800_000  # 2024-05-01T12:00:00Z

CAM = {
    "type": "cam",
    "station_id": 1001,
    "generation_time_ms": NOW_MS - 20,
    "position": {"lat": 48.1374, "lon": 11.5755},
    "speed_mps": 13.9,
    "heading_deg": 90.0,
    "station_type": "passengerCar",
}

DENM = {
    "type": "denm",
    "station_id": 2002,
    "detection_time_ms": NOW_MS - 1000,
    "event_position": {"lat": 48.1374, "lon": 11.5755},
    "cause_code": 2,
    "sub_cause_code": 1,
    "relevance_radius_m": 500,
    "validity_s": 600,
}


@pytest.fixture(autouse=True)
def cv2x_clock(monkeypatch):
    """A fixed clock and an empty active-DENM table for every test."""
    clock = SimpleNamespace(now=NOW_MS)
    monkeypatch.setattr(cv2x, "_now_ms", lambda: clock.now)
    cv2x._active.clear()
    yield clock
    cv2x._active.clear()


def test_cam_ack_without_sent_at_header():
    result = call(cv2x, CAM)
    assert result["statusCode"] == 200
    assert json_body(result) == {
        "type": "cam",
        "status": "ack",
        "station_id": 1001,
        "station_type": "passengerCar",
        "generation_time_ms": NOW_MS - 20,
        "latency_budget_ms": 100,
        "age_ms": None,
        "stale": None,
    }


@pytest.mark.parametrize(
    ("age", "env", "stale"),
    [
        (40, None, False),
        (100, None, False),
        (101, None, True),
        (150, None, True),
        (-5, None, False),  # sender clock slightly ahead
        (150, {"LATENCY_BUDGET_MS": "200"}, False),
        (150, {"LATENCY_BUDGET_MS": "bogus"}, True),
    ],
)
def test_cam_latency_budget(age, env, stale):
    headers = {"x-sent-at-ms": str(NOW_MS - age)}
    body = json_body(call(cv2x, CAM, headers=headers, env=env))
    assert body["age_ms"] == age
    assert body["stale"] is stale
    assert body["latency_budget_ms"] == (200 if env == {"LATENCY_BUDGET_MS": "200"} else 100)


def test_cam_bad_budget_env_is_logged():
    context = make_context({"LATENCY_BUDGET_MS": "-1"})
    cv2x.handle(make_event(CAM), context)
    assert context.logs == ["ignoring LATENCY_BUDGET_MS='-1'; using 100"]


@pytest.mark.parametrize(
    ("given", "canonical"),
    [("PassengerCar", "passengerCar"), (" roadsideunit ", "roadSideUnit"), ("TRAM", "tram")],
)
def test_cam_station_type_is_case_insensitive(given, canonical):
    assert json_body(call(cv2x, {**CAM, "station_type": given}))["station_type"] == canonical


@pytest.mark.parametrize("value", ["soon", "-5", "1.5e12", "", "١٢٣"])
def test_cam_rejects_bad_sent_at_header(value):
    assert_bad(call(cv2x, CAM, headers={"x-sent-at-ms": value}), "headers.x-sent-at-ms")


def _with(base: dict, path: str, value: object) -> dict:
    """A deep copy of ``base`` with ``path`` ("a" or "a.b") set to value, or removed."""
    body = copy.deepcopy(base)
    *parents, key = path.split(".")
    target = body
    for parent in parents:
        target = target[parent]
    if value is _MISSING:
        del target[key]
    else:
        target[key] = value
    return body


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        ("type", _MISSING, "type"),
        ("type", "spatem", "type"),
        ("type", 2, "type"),
        ("station_id", _MISSING, "station_id"),
        ("station_id", -1, "station_id"),
        ("station_id", 2**32, "station_id"),
        ("station_id", "1001", "station_id"),
        ("station_id", True, "station_id"),
        ("station_id", 1001.0, "station_id"),
        ("generation_time_ms", _MISSING, "generation_time_ms"),
        ("generation_time_ms", -1, "generation_time_ms"),
        ("generation_time_ms", 1.5, "generation_time_ms"),
        ("position", _MISSING, "position"),
        ("position", [48.1, 11.5], "position"),
        ("position.lat", _MISSING, "position.lat"),
        ("position.lat", 90.5, "position.lat"),
        ("position.lat", "48.1", "position.lat"),
        ("position.lon", -180.5, "position.lon"),
        ("position.lon", None, "position.lon"),
        ("speed_mps", _MISSING, "speed_mps"),
        ("speed_mps", -0.1, "speed_mps"),
        ("speed_mps", 163.83, "speed_mps"),
        ("speed_mps", 10**400, "speed_mps"),
        ("heading_deg", 360.1, "heading_deg"),
        ("heading_deg", -1, "heading_deg"),
        ("station_type", _MISSING, "station_type"),
        ("station_type", "spaceship", "station_type"),
        ("station_type", 5, "station_type"),
    ],
)
def test_cam_rejects_bad_fields(path, value, field):
    assert_bad(call(cv2x, _with(CAM, path, value)), field)


@pytest.mark.parametrize(
    ("path", "value"),
    [("speed_mps", 0), ("speed_mps", 163.82), ("heading_deg", 360), ("position.lat", -90)],
)
def test_cam_accepts_range_edges(path, value):
    assert call(cv2x, _with(CAM, path, value))["statusCode"] == 200


EXPECTED_DENM_WARNING = {
    "station_id": 2002,
    "event": {
        "cause_code": 2,
        "sub_cause_code": 1,
        "cause": "accident",
        "description": "Accident",
        "position": {"lat": 48.1374, "lon": 11.5755},
    },
    "detection_time_ms": NOW_MS - 1000,
    "validity_s": 600,
    "expiry_time_ms": NOW_MS + 599_000,
    "expires_at": "2024-05-01T12:09:59.000Z",
    "expired": False,
    "relevance_radius_m": 500,
    "bbox": {
        "lat_min": 48.1329034,
        "lat_max": 48.1418966,
        "lon_min": 11.568762,
        "lon_max": 11.582238,
    },
}


def test_denm_new_then_update():
    first = call(cv2x, DENM)
    assert first["statusCode"] == 200
    assert json_body(first) == {"type": "denm", "status": "new", "warning": EXPECTED_DENM_WARNING}
    second = json_body(call(cv2x, DENM))
    assert second == {"type": "denm", "status": "update", "warning": EXPECTED_DENM_WARNING}


def test_denm_state_is_keyed_by_station_and_cause(cv2x_clock):
    assert json_body(call(cv2x, DENM))["status"] == "new"
    assert json_body(call(cv2x, {**DENM, "cause_code": 94}))["status"] == "new"
    assert json_body(call(cv2x, {**DENM, "station_id": 2003}))["status"] == "new"
    assert json_body(call(cv2x, {**DENM, "sub_cause_code": 5}))["status"] == "update"
    assert set(cv2x._active) == {(2002, 2), (2002, 94), (2003, 2)}


def test_denm_after_expiry_is_new_again(cv2x_clock):
    assert json_body(call(cv2x, DENM))["status"] == "new"
    cv2x_clock.now = NOW_MS + 600_000  # past the first one's expiry
    repeat = json_body(call(cv2x, {**DENM, "detection_time_ms": cv2x_clock.now}))
    assert repeat["status"] == "new"
    assert repeat["warning"]["expired"] is False


def test_denm_already_expired_is_not_tracked():
    old = {**DENM, "detection_time_ms": NOW_MS - 700_000}
    body = json_body(call(cv2x, old))
    assert body["status"] == "new"
    assert body["warning"]["expired"] is True
    assert cv2x._active == {}
    assert json_body(call(cv2x, old))["status"] == "new"


def test_denm_defaults_sub_cause_and_validity():
    body = {
        key: value for key, value in DENM.items() if key not in ("sub_cause_code", "validity_s")
    }
    warning = json_body(call(cv2x, body))["warning"]
    assert warning["event"]["sub_cause_code"] == 0
    assert warning["validity_s"] == 600
    assert warning["expiry_time_ms"] == DENM["detection_time_ms"] + 600_000


def test_denm_cause_names():
    for code, (name, description) in cv2x.CAUSE_CODES.items():
        event = json_body(call(cv2x, {**DENM, "cause_code": code}))["warning"]["event"]
        assert (event["cause_code"], event["cause"], event["description"]) == (
            code,
            name,
            description,
        )
    assert cv2x.CAUSE_CODES[14][0] == "wrongWayDriving"
    assert cv2x.CAUSE_CODES[97][0] == "collisionRisk"


def test_denm_table_is_bounded(monkeypatch):
    monkeypatch.setattr(cv2x, "MAX_ACTIVE", 5)
    for station in range(12):
        validity = 60 + station  # later stations expire later
        call(cv2x, {**DENM, "station_id": station, "validity_s": validity})
    assert len(cv2x._active) == 5
    assert {station for station, _ in cv2x._active} == {7, 8, 9, 10, 11}


@pytest.mark.parametrize(
    ("path", "value", "field"),
    [
        ("station_id", _MISSING, "station_id"),
        ("station_id", -2, "station_id"),
        ("detection_time_ms", _MISSING, "detection_time_ms"),
        ("detection_time_ms", "now", "detection_time_ms"),
        ("detection_time_ms", 10**13, "detection_time_ms"),
        ("event_position", _MISSING, "event_position"),
        ("event_position", "48.1,11.5", "event_position"),
        ("event_position.lat", -91, "event_position.lat"),
        ("event_position.lon", 181, "event_position.lon"),
        ("event_position.lon", _MISSING, "event_position.lon"),
        ("cause_code", _MISSING, "cause_code"),
        ("cause_code", 0, "cause_code"),
        ("cause_code", 4, "cause_code"),
        ("cause_code", 256, "cause_code"),
        ("cause_code", "accident", "cause_code"),
        ("cause_code", 2.0, "cause_code"),
        ("sub_cause_code", -1, "sub_cause_code"),
        ("sub_cause_code", 256, "sub_cause_code"),
        ("sub_cause_code", None, "sub_cause_code"),
        ("relevance_radius_m", _MISSING, "relevance_radius_m"),
        ("relevance_radius_m", 0, "relevance_radius_m"),
        ("relevance_radius_m", -10, "relevance_radius_m"),
        ("relevance_radius_m", 100_001, "relevance_radius_m"),
        ("relevance_radius_m", "500m", "relevance_radius_m"),
        ("validity_s", 0, "validity_s"),
        ("validity_s", 86_401, "validity_s"),
        ("validity_s", False, "validity_s"),
    ],
)
def test_denm_rejects_bad_fields(path, value, field):
    assert_bad(call(cv2x, _with(DENM, path, value)), field)
    assert cv2x._active == {}


def test_denm_unknown_cause_error():
    assert assert_bad(call(cv2x, {**DENM, "cause_code": 4}), "cause_code") == {
        "error": "unknown cause code 4",
        "field": "cause_code",
    }


@pytest.mark.parametrize(
    ("lat", "lon", "radius", "expected"),
    [
        # 1 km at the equator: 1000 m / 6371008.8 m in degrees both ways.
        (0.0, 0.0, 1000, (-0.0089932, 0.0089932, -0.0089932, 0.0089932)),
        # Across the antimeridian: lon_min > lon_max.
        (0.0, 179.999, 1000, (-0.0089932, 0.0089932, 179.9900068, -179.9920068)),
        (0.0, -179.999, 1000, (-0.0089932, 0.0089932, 179.9920068, -179.9900068)),
        # Reaching the pole: every longitude.
        (89.99, 10.0, 5000, (89.945034, 90.0, -180.0, 180.0)),
        (-89.999, 10.0, 500, (-90.0, -89.9945034, -180.0, 180.0)),
    ],
)
def test_relevance_bbox(lat, lon, radius, expected):
    box = cv2x.relevance_bbox(lat, lon, radius)
    assert (box["lat_min"], box["lat_max"], box["lon_min"], box["lon_max"]) == expected


# --- stack.yml -----------------------------------------------------------------------------

ENTRY_KEYS = {"handler", "runtime", "isolation", "scale", "limits", "env", "labels", "public"}


def test_stack_yml_deploys_the_three_examples():
    stack = yaml.safe_load((EXAMPLES / "stack.yml").read_text())
    assert set(stack) == {"functions"}
    functions = stack["functions"]
    assert set(functions) == set(HANDLER_DIRS)
    specs = {}
    for name, entry in functions.items():
        assert set(entry) == ENTRY_KEYS
        assert set(entry["scale"]) == {"min", "max", "target_concurrency", "idle_timeout"}
        assert set(entry["limits"]) == {"memory", "cpu", "timeout", "max_body"}
        assert (EXAMPLES / entry["handler"] / "handler.py").is_file()
        specs[name] = validate_spec(name, entry, extra_keys={"handler"})

    assert specs["hello"].public is True
    assert specs["hello"].scale.max == 4
    assert specs["hello"].scale.idle_timeout == 60.0
    for name in ("iot-normaliser", "cv2x"):
        spec = specs[name]
        assert spec.public is False
        assert spec.limits.memory == 128 * 1024**2
        assert spec.limits.timeout == 5.0
        assert spec.limits.max_body == 64 * 1024
    assert specs["cv2x"].env == {"LATENCY_BUDGET_MS": "100"}


def test_stack_yml_loads_with_the_platform_manifest_loader():
    manifest = load_manifest(EXAMPLES / "stack.yml")
    assert {name: fn.handler_dir for name, fn in manifest.functions.items()} == {
        name: EXAMPLES / name for name in HANDLER_DIRS
    }
