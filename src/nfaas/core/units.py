"""Parsing of sizes ("128Mi") and durations ("500ms") as they appear in manifests."""

from __future__ import annotations

import re

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]i?|[kmgt]i?|B)?\s*$")
_SIZE_FACTORS = {
    None: 1,
    "B": 1,
    "K": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "T": 1000**4,
    "Ki": 1024,
    "Mi": 1024**2,
    "Gi": 1024**3,
    "Ti": 1024**4,
}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*$")
_DURATION_FACTORS = {None: 1.0, "s": 1.0, "ms": 0.001, "m": 60.0, "h": 3600.0}


def parse_size(value: object) -> int:
    """Bytes from an int or a string such as "128Mi", "1G", "512k"."""
    if isinstance(value, bool):
        raise ValueError(f"expected a size such as 128Mi, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"size must not be negative, got {value}")
        return value
    if isinstance(value, str):
        match = _SIZE.match(value)
        if match:
            unit = match.group(2)
            if unit and unit[0].islower():
                unit = unit[0].upper() + unit[1:]
            number = float(match.group(1)) * _SIZE_FACTORS[unit]
            if number > 1 << 62:
                raise ValueError(f"size {value!r} is too large")
            return int(number)
    raise ValueError(f"expected a size such as 128Mi or 1000000, got {value!r}")


def parse_duration(value: object) -> float:
    """Seconds from a number or a string such as "500ms", "30s", "5m"."""
    if isinstance(value, bool):
        raise ValueError(f"expected a duration such as 30s, got {value!r}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"duration must not be negative, got {value}")
        return float(value)
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match:
            return float(match.group(1)) * _DURATION_FACTORS[match.group(2)]
    raise ValueError(f"expected a duration such as 500ms, 30s or 5m, got {value!r}")
