"""iot-normaliser: turn a sensor reading in any common unit into one canonical shape.

Input (POST, JSON)::

    {"device_id": "greenhouse-7",
     "ts": "2024-05-01T14:00:00+02:00",          # ISO-8601, or epoch seconds / milliseconds
     "readings": [{"type": "temperature", "value": 71.6, "unit": "F"}, ...]}

``readings`` may also be a single reading object. Output::

    {"device_id": "greenhouse-7", "ts": "2024-05-01T12:00:00.000Z",
     "readings": [{"type": "temperature", "value": 22.0, "unit": "°C"}, ...]}

Canonical units: temperature °C (from C, F, K), humidity % (relative), pressure hPa (from Pa,
hPa, kPa, mbar, psi), co2 ppm. Values outside a physically plausible range are rejected, since
they come from a broken sensor or a wrong unit, not from the weather.

Timestamps: an ISO-8601 string without an offset is taken as UTC; a number (or a string of
digits) is epoch seconds, or epoch milliseconds when it is 1e11 or more (1e11 s is the year
5138, 1e11 ms is 1973). The output is always UTC with millisecond precision and a ``Z``.

Errors: 400 with ``{"error": ..., "field": ...}``, where ``field`` names the offending input,
e.g. ``readings[1].value``; 405 for any method but POST. Standard library only.
"""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta

_JSON = {"content-type": "application/json"}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_EPOCH_MS_THRESHOLD = 100_000_000_000
_PSI_IN_HPA = 68.94757293168  # 1 psi = 6894.757293168 Pa


def _same(x: float) -> float:
    return x


def _fahrenheit(x: float) -> float:
    return (x - 32.0) * 5.0 / 9.0


def _kelvin(x: float) -> float:
    return x - 273.15


# type -> canonical unit, {accepted unit spelling: converter to canonical}, plausible range,
# decimals kept. Unit spellings are matched case-insensitively with spaces and degree signs
# removed, so "°C", "degC", "c" and "Celsius" are all Celsius.
_TYPES = {
    "temperature": (
        "°C",
        {
            "c": _same,
            "degc": _same,
            "celsius": _same,
            "f": _fahrenheit,
            "degf": _fahrenheit,
            "fahrenheit": _fahrenheit,
            "k": _kelvin,
            "kelvin": _kelvin,
        },
        (-90.0, 70.0),
        2,
    ),
    "humidity": (
        "%",
        {"%": _same, "%rh": _same, "rh": _same, "percent": _same},
        (0.0, 100.0),
        1,
    ),
    "pressure": (
        "hPa",
        {
            "pa": lambda x: x / 100.0,
            "hpa": _same,
            "kpa": lambda x: x * 10.0,
            "mbar": _same,
            "mb": _same,
            "millibar": _same,
            "psi": lambda x: x * _PSI_IN_HPA,
        },
        (300.0, 1100.0),
        2,
    ),
    "co2": ("ppm", {"ppm": _same}, (0.0, 50000.0), 0),
}


class BadField(Exception):
    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


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


def _require(obj: dict, key: str, field: str) -> object:
    if key not in obj:
        raise BadField(field, "missing required field")
    return obj[key]


def _string(value: object, field: str) -> str:
    if not isinstance(value, str):
        raise BadField(field, f"expected a string, got {_kind(value)}")
    if not value.strip():
        raise BadField(field, "must not be empty")
    return value


def _number(value: object, field: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise BadField(field, f"expected a number, got {_kind(value)}")
    try:
        number = float(value)
    except OverflowError:
        number = math.inf
    if not math.isfinite(number):
        raise BadField(field, "number is out of range")
    return number


def _is_decimal(text: str) -> bool:
    whole, _, frac = text.partition(".")
    return text.isascii() and whole.isdigit() and (not frac or frac.isdigit()) and len(text) <= 32


def _epoch_to_datetime(value: float, field: str) -> datetime:
    if value < 0:
        raise BadField(field, "epoch timestamp must not be negative")
    ms = value if value >= _EPOCH_MS_THRESHOLD else value * 1000.0
    try:
        return _EPOCH + timedelta(milliseconds=round(ms))
    except OverflowError:
        raise BadField(field, "timestamp is out of range") from None


def _parse_ts(value: object, field: str = "ts") -> str:
    if isinstance(value, str) and _is_decimal(value.strip()):
        value = float(value.strip())
    if isinstance(value, int | float) and not isinstance(value, bool):
        dt = _epoch_to_datetime(_number(value, field), field)
    elif isinstance(value, str):
        try:
            dt = datetime.fromisoformat(value.strip())
            if dt.tzinfo is None:
                dt = dt.replace(tzinfo=UTC)  # no offset given: the reading is in UTC
            dt = dt.astimezone(UTC)
        except (ValueError, OverflowError):
            raise BadField(
                field, f"expected an ISO-8601 time or epoch seconds/ms, got {_short(value)}"
            ) from None
    else:
        raise BadField(field, f"expected an ISO-8601 string or epoch number, got {_kind(value)}")
    return dt.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _unit_key(unit: str) -> str:
    return unit.replace("°", "").replace("º", "").replace(" ", "").lower()


def _reading(raw: object, field: str) -> dict:
    if not isinstance(raw, dict):
        raise BadField(field, f"expected a reading object, got {_kind(raw)}")
    kind = _string(_require(raw, "type", f"{field}.type"), f"{field}.type").strip().lower()
    if kind not in _TYPES:
        raise BadField(f"{field}.type", f"unknown type {_short(kind)} (known: {', '.join(_TYPES)})")
    canonical, converters, (lo, hi), decimals = _TYPES[kind]
    value = _number(_require(raw, "value", f"{field}.value"), f"{field}.value")
    unit = _string(_require(raw, "unit", f"{field}.unit"), f"{field}.unit")
    convert = converters.get(_unit_key(unit))
    if convert is None:
        raise BadField(f"{field}.unit", f"unknown unit {_short(unit)} for {kind}")
    converted = convert(value)
    if not lo <= converted <= hi:
        raise BadField(
            f"{field}.value",
            f"{kind} {round(converted, decimals):g} {canonical} is outside the plausible "
            f"range {lo:g}..{hi:g} {canonical}",
        )
    rounded = round(converted) if decimals == 0 else round(converted, decimals) + 0.0
    return {"type": kind, "value": rounded, "unit": canonical}


def normalise(data: dict) -> dict:
    device_id = _string(_require(data, "device_id", "device_id"), "device_id")
    ts = _parse_ts(_require(data, "ts", "ts"))
    raw = _require(data, "readings", "readings")
    if isinstance(raw, dict):
        readings = [_reading(raw, "readings")]
    elif isinstance(raw, list):
        if not raw:
            raise BadField("readings", "must contain at least one reading")
        readings = [_reading(item, f"readings[{i}]") for i, item in enumerate(raw)]
    else:
        raise BadField("readings", f"expected a reading object or an array, got {_kind(raw)}")
    return {"device_id": device_id, "ts": ts, "readings": readings}


def handle(event, context):
    method = str(getattr(event, "method", "") or "").upper()
    if method != "POST":
        return _response(
            405,
            {"error": f"method {method or '?'} not allowed; use POST", "field": "method"},
            {"allow": "POST"},
        )
    try:
        return _response(200, normalise(_parse_body(event)))
    except BadField as exc:
        log = getattr(context, "log", None)
        if callable(log):
            log(f"rejected: {exc.field}: {exc.message}")
        return _response(400, {"error": exc.message, "field": exc.field})
