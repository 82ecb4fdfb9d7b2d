"""Rate limiter: vectorised token buckets against a packet-by-packet reference, and the graph."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nfaas.nf import build as B
from nfaas.nf.batch import PacketBatch
from nfaas.nf.graph import Graph
from nfaas.nf.pcap import read_capture_all, write_pcap
from nfaas.vnfs.ratelimit import (
    MAX_ROUNDS,
    Limit,
    RateLimiter,
    TokenBuckets,
    Verdict,
    rate_limit,
    rate_limit_split,
    ratelimit_graph,
)


class Reference:
    """The textbook policer, one packet at a time: refill to `now`, then take the cost from
    every enabled bucket if all hold enough; a packet that does not fit takes nothing.
    It never forgets a bucket; a sweep only tells it the time (batches stamped before the
    latest sweep count as at the sweep)."""

    def __init__(self, bytes: Limit | None, packets: Limit | None) -> None:
        self.limits = {"bytes": bytes, "packets": packets}
        self.state: dict[int, dict[str, float]] = {}
        self.swept_at = -math.inf

    def sweep(self, now: float) -> None:
        self.swept_at = max(self.swept_at, now)

    def police(self, keys: list[int], sizes: list[int], now: float) -> list[bool]:
        now = max(now, self.swept_at)
        out = []
        for key, size in zip(keys, sizes, strict=True):
            st_ = self.state.setdefault(
                key,
                {"last": now, **{k: lim.burst for k, lim in self.limits.items() if lim}},
            )
            dt = max(0.0, now - st_["last"])
            st_["last"] = max(st_["last"], now)
            cost = {"bytes": size, "packets": 1}
            fits = True
            for k, lim in self.limits.items():
                if lim:
                    st_[k] = min(lim.burst, st_[k] + lim.rate * dt)
                    fits &= st_[k] >= cost[k]
            if fits:
                for k, lim in self.limits.items():
                    if lim:
                        st_[k] -= cost[k]
            out.append(fits)
        return out


def conform(v: np.ndarray) -> list[bool]:
    return (v == Verdict.CONFORM).tolist()


# -- exact examples ---------------------------------------------------------------------------


def test_bytes_refill_by_batch_time() -> None:
    tb = TokenBuckets(bytes=Limit(rate=1000, burst=1500))
    assert conform(tb.police(None, [500] * 5, 0.0)) == [True] * 3 + [False] * 2
    assert conform(tb.police(None, [500] * 5, 1.0)) == [True] * 2 + [False] * 3
    assert conform(tb.police(None, [500] * 5, 1.25)) == [False] * 5  # 250 tokens
    assert conform(tb.police(None, [500] * 5, 10.0)) == [True] * 3 + [False] * 2  # burst caps


def test_packets_mode() -> None:
    tb = TokenBuckets(packets=Limit(rate=10, burst=5))
    assert conform(tb.police(None, [1500] * 20, 0.0)).count(True) == 5
    assert conform(tb.police(None, [64] * 20, 0.5)).count(True) == 5
    assert conform(tb.police(None, [64] * 20, 0.75)).count(True) == 2  # 2.5 tokens
    assert tb.tokens(0, 0.75)[1] == pytest.approx(0.5)


def test_a_packet_that_does_not_fit_takes_nothing_and_smaller_ones_still_pass() -> None:
    tb = TokenBuckets(bytes=Limit(rate=1, burst=1000))
    assert conform(tb.police(None, [600, 600, 300, 200, 100, 1], 0.0)) == [
        True, False, True, False, True, False,
    ]  # fmt: skip
    assert tb.tokens(0, 0.0)[0] == 0.0


def test_bytes_and_packets_together_must_both_fit() -> None:
    tb = TokenBuckets(bytes=Limit(rate=100, burst=1000), packets=Limit(rate=1, burst=3))
    assert conform(tb.police(None, [100, 800, 200, 50, 10], 0.0)) == [
        True,
        True,
        False,
        True,
        False,
    ]
    tb = TokenBuckets(bytes=Limit(rate=100, burst=1000), packets=Limit(rate=1, burst=10))
    assert conform(tb.police(None, [100, 800, 200, 50, 10], 0.0)) == [True, True, False, True, True]


def test_keys_have_their_own_buckets_and_order_within_a_key_counts() -> None:
    tb = TokenBuckets(packets=Limit(rate=1, burst=2))
    keys = [1, 2, 1, 1, 2, 3, 2]
    assert conform(tb.police(keys, [1] * 7, 0.0)) == [True, True, True, False, True, True, False]
    assert len(tb) == 3


def test_many_tiny_packets_after_a_misfit_finish_exactly() -> None:
    """More post-misfit conformers than vectorised rounds: the loop finishes the job."""
    tb = TokenBuckets(bytes=Limit(rate=1, burst=2000))
    sizes = [1500, 1500] + [1] * (3 * MAX_ROUNDS) + [400, 1]
    ref = Reference(Limit(rate=1, burst=2000), None)
    got = conform(tb.police(None, sizes, 0.0))
    assert got == ref.police([0] * len(sizes), sizes, 0.0)
    assert got.count(True) == 1 + 3 * MAX_ROUNDS + 2  # 500 left: the ones, then 400, then 1


def test_the_table_bound_refuses_new_keys() -> None:
    tb = TokenBuckets(packets=Limit(rate=1, burst=5), max_buckets=2)
    v = tb.police([1, 2, 3, 1], [1] * 4, 0.0)
    assert v.tolist() == [Verdict.CONFORM, Verdict.CONFORM, Verdict.NO_BUCKET, Verdict.CONFORM]


def test_idle_buckets_are_forgotten_only_when_full_again() -> None:
    tb = TokenBuckets(bytes=Limit(rate=100, burst=1000), idle_timeout=1.0)
    assert tb.idle_timeout >= 10.0  # raised to the refill time
    tb.police([1, 2], [1000, 500], 0.0)
    assert tb.expire(5.0) == 0 and len(tb) == 2
    assert tb.expire(11.0) == 2 and len(tb) == 0
    assert conform(tb.police([1], [1000], 11.0)) == [True]


def test_a_batch_stamped_before_a_sweep_finds_forgotten_and_kept_buckets_alike() -> None:
    """Regression (found by hypothesis): a sweep at 101.625 forgot a bucket drained at 100
    (full again after 1.5 s), then a late batch stamped 100.875 found a fresh full bucket
    where a remembered one held 1.75 tokens. Batches stamped before the latest sweep now
    count as at the sweep, so forgetting a bucket changes no verdict."""
    verdicts = []
    for idle_timeout, forgotten in ((None, 1), (1000.0, 0)):
        tb = TokenBuckets(packets=Limit(rate=2.0, burst=3.0), idle_timeout=idle_timeout)
        assert conform(tb.police(None, [0, 0, 0], 100.0)) == [True] * 3
        assert tb.expire(101.625) == forgotten
        verdicts.append(conform(tb.police(None, [0, 0], 100.875)))
        assert tb.tokens(0, 100.875) == (math.inf, 1.0)
    assert verdicts == [[True, True], [True, True]]


def test_without_a_sweep_a_late_batch_gets_no_refill() -> None:
    tb = TokenBuckets(packets=Limit(rate=2.0, burst=3.0))
    assert conform(tb.police(None, [0, 0, 0], 100.0)) == [True] * 3
    assert conform(tb.police(None, [0], 101.0)) == [True]  # 2 tokens, 1 left
    assert conform(tb.police(None, [0, 0], 100.5)) == [True, False]  # stepped back: still 1


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="rate"):
        Limit(rate=0, burst=1)
    with pytest.raises(ValueError, match="burst"):
        Limit(rate=1, burst=math.inf)
    with pytest.raises(ValueError, match="bytes limit"):
        TokenBuckets()
    with pytest.raises(ValueError, match="key"):
        RateLimiter(packets=Limit(1, 1), key="port")
    with pytest.raises(ValueError, match="3 keys for 2"):
        TokenBuckets(packets=Limit(1, 1)).police([1, 2, 3], [1, 1], 0.0)


# -- against the reference ----------------------------------------------------------------------

limits = st.one_of(
    st.none(),
    st.builds(
        Limit,
        rate=st.sampled_from([0.5, 1.0, 3.0, 100.0, 1234.5, 1e6]),
        burst=st.sampled_from([1.0, 1.5, 3.0, 64.0, 1500.0, 2500.25, 1e5]),
    ),
)
batches = st.lists(
    st.tuples(
        st.floats(0.0, 5.0),  # time since the previous batch
        st.lists(st.tuples(st.integers(0, 4), st.integers(0, 1600)), max_size=60),
        st.booleans(),  # sweep idle buckets before this batch
    ),
    min_size=1,
    max_size=8,
)


@settings(max_examples=300, deadline=None)
@given(
    byte_limit=limits,
    packet_limit=limits,
    per_key=st.booleans(),
    seq=batches,
    backwards=st.booleans(),
)
def test_vectorised_verdicts_equal_the_reference(
    byte_limit: Limit | None,
    packet_limit: Limit | None,
    per_key: bool,
    seq: list[tuple[float, list[tuple[int, int]], bool]],
    backwards: bool,
) -> None:
    if byte_limit is None and packet_limit is None:
        packet_limit = Limit(rate=2.0, burst=3.0)
    tb = TokenBuckets(byte_limit, packet_limit, idle_timeout=0.1)
    ref = Reference(byte_limit, packet_limit)
    now = 100.0
    for step, (gap, packets, sweep) in enumerate(seq):
        now += -gap / 4 if backwards and step % 3 == 2 else gap  # time may step back: no refill
        keys = [k if per_key else 0 for k, _ in packets]
        sizes = [s for _, s in packets]
        if sweep:
            tb.expire(now)
            ref.sweep(now)
        got = conform(tb.police(np.array(keys, np.uint64) if per_key else None, sizes, now))
        assert got == ref.police(keys, sizes, now), f"batch {step}"


@settings(max_examples=100, deadline=None)
@given(
    rate=st.sampled_from([1000.0, 12500.0]),
    burst=st.sampled_from([1514.0, 3000.0]),
    sizes=st.lists(st.integers(60, 1514), min_size=1, max_size=300),
    gaps=st.lists(st.floats(0.0, 0.2), min_size=1, max_size=5),
)
def test_long_run_conformance_never_exceeds_rate_times_time_plus_burst(
    rate: float, burst: float, sizes: list[int], gaps: list[float]
) -> None:
    tb = TokenBuckets(bytes=Limit(rate=rate, burst=burst))
    now, passed = 0.0, 0
    for gap in gaps:
        now += gap
        v = tb.police(None, sizes, now)
        passed += int(np.asarray(sizes)[v == Verdict.CONFORM].sum())
    assert passed <= burst + rate * now + 1e-6


# -- in a graph ---------------------------------------------------------------------------------

HOSTS = [f"198.18.0.{i}" for i in range(1, 5)]
SERVER = "198.19.0.1"


def frames(per_host: int, size: int = 100) -> list[bytes]:
    return [
        B.udp_frame(h, SERVER, 1000 + k, 9, bytes(size - 42))
        for k in range(per_host)
        for h in HOSTS
    ]


def test_ratelimit_graph_per_source_through_a_capture(tmp_path: Path) -> None:
    limiter = RateLimiter(packets=Limit(rate=10, burst=3), key="src")
    g = ratelimit_graph(limiter, errors="raise")
    traffic = [*frames(5), B.ethernet(bytes(28), ethertype=0x0806), b"\x00" * 20]  # non-IP, runt
    write_pcap(tmp_path / "in.pcap", PacketBatch.from_bytes(traffic))
    out = g.run_batch({"in": read_capture_all(tmp_path / "in.pcap")}, 0.0)["out"]
    write_pcap(tmp_path / "out.pcap", out)
    got = read_capture_all(tmp_path / "out.pcap").to_list()
    # Each host's first three packets, and both non-IP packets (they share key 0), unchanged.
    assert got == traffic[: 3 * len(HOSTS)] + traffic[-2:]
    assert g.operator("police").counters.drops == {"rate": 2 * len(HOSTS)}
    assert limiter.stats.conform_packets == 3 * len(HOSTS) + 2
    # A tenth of a second later, one more packet per host.
    out = g.run_batch({"in": PacketBatch.from_bytes(frames(2))}, 0.1)["out"]
    assert len(out) == len(HOSTS)


def test_global_byte_limit_on_raw_packets() -> None:
    limiter = RateLimiter(bytes=Limit(rate=1e4, burst=1000))
    g = ratelimit_graph(limiter, errors="raise")
    assert [type(op).__name__ for op in g.operators] == ["Source", "RateLimit", "Emit", "Sink"]
    out = g.run_batch({"in": PacketBatch.from_bytes(frames(5, size=100))}, 0.0)["out"]
    assert len(out) == 10


def test_split_marks_instead_of_dropping_and_chains_per_key_then_global() -> None:
    per_host = RateLimiter(packets=Limit(rate=1, burst=2), key="src")
    overall = RateLimiter(packets=Limit(rate=1, burst=5))
    g = Graph("chain", errors="raise")
    conform, exceed = rate_limit_split(g.source("in").parse().apply(rate_limit(per_host)), overall)
    conform.emit("out")
    exceed.emit("late")
    g.sink("out")
    g.sink("late")
    traffic = frames(3)
    out = g.run_batch({"in": PacketBatch.from_bytes(traffic)}, 0.0)
    first_two = traffic[: 2 * len(HOSTS)]  # per host: two of three pass the first limiter
    assert out["out"].to_list() == first_two[:5]  # the global one lets five through
    assert out["late"].to_list() == first_two[5:]
    counters = {row["operator"]: row for row in g.counters()}
    assert counters["ratelimit"]["drops"] == {"rate": len(HOSTS)}
    assert counters["ratelimit2"]["dropped"] == 0


def test_idle_buckets_are_swept_by_the_graph_timers() -> None:
    limiter = RateLimiter(packets=Limit(rate=1, burst=2), key="src", sweep_every=1.0)
    g = ratelimit_graph(limiter, errors="raise")
    g.run_batch({"in": PacketBatch.from_bytes(frames(1))}, 0.0)
    assert len(limiter.buckets) == len(HOSTS)
    g.tick(1.5)
    assert len(limiter.buckets) == len(HOSTS)  # not full again yet (2 s to refill)
    g.tick(3.0)
    assert len(limiter.buckets) == 0 and limiter.stats.expired_buckets == len(HOSTS)
    assert g.operator("police").counters.extra["expired"] == len(HOSTS)
