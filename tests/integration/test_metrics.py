"""/metrics: OpenFaaS's gateway series plus cold starts and their phases."""

from __future__ import annotations

from platform_harness import Platform
from prometheus_client.parser import text_string_to_metric_families

HANDLER = """
def handle(event, context):
    if event.query.get("fail"):
        raise RuntimeError("asked to")
    return "ok"
"""
PHASES = ("scheduled", "spawned", "shipped", "loaded", "ready", "first_response")


def samples(platform: Platform) -> list:
    answer = platform.get("/metrics", token=None)  # scraping needs no token
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/plain")
    return [s for family in text_string_to_metric_families(answer.text) for s in family.samples]


def value(found: list, name: str, **labels: str) -> float | None:
    for sample in found:
        if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
            return float(sample.value)
    return None


def test_cold_start_and_invocation_series(platform: Platform, unique_name) -> None:
    name = unique_name("metrics")
    platform.deploy(name, HANDLER, {"scale": {"idle_timeout": "30s"}})
    label = f"{name}.default"
    before = samples(platform)
    assert value(before, "nfaas_cold_starts_total", function_name=label) is None
    assert value(before, "gateway_service_count", function_name=label) == 0

    first = platform.invoke(name)
    assert first.headers["x-nfaas-cold-start"] == "1"
    assert platform.invoke(name).status_code == 200
    assert platform.invoke(name, params={"fail": "1"}).status_code == 500

    after = samples(platform)
    ok = value(after, "gateway_function_invocation_total", function_name=label, code="200")
    assert ok == 2
    err = value(after, "gateway_function_invocation_total", function_name=label, code="500")
    assert err == 1
    assert value(after, "gateway_functions_seconds_count", function_name=label) == 3
    assert value(after, "nfaas_cold_starts_total", function_name=label) == 1
    for phase in PHASES:
        count = value(
            after, "nfaas_cold_start_phase_seconds_count", function_name=label, phase=phase
        )
        assert count == 1, phase
        inf_bucket = value(
            after,
            "nfaas_cold_start_phase_seconds_bucket",
            function_name=label,
            phase=phase,
            le="+Inf",
        )
        assert inf_bucket == 1, phase
    buckets = [
        s
        for s in after
        if s.name == "nfaas_cold_start_phase_seconds_bucket"
        and s.labels["function_name"] == label
        and s.labels["phase"] == "total"
    ]
    assert len(buckets) > 5
    assert [b.value for b in buckets] == sorted(b.value for b in buckets)  # cumulative
    assert value(after, "gateway_service_count", function_name=label) == 1
    assert value(after, "nfaas_inflight_requests", function_name=label) == 0
    assert value(after, "nfaas_queue_length", function_name=label) == 0

    # The phase histogram agrees with describe's record of the same cold start.
    (record,) = platform.status(name)["cold_starts"]
    total_sum = value(
        after, "nfaas_cold_start_phase_seconds_sum", function_name=label, phase="total"
    )
    assert total_sum is not None
    assert abs(total_sum * 1000 - record["durations_ms"]["total"]) < 1.0


def test_413_is_counted(platform: Platform, unique_name) -> None:
    name = unique_name("metrics-413")
    platform.deploy(name, HANDLER, {"limits": {"max_body": 16}})
    assert platform.invoke(name, b"x" * 17).status_code == 413
    found = samples(platform)
    assert (
        value(
            found, "gateway_function_invocation_total", function_name=f"{name}.default", code="413"
        )
        == 1
    )


def test_shell_pools_are_exported(platform) -> None:
    text = platform.get("/metrics").text
    assert 'nfaas_shells_target{tier="process"} 2.0' in text
    assert 'nfaas_shells_ready{tier="process"}' in text
