"""``nfaas bench pubsub``: workload definitions, schedule and percentile math, and a smoke run
through a real nats-server (JetStream and core NATS) that checks the counts add up.

No timing thresholds: only structure and consistency.
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from nfaas.bench.pubsub import (
    MODES,
    SEED001_NOMINAL_MBPS,
    Settings,
    Step,
    Topic,
    experiment_topics,
    latency_ms,
    limited_by,
    merge_timelines,
    offered_between,
    parse_levels,
    per_second,
    run_async,
    run_step,
    targets,
    topic_loads,
    without_credentials,
    workload_a,
    workload_b,
)
from nfaas.bench.pubsub_load import Timeline, due_messages, split_round_robin, window_sum
from nfaas.events.natsserver import NatsServer, NatsServerConfig

# ---------------------------------------------------------------- workloads


def test_one_experiment_is_seed_001s_twenty_topics() -> None:
    topics = experiment_topics(1)
    assert len(topics) == 20
    mix = sorted({(t.size, t.rate) for t in topics})
    assert mix == [(100, 1000.0), (1000, 1000.0), (100 * 1024, 1.0), (1024 * 1024, 1.0)]
    counts = {size: sum(1 for t in topics if t.size == size) for size, _ in mix}
    assert counts == {100: 8, 1000: 8, 100 * 1024: 2, 1024 * 1024: 2}
    assert topics[0].subject == "bench.exp1.site1.kpi.m01"
    assert all(re.fullmatch(r"bench\.exp1\.site1\.kpi\.m\d\d", t.subject) for t in topics)
    # the payload sum: 88.8 Mb/s; the source calls it "approximately 102.4 Mbps"
    step = workload_a(1)
    assert step.offered_msgs_per_s == 16_004
    assert step.offered_mbps == pytest.approx(88.816, abs=0.001)
    assert step.offered_mbps < SEED001_NOMINAL_MBPS


def test_experiments_have_their_own_subjects_and_streams() -> None:
    step = workload_a(6)
    subjects = [t.subject for t in step.topics]
    assert len(subjects) == len(set(subjects)) == 120
    assert {s.split(".")[1] for s in subjects} == {f"exp{i}" for i in range(1, 7)}
    streams = [t.stream for t in step.topics]
    assert len(set(streams)) == 120 and not any("." in s for s in streams)


def test_workload_b_is_800_byte_topics_at_5_12_mbps() -> None:
    step = workload_b(20)
    assert len(step.topics) == 20
    assert all(t.size == 800 and t.rate == 800.0 for t in step.topics)
    assert all(t.mbps == pytest.approx(5.12) for t in step.topics)
    assert step.offered_mbps == pytest.approx(102.4)
    with pytest.raises(ValueError, match="at least 1"):
        workload_b(0)
    with pytest.raises(ValueError, match="at least 1"):
        workload_a(0)


def test_parse_levels_names_the_bad_item() -> None:
    assert parse_levels("1, 2,6", "--experiments") == (1, 2, 6)
    with pytest.raises(ValueError, match=r"--topics: item 2 \('x'\)"):
        parse_levels("1,x", "--topics")
    with pytest.raises(ValueError, match=r"item 1 \(0\) must be at least 1"):
        parse_levels("0", "--topics")


# ---------------------------------------------------------------- schedule


@given(
    rate=st.sampled_from([1.0, 10.0, 800.0, 1000.0]),
    phase=st.floats(0.0, 0.999),
    seconds=st.integers(1, 30),
)
def test_schedule_sends_exactly_rate_times_seconds(rate: float, phase: float, seconds: int) -> None:
    assert due_messages(rate, phase, 0.0) == 0
    assert due_messages(rate, phase, float(seconds)) == int(rate * seconds)


@given(
    rate=st.floats(0.5, 5000.0),
    phase=st.floats(0.0, 0.999),
    times=st.lists(st.floats(0.0, 20.0), min_size=2, max_size=10),
)
def test_schedule_is_monotone(rate: float, phase: float, times: list[float]) -> None:
    due = [due_messages(rate, phase, t) for t in sorted(times)]
    assert due == sorted(due)


def test_slow_topics_are_spread_over_their_period() -> None:
    loads = topic_loads(workload_a(6).topics)
    assert all(0.0 <= t.phase < 1.0 for t in loads)
    slow = [t for t in loads if t.rate == 1.0]
    first_send = sorted(round(1.0 - t.phase, 3) for t in slow)  # seconds after the start
    assert len(set(first_send)) == len(slow)
    assert offered_between(loads, 0.0, 10.0) == 10 * 16_004 * 6
    assert offered_between(loads, 0.0, 4.0) + offered_between(loads, 4.0, 10.0) == offered_between(
        loads, 0.0, 10.0
    )


def test_round_robin_split() -> None:
    assert split_round_robin([1, 2, 3, 4, 5], 2) == [[1, 3, 5], [2, 4]]
    assert split_round_robin([1], 4) == [[1]]  # never an empty part


# ---------------------------------------------------------------- KPI math


def test_timelines_count_the_same_window_for_acks_and_deliveries() -> None:
    acks, deliveries = Timeline(2.0), Timeline(2.0)
    acks.add(0.0, 5, 50)  # before the start is known: bin 0
    acks.start = deliveries.start = 100.0
    acks.add(100.004, 1, 10)  # bin 0
    acks.add(100.5, 2, 20)  # bin 50
    deliveries.add(100.999, 2, 20)  # bin 99
    acks.add(103.0, 1, 10)  # past the end: the timeline grows
    assert acks.msgs[0] == 6 and acks.msgs[50] == 2 and acks.msgs[300] == 1
    assert window_sum(acks.msgs, 0.5, 1.0) == 2 == window_sum(deliveries.msgs, 0.5, 1.0)
    assert window_sum(acks.nbytes, 0.0, 0.5) == 60
    merged = merge_timelines([acks.as_dict(), deliveries.as_dict()])
    assert len(merged["msgs"]) == len(acks.msgs)
    assert merged["msgs"][99] == 2 and sum(merged["msgs"]) == 11
    assert per_second(merged["msgs"]) == [10, 0, 0, 1]


def test_latency_percentiles_in_milliseconds() -> None:
    stats = latency_ms([i / 1000 for i in range(101, 0, -1)])  # 1..101 ms, any order
    assert stats["n"] == 101
    assert stats["min"] == 1.0 and stats["max"] == 101.0
    assert stats["p50"] == 51.0
    assert stats["p90"] == 91.0
    assert stats["p99"] == 100.0
    assert stats["mean"] == 51.0
    assert latency_ms([]) == {}


def _row(workload: str, level: int, io: float, achieved: float, p50: float = 1.0) -> dict[str, Any]:
    return {
        "workload": workload,
        "level": level,
        "mode": "jetstream",
        "io_ratio": io,
        "delivered_of_offered": io * achieved,
        "achieved": {"of_offered": achieved},
        "latency_ms": {"p50": p50},
        "messages": {"errors": 0, "timeouts": 0, "skipped_late": 0, "offered": 100},
        "cpu": {"producers_pct": [10.0], "consumers_pct": [95.0], "machine_busy_pct": 99.0},
    }


def test_targets_and_saturation_points() -> None:
    rows = [
        _row("a", 1, 1.0, 1.0, p50=2.0),
        _row("a", 2, 0.995, 1.0),
        _row("a", 3, 0.98, 0.97),
        _row("b", 1, 1.0, 1.0),
    ]
    result = targets(rows)
    assert result["one_experiment"]["io_ratio_met"] and result["one_experiment"]["p50_met"]
    assert result["saturation_a"]["ratio_below_floor_at"] == 3
    assert result["saturation_a"]["held_up_to"] == 2
    assert result["saturation_a"]["io_ratio_below_floor_at"] == 3
    assert result["saturation_a"]["achieved_of_offered_below_floor_at"] == 3
    assert result["saturation_b"]["io_ratio_below_floor_at"] is None
    assert result["saturation_b"]["held_up_to"] == 1
    # acknowledgements that fall behind the offered rate count as saturation too
    lagging = targets([_row("b", 1, 1.0, 1.0), _row("b", 5, 1.02, 0.95)])["saturation_b"]
    assert lagging["ratio_below_floor_at"] == 5 and lagging["io_ratio_below_floor_at"] is None
    slow = targets([_row("a", 1, 0.998, 1.0, p50=3.5)])["one_experiment"]
    assert not slow["io_ratio_met"] and not slow["p50_met"]


def test_limited_by_blames_a_busy_generator_before_the_broker() -> None:
    assert limited_by(_row("a", 1, 1.0, 1.0)) == "-"
    assert limited_by(_row("a", 3, 0.9, 1.0)).startswith("generator")
    quiet = _row("a", 3, 0.9, 1.0)
    quiet["cpu"] = {"producers_pct": [10.0], "consumers_pct": [10.0], "machine_busy_pct": 50.0}
    assert limited_by(quiet) == "broker"
    late = _row("a", 3, 0.9, 1.0)
    late["messages"]["skipped_late"] = 5
    late["cpu"]["consumers_pct"] = [20.0]
    assert limited_by(late) == "CPU (machine 99 % busy; generator fell behind)"
    late["cpu"]["machine_busy_pct"] = 60.0
    assert limited_by(late) == "generator (behind its schedule)"


def test_credentials_stay_out_of_results() -> None:
    assert without_credentials("nats://nfaas:s3cret@127.0.0.1:4222") == "nats://127.0.0.1:4222"
    assert without_credentials("nats://127.0.0.1:4222") == "nats://127.0.0.1:4222"


def test_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="must exceed the warm-up"):
        Settings(seconds=1.0, warmup=1.0)
    with pytest.raises(ValueError, match="mode must be one of"):
        asyncio.run(run_step(workload_b(1), "kafka", "nats://127.0.0.1:1", Settings()))


# ---------------------------------------------------------------- real broker

TINY = Step(
    "b",
    3,
    (
        Topic("bench.test.site1.kpi.t01", 100, 100.0),
        Topic("bench.test.site1.kpi.t02", 100, 100.0),
        Topic("bench.test.site1.kpi.t03", 20_000, 10.0),
    ),
)
TINY_MESSAGES = 210  # in one second
TINY_SETTINGS = Settings(seconds=1.0, warmup=0.25, producers=2, consumers=2)


@pytest.fixture(scope="module")
def tiny_rows(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    async def both_buses() -> dict[str, dict[str, Any]]:
        server = NatsServer(NatsServerConfig(store_dir=tmp_path_factory.mktemp("nats")))
        await server.start()
        try:
            return {
                mode: await run_step(TINY, mode, server.platform_url, TINY_SETTINGS, server.pid)
                for mode in MODES
            }
        finally:
            await server.stop()

    return asyncio.run(both_buses())


@pytest.mark.parametrize("mode", MODES)
def test_tiny_workload_counts_add_up(tiny_rows: dict[str, dict[str, Any]], mode: str) -> None:
    row = tiny_rows[mode]
    messages = row["messages"]
    assert messages["offered"] == TINY_MESSAGES
    assert messages["sent"] > 0
    skipped = messages["skipped_late"] + messages["skipped_backpressure"]
    assert messages["sent"] + skipped == TINY_MESSAGES
    assert messages["errors"] == messages["timeouts"] == 0
    assert messages["producer_disconnects"] == messages["consumer_disconnects"] == 0
    assert messages["acked"] == messages["sent"]
    assert messages["delivered"] == messages["acked"]  # nothing lost, nothing twice
    assert row["io_ratio_after_drain"] == 1.0
    # over the window, a message can be acknowledged just before it and delivered in it
    assert 0.0 < row["io_ratio"] <= 1.05
    assert 0.0 < row["achieved"]["of_offered"] <= 1.05
    assert sum(row["per_second"]["acked"]) == messages["acked"]
    assert sum(row["per_second"]["delivered"]) == messages["delivered"]
    assert row["offered"]["msgs_per_s"] == TINY_MESSAGES


@pytest.mark.parametrize("mode", MODES)
def test_tiny_workload_kpis_are_sane(tiny_rows: dict[str, dict[str, Any]], mode: str) -> None:
    row = tiny_rows[mode]
    lat = row["latency_ms"]
    assert lat["n"] > 0
    assert 0 < lat["min"] <= lat["p50"] <= lat["p99"] <= lat["max"]
    cpu = row["cpu"]
    assert cpu["broker_pct"] is not None and cpu["broker_pct"] >= 0
    assert len(cpu["producers_pct"]) == len(cpu["consumers_pct"]) == 2
    assert all(p is not None and p >= 0 for p in cpu["producers_pct"] + cpu["consumers_pct"])
    assert 0 <= cpu["machine_busy_pct"] <= 100
    assert row["error_samples"] == []


def test_run_saves_results_table_and_plot(tmp_path: Path) -> None:
    settings = Settings(seconds=1.0, warmup=0.25, producers=1, consumers=1)
    results = asyncio.run(
        run_async(["b"], [], [1], settings, out_dir=tmp_path, suffix="-test", echo=False)
    )
    saved = json.loads((tmp_path / "pubsub-b-test.json").read_text())
    assert {"cores", "cpu", "kernel", "memory_gib"} <= set(saved.pop("machine"))
    assert saved == json.loads(json.dumps(results["b"]))
    assert saved["broker"]["started_by_bench"] and saved["broker"]["cpu_measured"]
    assert "@" not in saved["broker"]["url"]  # the platform's password is not in the results
    assert [(r["level"], r["mode"]) for r in saved["rows"]] == [(1, "jetstream"), (1, "core")]
    for row in saved["rows"]:
        assert 0.0 <= row["io_ratio_after_drain"] <= 1.0
        assert row["messages"]["offered"] == 800
    assert saved["targets"]["saturation_b"]["highest_level_measured"] == 1
    assert "| topics |" in saved["markdown"] and "JetStream / core" in saved["markdown"]
    assert (tmp_path / "pubsub-b-test.png").stat().st_size > 0
