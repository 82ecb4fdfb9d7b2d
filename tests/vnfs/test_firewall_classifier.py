"""The compiled classifier (nfaas.vnfs.firewall.classifier) against the linear reference."""

from __future__ import annotations

import ipaddress

import numpy as np
import pytest
from firewall_strategies import PORTS, PROTOS, V4, V6, rules
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nfaas.vnfs.firewall.classifier import NO_MATCH, Classifier, FlowKeys
from nfaas.vnfs.firewall.generate import generate_packets, generate_rules
from nfaas.vnfs.firewall.linear import LinearClassifier
from nfaas.vnfs.firewall.rules import Action, Family, PortRange, Rule, RuleTable

V4_POOL = [int(ipaddress.IPv4Address(a)) for a in V4]
V6_POOL = [int(ipaddress.IPv6Address(a)) for a in V6]
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def packets(draw: st.DrawFn, version: int, n: int) -> FlowKeys:
    pool = V4_POOL if version == 4 else V6_POOL
    bits = 32 if version == 4 else 128

    def address() -> int:
        base = draw(st.sampled_from(pool))
        flip = draw(st.sampled_from([0, 1, 1 << 7, 1 << 8, 1 << 16, 1 << (bits - 1)]))
        return base ^ flip

    src = [address() for _ in range(n)]
    dst = [address() for _ in range(n)]
    proto = [draw(st.sampled_from(PROTOS)) for _ in range(n)]
    sport = [draw(st.sampled_from(PORTS)) if p in (6, 17) else 0 for p in proto]
    dport = [draw(st.sampled_from(PORTS)) if p in (6, 17) else 0 for p in proto]
    arrays = (np.array(proto, np.uint8), np.array(sport, np.uint16), np.array(dport, np.uint16))
    if version == 4:
        return FlowKeys.ipv4(np.array(src, np.uint32), np.array(dst, np.uint32), *arrays)
    return FlowKeys.ipv6(_pairs(src), _pairs(dst), *arrays)


def _pairs(addresses: list[int]) -> np.ndarray:
    return np.array([[a >> 64, a & ((1 << 64) - 1)] for a in addresses], dtype=np.uint64).reshape(
        -1, 2
    )


@st.composite
def batches(draw: st.DrawFn) -> FlowKeys:
    return packets(draw, draw(st.sampled_from([4, 6])), draw(st.integers(1, 40)))


def assert_same(compiled: Classifier, rule_list: list[Rule], keys: FlowKeys) -> None:
    expected = LinearClassifier.compile(rule_list).classify(keys)
    np.testing.assert_array_equal(compiled.classify(keys), expected)


# --- first match equals the reference -----------------------------------------------------------


@SETTINGS
@given(st.lists(rules(), max_size=40), batches(), st.sampled_from([0.0, 0.002, 0.2, 1.0]))
def test_compiled_equals_linear(rule_list: list[Rule], keys: FlowKeys, merge_share: float) -> None:
    assert_same(Classifier.compile(rule_list, merge_share=merge_share), rule_list, keys)


@SETTINGS
@given(
    st.lists(rules(), max_size=25),
    st.lists(st.tuples(st.booleans(), st.integers(0, 10**6), rules()), min_size=1, max_size=25),
    batches(),
)
def test_incremental_updates_equal_recompiled_reference(
    rule_list: list[Rule], updates: list[tuple[bool, int, Rule]], keys: FlowKeys
) -> None:
    compiled = Classifier.compile(rule_list, merge_share=0.2)
    current = list(rule_list)
    for is_insert, where, rule in updates:
        if is_insert or not current:
            position = where % (len(current) + 1)
            compiled.insert(position, rule)
            current.insert(position, rule)
        else:
            position = where % len(current)
            compiled.delete(position)
            del current[position]
        assert len(compiled) == len(current)
    assert_same(compiled, current, keys)


def test_linear_reference_agrees_with_rule_matches() -> None:
    """Ground the oracle: the vectorised scan against Rule.matches, packet by packet."""
    rule_list = list(generate_rules(300, seed=7, ipv6_share=0.4))
    for version in (4, 6):
        keys = generate_packets(RuleTable.from_rules(rule_list), 400, seed=8, version=version)
        result = LinearClassifier.compile(rule_list).classify(keys)
        for i in range(len(keys)):
            if version == 4:
                assert keys.src4 is not None and keys.dst4 is not None
                src, dst = int(keys.src4[i]), int(keys.dst4[i])
            else:
                assert keys.src6 is not None and keys.dst6 is not None
                src = int(keys.src6[i, 0]) << 64 | int(keys.src6[i, 1])
                dst = int(keys.dst6[i, 0]) << 64 | int(keys.dst6[i, 1])
            packet = (version, src, dst, int(keys.proto[i]), int(keys.sport[i]), int(keys.dport[i]))
            first = next((j for j, r in enumerate(rule_list) if r.matches(*packet)), NO_MATCH)
            assert result[i] == first


@pytest.mark.parametrize("merge_share", [0.0, 0.01, 0.1])
@pytest.mark.parametrize("ipv6_share", [0.0, 0.5])
def test_generated_rulesets_equal_linear(merge_share: float, ipv6_share: float) -> None:
    table = generate_rules(2000, seed=3, ipv6_share=ipv6_share)
    compiled = Classifier.compile(table, merge_share=merge_share)
    linear = LinearClassifier.compile(table)
    for version in (4, 6) if ipv6_share else (4,):
        keys = generate_packets(table, 3000, seed=4, version=version)
        result = compiled.classify(keys)
        np.testing.assert_array_equal(result, linear.classify(keys))
        assert (result >= 0).mean() > 0.3  # the traffic really exercises the rules


def test_incremental_on_generated_ruleset() -> None:
    table = generate_rules(1500, seed=11)
    current = list(table)
    compiled = Classifier.compile(table)
    extra = list(generate_rules(300, seed=12))
    rng = np.random.default_rng(0)
    for rule in extra:  # enough inserts to force tuple rebuilds and new tuples
        position = int(rng.integers(0, len(current) + 1))
        compiled.insert(position, rule)
        current.insert(position, rule)
    for _ in range(400):
        position = int(rng.integers(0, len(current)))
        compiled.delete(position)
        del current[position]
    keys = generate_packets(RuleTable.from_rules(current), 4000, seed=13)
    assert_same(compiled, current, keys)


# --- interface details --------------------------------------------------------------------------


def test_mixed_family_batch() -> None:
    rule_list = [
        Rule(Action.DROP, Family.IPV6, src=ipaddress.IPv6Network("2001:2::/48")),
        Rule(Action.REJECT, Family.IPV4, dst=ipaddress.IPv4Network("198.18.0.0/24")),
        Rule(Action.ACCEPT, proto=6, dport=PortRange.single(80)),
    ]
    v6 = int(ipaddress.IPv6Address("2001:2::5"))
    keys = FlowKeys(
        proto=np.array([6, 6, 17, 6], np.uint8),
        sport=np.array([1, 1, 1, 1], np.uint16),
        dport=np.array([80, 80, 80, 80], np.uint16),
        src4=np.array([0, int(ipaddress.IPv4Address("198.19.0.1")), 0, 0], np.uint32),
        dst4=np.array([0, int(ipaddress.IPv4Address("198.18.0.9")), 0, 0], np.uint32),
        src6=_pairs([v6, 0, v6, 1]),
        dst6=_pairs([v6, 0, v6, 1]),
        is_ipv6=np.array([True, False, True, True]),
    )
    compiled = Classifier.compile(rule_list, Action.DROP)
    matches = compiled.classify(keys)
    np.testing.assert_array_equal(matches, [0, 1, 0, 2])
    np.testing.assert_array_equal(matches, LinearClassifier.compile(rule_list).classify(keys))
    np.testing.assert_array_equal(compiled.verdicts(np.array([0, 1, 2, -1])), [1, 2, 0, 1])


def test_port_rule_never_matches_portless_protocol() -> None:
    compiled = Classifier.compile([Rule(Action.DROP, proto=6, sport=PortRange(0, 65535))])
    keys = FlowKeys.ipv4(
        np.zeros(3, np.uint32), np.zeros(3, np.uint32), np.array([6, 1, 47], np.uint8),
        np.zeros(3, np.uint16), np.zeros(3, np.uint16),
    )  # fmt: skip
    np.testing.assert_array_equal(compiled.classify(keys), [0, -1, -1])


def test_empty_ruleset_and_empty_batch() -> None:
    compiled = Classifier.compile([], Action.DROP)
    keys = generate_packets(generate_rules(5), 10)
    np.testing.assert_array_equal(compiled.classify(keys), np.full(10, -1))
    assert compiled.classify(generate_packets(generate_rules(5), 0)).shape == (0,)
    np.testing.assert_array_equal(compiled.verdicts(np.full(2, -1)), [1, 1])


def test_ambiguous_batch_and_bad_positions_are_errors() -> None:
    one = np.zeros(1, np.uint32)
    keys = FlowKeys(np.zeros(1, np.uint8), np.zeros(1, np.uint16), np.zeros(1, np.uint16),
                    src4=one, dst4=one, src6=_pairs([0]), dst6=_pairs([0]))  # fmt: skip
    compiled = Classifier.compile([Rule(Action.DROP)])
    with pytest.raises(ValueError, match="is_ipv6"):
        compiled.classify(keys)
    with pytest.raises(IndexError):
        compiled.insert(2, Rule(Action.DROP))
    with pytest.raises(IndexError):
        compiled.delete(1)


def test_stats_report_tuples() -> None:
    stats = Classifier.compile(generate_rules(500, seed=1)).stats()
    assert stats["rules"] == 500
    assert isinstance(stats["ipv4_tuples"], int) and 1 <= stats["ipv4_tuples"] <= 500
    assert stats["ipv6_tuples"] == 0
