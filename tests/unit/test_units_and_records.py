"""Sizes, durations, cold-start records, handler responses and bundle checks."""

from __future__ import annotations

import contextlib
import io
import zipfile

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nfaas.control.bundles import BundleError, check_archive
from nfaas.core.units import parse_duration, parse_size
from nfaas.node.coldstart import ColdStart, percentiles
from nfaas.worker.handler_io import to_response


@pytest.mark.parametrize(
    ("text", "size"),
    [("128Mi", 128 * 1024**2), ("1G", 10**9), ("512k", 512_000), ("1Ki", 1024), (42, 42), ("7", 7)],
)
def test_sizes(text: object, size: int) -> None:
    assert parse_size(text) == size


@pytest.mark.parametrize(
    ("text", "seconds"), [("500ms", 0.5), ("30s", 30), ("5m", 300), (2, 2.0), ("1h", 3600)]
)
def test_durations(text: object, seconds: float) -> None:
    assert parse_duration(text) == seconds


@given(st.one_of(st.text(), st.integers(), st.floats(), st.booleans(), st.none()))
def test_parsers_raise_only_value_errors(value: object) -> None:
    for parse in (parse_size, parse_duration):
        with contextlib.suppress(ValueError):
            parse(value)


def test_cold_start_phases_are_consecutive_durations() -> None:
    record = ColdStart(
        "i",
        "request",
        accepted=1.0,
        scheduled=1.001,
        spawned=1.003,
        shipped=1.004,
        loaded=1.006,
        ready=1.0061,
        first_response=1.008,
    )
    durations = record.durations()
    assert list(durations) == [
        "scheduled",
        "spawned",
        "shipped",
        "loaded",
        "ready",
        "first_response",
        "total",
    ]
    assert durations["total"] == pytest.approx(0.008)
    assert sum(v for k, v in durations.items() if k != "total") == pytest.approx(0.008)
    stats = percentiles([record, record])
    assert stats["total"]["p50"] == pytest.approx(8.0)
    assert stats["total"]["n"] == 2


def test_incomplete_records_are_left_out_of_percentiles() -> None:
    assert percentiles([ColdStart("i", "request", accepted=1.0, scheduled=1.1)]) == {}


@pytest.mark.parametrize(
    ("value", "status", "content_type", "body"),
    [
        ("hi", 200, "text/plain; charset=utf-8", b"hi"),
        (b"\x00", 200, "application/octet-stream", b"\x00"),
        ({"a": 1}, 200, "application/json", b'{"a":1}'),
        ([1, 2], 200, "application/json", b"[1,2]"),
        ({"statusCode": 201, "body": "made"}, 201, "text/plain; charset=utf-8", b"made"),
        ({"statusCode": 404}, 404, "text/plain; charset=utf-8", b""),
    ],
)
def test_handler_return_values(value: object, status: int, content_type: str, body: bytes) -> None:
    got_status, headers, got_body = to_response(value)
    assert (got_status, dict(headers)["content-type"], got_body) == (status, content_type, body)


def test_explicit_content_type_wins() -> None:
    _, headers, _ = to_response(
        {"statusCode": 200, "body": "<p>", "headers": {"Content-Type": "text/html"}}
    )
    assert headers == [("Content-Type", "text/html")]


def _zip(entries: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not a zip", "not a valid zip"),
        (_zip({"handler.py": b"", "../evil": b""}), "outside the bundle"),
        (_zip({"handler.py": b"", "/etc/x": b""}), "outside the bundle"),
    ],
)
def test_bad_bundles_are_named(data: bytes, message: str) -> None:
    with pytest.raises(BundleError, match=message):
        check_archive(data)


def test_good_bundle_passes() -> None:
    check_archive(_zip({"handler.py": b"def handle(e, c):\n    return 'x'\n"}))
