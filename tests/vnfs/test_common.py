"""Helpers shared by the VNFs: configuration checks and finding a VNF's operator in its graph."""

from __future__ import annotations

import math

import pytest

from nfaas.nf.graph import Graph
from nfaas.vnfs.common import check_positive, check_range, find_operator
from nfaas.vnfs.ratelimit import Limit, RateLimit, RateLimiter, ratelimit_graph


def test_check_positive_names_the_setting_its_unit_and_the_value() -> None:
    check_positive("sweep_every", 0.5, "seconds")
    for bad in (0, -1.0, math.nan):
        with pytest.raises(ValueError, match=rf"^sweep_every must be > 0 seconds, got {bad}$"):
            check_positive("sweep_every", bad, "seconds")
    with pytest.raises(ValueError, match=r"^weight must be > 0, got 0$"):
        check_positive("weight", 0)


def test_check_range_with_and_without_an_upper_bound() -> None:
    check_range("outer_ttl", 1, 1, 255)
    check_range("outer_ttl", 255, 1, 255)
    check_range("max_tunnels", 0, 0)
    with pytest.raises(ValueError, match=r"^outer_ttl must be 1\.\.255, got 256$"):
        check_range("outer_ttl", 256, 1, 255)
    with pytest.raises(ValueError, match=r"^outer_ttl must be 1\.\.255, got 0$"):
        check_range("outer_ttl", 0, 1, 255)
    with pytest.raises(ValueError, match=r"^max_tunnels must be >= 0, got -1$"):
        check_range("max_tunnels", -1, 0)


def test_find_operator_returns_the_first_of_its_class_or_says_which_is_missing() -> None:
    g = ratelimit_graph(RateLimiter(packets=Limit(rate=1, burst=1)))
    op = find_operator(g, RateLimit, "rate limit")
    assert op is g.operator("police")
    empty = Graph("plain")
    empty.source("in").to("out")
    empty.sink("out")
    with pytest.raises(LookupError, match="graph 'plain' has no rate limit operator"):
        find_operator(empty, RateLimit, "rate limit")
