"""cv2x: receive C-V2X messages shaped like ETSI ITS CAMs and DENMs, JSON-encoded.

CAM (Cooperative Awareness Message, ETSI EN 302 637-2)::

    {"type": "cam", "station_id": 1001, "generation_time_ms": 1714564800000,
     "position": {"lat": 48.1374, "lon": 11.5755}, "speed_mps": 13.9, "heading_deg": 90.0,
     "station_type": "passengerCar"}

is acknowledged. When the request carries ``x-sent-at-ms`` (sender clock, Unix epoch ms), the
reply gives the message's age on arrival and ``stale: true`` if it is older than the C-V2X
end-to-end latency budget of 100 ms (env ``LATENCY_BUDGET_MS`` overrides it); without the
header, ``age_ms`` and ``stale`` are null.

DENM (Decentralized Environmental Notification Message, ETSI EN 302 637-3)::

    {"type": "denm", "station_id": 2002, "detection_time_ms": 1714564800000,
     "event_position": {"lat": 48.1374, "lon": 11.5755}, "cause_code": 2,
     "sub_cause_code": 0, "relevance_radius_m": 500, "validity_s": 600}

becomes a warning: the event with its cause name, the expiry time (detection + validity), and
the lat/lon bounding box of the relevance circle. ``sub_cause_code`` defaults to 0
(unavailable) and ``validity_s`` to 600 s, as in the standard. A DENM for a (station_id,
cause_code) pair that is still active is reported as ``"update"``, otherwise as ``"new"``.

Units follow the JSON field names (degrees, m/s, m, s, ms) rather than the ASN.1 encodings
(0.1 microdegree, 0.01 m/s, ...). Times are Unix epoch milliseconds. Errors: 400 with
``{"error": ..., "field": ...}``; 405 for any method but POST. Standard library only.
"""

from __future__ import annotations

import json
import math
import threading
import time
from datetime import UTC, datetime, timedelta

_JSON = {"content-type": "application/json"}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

DEFAULT_LATENCY_BUDGET_MS = 100  # 3GPP TS 22.185 / ETSI: 100 ms for V2X safety messages
MAX_STATION_ID = 4_294_967_295  # StationID ::= INTEGER (0..4294967295)
MAX_TIME_MS = 4_102_444_800_000  # 2100-01-01T00:00:00Z; later times are surely an error
MAX_SPEED_MPS = 163.82  # SpeedValue 0..16382 in 0.01 m/s (16383 = unavailable)
MAX_RELEVANCE_RADIUS_M = 100_000.0
MAX_VALIDITY_S = 86_400.0  # ValidityDuration ::= INTEGER (0..86400)
DEFAULT_VALIDITY_S = 600  # the DENM default validity
EARTH_RADIUS_M = 6_371_008.8  # mean Earth radius (IUGG); a sphere is plenty for a warning area

# StationType (ETSI TS 102 894-2, ITS-Container v2).
STATION_TYPES = {
    name.lower(): (name, code)
    for name, code in (
        ("unknown", 0),
        ("pedestrian", 1),
        ("cyclist", 2),
        ("moped", 3),
        ("motorcycle", 4),
        ("passengerCar", 5),
        ("bus", 6),
        ("lightTruck", 7),
        ("heavyTruck", 8),
        ("trailer", 9),
        ("specialVehicles", 10),
        ("tram", 11),
        ("roadSideUnit", 15),
    )
}

# CauseCodeType (ETSI TS 102 894-2, ITS-Container v2): code -> (ASN.1 name, description).
CAUSE_CODES = {
    1: ("trafficCondition", "Traffic condition (queue or jam)"),
    2: ("accident", "Accident"),
    3: ("roadworks", "Roadworks"),
    5: ("impassability", "Road impassable"),
    6: ("adverseWeatherCondition-Adhesion", "Slippery road (reduced adhesion)"),
    7: ("aquaplaning", "Aquaplaning risk"),
    9: ("hazardousLocation-SurfaceCondition", "Hazardous road surface"),
    10: ("hazardousLocation-ObstacleOnTheRoad", "Obstacle on the road"),
    11: ("hazardousLocation-AnimalOnTheRoad", "Animal on the road"),
    12: ("humanPresenceOnTheRoad", "People on the road"),
    14: ("wrongWayDriving", "Wrong-way driver"),
    15: ("rescueAndRecoveryWorkInProgress", "Rescue and recovery work in progress"),
    17: ("adverseWeatherCondition-ExtremeWeatherCondition", "Extreme weather"),
    18: ("adverseWeatherCondition-Visibility", "Reduced visibility"),
    19: ("adverseWeatherCondition-Precipitation", "Heavy precipitation"),
    26: ("slowVehicle", "Slow vehicle"),
    27: ("dangerousEndOfQueue", "Dangerous end of queue"),
    91: ("vehicleBreakdown", "Vehicle breakdown"),
    92: ("postCrash", "Vehicle involved in a crash"),
    93: ("humanProblem", "Driver or occupant in difficulty"),
    94: ("stationaryVehicle", "Stationary vehicle"),
    95: ("emergencyVehicleApproaching", "Emergency vehicle approaching"),
    96: ("hazardousLocation-DangerousCurve", "Dangerous curve"),
    97: ("collisionRisk", "Collision risk"),
    98: ("signalViolation", "Signal violation"),
    99: ("dangerousSituation", "Dangerous situation"),
}

# Active DENMs: (station_id, cause_code) -> expiry time (epoch ms). This state lives in the
# memory of one warm instance only: it is lost when the instance is scaled to zero or
# restarted, and each replica has its own (stack.yml pins cv2x to one instance for that
# reason). A production deployment would keep it in a shared store (e.g. a key-value bucket
# on the bus). The lock makes it safe under concurrent invocations in one process.
_active: dict[tuple[int, int], int] = {}
_active_lock = threading.Lock()
MAX_ACTIVE = 10_000


class BadField(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _response(status: int, body: object, headers: dict | None = None) -> dict:
    return {"statusCode": status, "body": json.dumps(body), "headers": {**_JSON, **(headers or {})}}


def _kind(value: object) -> str:
    """The JSON name of a decoded value's type, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not valid JSON")


def _parse_body(event: object) -> dict:
    body = getattr(event, "body", None) or b""
    try:
        text = body if isinstance(body, str) else bytes(body).decode("utf-8-sig")
    except (TypeError, UnicodeDecodeError):
        raise BadField("body", "body is not valid UTF-8") from None
    if not text.strip():
        raise BadField("body", "empty body: expected a JSON object")
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise BadField("body", "invalid JSON: nested too deeply") from None
    except ValueError as exc:
        raise BadField("body", f"invalid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise BadField("body", f"expected a JSON object, got {_kind(data)}")
    return data


def _field(obj: dict, key: str, prefix: str = "") -> tuple[object, str]:
    name = f"{prefix}{key}"
    if key not in obj:
        raise BadField(name, "missing required field")
    return obj[key], name


def _integer(obj: dict, key: str, lo: int, hi: int, default: int | None = None) -> int:
    if default is not None and key not in obj:
        return default
    value, name = _field(obj, key)
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadField(name, f"expected an integer, got {_kind(value)}")
    if not lo <= value <= hi:
        raise BadField(name, f"must be between {lo} and {hi}, got {_short(value)}")
    return value


def _number(
    obj: dict,
    key: str,
    lo: float,
    hi: float,
    prefix: str = "",
    default: float | None = None,
    lo_exclusive: bool = False,
) -> float:
    if default is not None and key not in obj:
        return default
    value, name = _field(obj, key, prefix)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadField(name, f"expected a number, got {_kind(value)}")
    # Comparisons are exact for ints of any size and false for NaN, so this also rejects
    # non-finite values (json.loads turns 1e999 into inf).
    if not ((lo < value if lo_exclusive else lo <= value) and value <= hi):
        low = f"greater than {lo:g}" if lo_exclusive else f"between {lo:g}"
        bound = f"{low} and at most {hi:g}" if lo_exclusive else f"{low} and {hi:g}"
        raise BadField(name, f"must be {bound}, got {_short(value)}")
    return value


def _position(obj: dict, key: str) -> dict:
    value, name = _field(obj, key)
    if not isinstance(value, dict):
        raise BadField(name, f"expected an object with lat and lon, got {_kind(value)}")
    lat = _number(value, "lat", -90.0, 90.0, prefix=f"{name}.")
    lon = _number(value, "lon", -180.0, 180.0, prefix=f"{name}.")
    return {"lat": lat, "lon": lon}


def _iso(ms: int) -> str:
    dt = _EPOCH + timedelta(milliseconds=ms)
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _latency_budget_ms(context: object) -> float:
    env = getattr(context, "env", None) or {}
    raw = env.get("LATENCY_BUDGET_MS") if hasattr(env, "get") else None
    if raw is None:
        return DEFAULT_LATENCY_BUDGET_MS
    try:
        budget = float(raw)
    except (TypeError, ValueError):
        budget = math.nan
    if not (math.isfinite(budget) and budget > 0):
        _log(context, f"ignoring LATENCY_BUDGET_MS={raw!r}; using {DEFAULT_LATENCY_BUDGET_MS}")
        return DEFAULT_LATENCY_BUDGET_MS
    return int(budget) if budget.is_integer() else budget


def _sent_at_ms(event: object) -> int | None:
    headers = getattr(event, "headers", None) or {}
    raw = headers.get("x-sent-at-ms") if hasattr(headers, "get") else None
    if raw is None:
        return None
    text = str(raw).strip()
    if not (text.isascii() and text.isdigit() and len(text) <= 15):
        raise BadField(
            "headers.x-sent-at-ms", f"expected Unix epoch milliseconds, got {_short(raw)}"
        )
    return int(text)


def handle_cam(msg: dict, event: object, context: object) -> dict:
    station_id = _integer(msg, "station_id", 0, MAX_STATION_ID)
    generation_time_ms = _integer(msg, "generation_time_ms", 0, MAX_TIME_MS)
    _position(msg, "position")
    _number(msg, "speed_mps", 0.0, MAX_SPEED_MPS)
    _number(msg, "heading_deg", 0.0, 360.0)
    station_type, name = _field(msg, "station_type")
    if not isinstance(station_type, str):
        raise BadField(name, f"expected a string, got {_kind(station_type)}")
    known = STATION_TYPES.get(station_type.strip().lower())
    if known is None:
        names = ", ".join(canonical for canonical, _ in STATION_TYPES.values())
        raise BadField(name, f"unknown station type {_short(station_type)} (known: {names})")
    sent_at = _sent_at_ms(event)
    budget = _latency_budget_ms(context)
    age = None if sent_at is None else _now_ms() - sent_at
    return {
        "type": "cam",
        "status": "ack",
        "station_id": station_id,
        "station_type": known[0],
        "generation_time_ms": generation_time_ms,
        "latency_budget_ms": budget,
        "age_ms": age,
        "stale": None if age is None else age > budget,
    }


def relevance_bbox(lat: float, lon: float, radius_m: float) -> dict:
    """The lat/lon box around a circle of ``radius_m`` on a spherical Earth.

    When the box crosses the antimeridian, ``lon_min > lon_max`` (the GeoJSON convention);
    when the circle reaches a pole, the box spans every longitude.
    """
    delta = radius_m / EARTH_RADIUS_M  # angular radius, radians
    lat_min = max(-90.0, lat - math.degrees(delta))
    lat_max = min(90.0, lat + math.degrees(delta))
    cos_lat = math.cos(math.radians(lat))
    if lat_min <= -90.0 or lat_max >= 90.0 or math.sin(delta) >= cos_lat:
        lon_min, lon_max = -180.0, 180.0
    else:
        dlon = math.degrees(math.asin(math.sin(delta) / cos_lat))
        lon_min, lon_max = lon - dlon, lon + dlon
        if lon_min < -180.0:
            lon_min += 360.0
        if lon_max > 180.0:
            lon_max -= 360.0
    return {
        "lat_min": round(lat_min, 7) + 0.0,
        "lat_max": round(lat_max, 7) + 0.0,
        "lon_min": round(lon_min, 7) + 0.0,
        "lon_max": round(lon_max, 7) + 0.0,
    }


def _track(key: tuple[int, int], expiry_ms: int, now_ms: int) -> str:
    """Record a DENM in the active table; "update" if one was active for ``key``."""
    with _active_lock:
        previous = _active.get(key)
        status = "update" if previous is not None and previous > now_ms else "new"
        if expiry_ms > now_ms:
            _active[key] = expiry_ms
        else:
            _active.pop(key, None)
        if len(_active) > MAX_ACTIVE:
            for stale in [k for k, expiry in _active.items() if expiry <= now_ms]:
                del _active[stale]
            if len(_active) > MAX_ACTIVE:  # still full: forget the ones expiring soonest
                by_expiry = sorted(_active, key=_active.__getitem__)
                for k in by_expiry[: len(_active) - MAX_ACTIVE]:
                    del _active[k]
    return status


def handle_denm(msg: dict) -> dict:
    station_id = _integer(msg, "station_id", 0, MAX_STATION_ID)
    detection_time_ms = _integer(msg, "detection_time_ms", 0, MAX_TIME_MS)
    position = _position(msg, "event_position")
    cause_code, name = _field(msg, "cause_code")
    if isinstance(cause_code, bool) or not isinstance(cause_code, int):
        raise BadField(name, f"expected an integer, got {_kind(cause_code)}")
    if cause_code not in CAUSE_CODES:
        raise BadField(name, f"unknown cause code {_short(cause_code)}")
    sub_cause_code = _integer(msg, "sub_cause_code", 0, 255, default=0)
    radius = _number(msg, "relevance_radius_m", 0.0, MAX_RELEVANCE_RADIUS_M, lo_exclusive=True)
    validity = _number(
        msg, "validity_s", 0.0, MAX_VALIDITY_S, default=DEFAULT_VALIDITY_S, lo_exclusive=True
    )
    expiry_ms = detection_time_ms + round(validity * 1000)
    now = _now_ms()
    status = _track((station_id, cause_code), expiry_ms, now)
    cause_name, description = CAUSE_CODES[cause_code]
    return {
        "type": "denm",
        "status": status,
        "warning": {
            "station_id": station_id,
            "event": {
                "cause_code": cause_code,
                "sub_cause_code": sub_cause_code,
                "cause": cause_name,
                "description": description,
                "position": position,
            },
            "detection_time_ms": detection_time_ms,
            "validity_s": validity,
            "expiry_time_ms": expiry_ms,
            "expires_at": _iso(expiry_ms),
            "expired": expiry_ms <= now,
            "relevance_radius_m": radius,
            "bbox": relevance_bbox(position["lat"], position["lon"], radius),
        },
    }


def _log(context: object, message: str) -> None:
    log = getattr(context, "log", None)
    if callable(log):
        log(message)


def handle(event, context):
    method = str(getattr(event, "method", "") or "").upper()
    if method != "POST":
        return _response(
            405,
            {"error": f"method {method or '?'} not allowed; use POST", "field": "method"},
            {"allow": "POST"},
        )
    try:
        msg = _parse_body(event)
        kind, name = _field(msg, "type")
        kind = kind.strip().lower() if isinstance(kind, str) else kind
        if kind == "cam":
            return _response(200, handle_cam(msg, event, context))
        if kind == "denm":
            return _response(200, handle_denm(msg))
        raise BadField(name, f"expected 'cam' or 'denm', got {_short(kind)}")
    except BadField as exc:
        _log(context, f"rejected: {exc.field}: {exc.message}")
        return _response(400, {"error": exc.message, "field": exc.field})
