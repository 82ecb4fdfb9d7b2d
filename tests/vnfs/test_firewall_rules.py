"""The firewall rule model (nfaas.vnfs.firewall.rules) and the rule-set generator."""

from __future__ import annotations

import ipaddress
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nfaas.vnfs.firewall.generate import IPV4_BASE, IPV6_BASE, generate_packets, generate_rules
from nfaas.vnfs.firewall.linear import LinearClassifier
from nfaas.vnfs.firewall.rules import (
    Action,
    Family,
    PortRange,
    Rule,
    RuleError,
    RuleTable,
    parse_protocol,
)

V4 = ipaddress.IPv4Network
V6 = ipaddress.IPv6Network


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"family": Family.IPV6, "src": V4("198.18.0.0/16")}, "IPv4 but the rule's family is ipv6"),
        ({"src": V4("198.18.0.0/16")}, "family is any"),
        ({"dport": PortRange.single(80)}, "needs protocol tcp or udp"),
        ({"proto": 1, "sport": PortRange.single(80)}, "needs protocol tcp or udp"),
        ({"proto": 256}, "not within 0-255"),
        ({"comment": 'say "hi"'}, "double quotes"),
        ({"comment": "x" * 129}, "at most 128 bytes"),
        ({"handle": -1}, "negative"),
    ],
)
def test_invalid_rules_say_why(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(RuleError, match=message):
        Rule(Action.DROP, **kwargs)


def test_port_range_and_protocol_parsing() -> None:
    with pytest.raises(RuleError, match="90-80"):
        PortRange(90, 80)
    with pytest.raises(RuleError):
        PortRange(0, 65536)
    assert str(PortRange(80, 90)) == "80-90" and str(PortRange.single(5)) == "5"
    assert 85 in PortRange(80, 90) and 91 not in PortRange(80, 90)
    assert [parse_protocol(p) for p in ("tcp", "udp", "icmp", "ipv6-icmp", "icmpv6", "47")] == [
        6,
        17,
        1,
        58,
        58,
        47,
    ]
    with pytest.raises(RuleError, match="unknown protocol"):
        parse_protocol("256")


def test_rule_matches() -> None:
    rule = Rule(Action.DROP, Family.IPV4, src=V4("198.18.0.0/16"), proto=6, dport=PortRange(80, 90))
    src = int(ipaddress.IPv4Address("198.18.3.4"))
    assert rule.matches(4, src, 0, 6, 1, 85)
    assert not rule.matches(4, src, 0, 6, 1, 91)
    assert not rule.matches(4, src, 0, 17, 1, 85)
    assert not rule.matches(4, src + (1 << 16), 0, 6, 1, 85)
    assert not rule.matches(6, src, 0, 6, 1, 85)
    assert Rule(Action.ACCEPT).matches(6, 1, 2, 47, 0, 0)


def test_action_and_family_codes() -> None:
    assert [Action.from_code(a.code) for a in Action] == list(Action)
    assert [Family.from_code(f.code) for f in Family] == list(Family)


@st.composite
def table_rules(draw: st.DrawFn) -> Rule:
    family = draw(st.sampled_from(list(Family)))
    src = dst = None
    if family is not Family.ANY:
        bits = 32 if family is Family.IPV4 else 128
        make = V4 if family is Family.IPV4 else V6

        def prefix() -> V4 | V6 | None:
            length = draw(st.integers(1, bits) | st.none())
            if length is None:
                return None
            return make((draw(st.integers(0, 2**bits - 1)), length), strict=False)

        src, dst = prefix(), prefix()
    proto = draw(st.sampled_from([None, 1, 6, 17, 58, 255]))
    ports = st.none() | st.builds(
        lambda a, b: PortRange(min(a, b), max(a, b)), st.integers(0, 65535), st.integers(0, 65535)
    )
    sport, dport = (draw(ports), draw(ports)) if proto in (6, 17) else (None, None)
    return Rule(draw(st.sampled_from(list(Action))), family, src, dst, proto, sport, dport)


@settings(max_examples=100, deadline=None)
@given(st.lists(table_rules(), max_size=20))
def test_rule_table_round_trip(rules: list[Rule]) -> None:
    table = RuleTable.from_rules(rules)
    assert len(table) == len(rules)
    assert list(table) == rules
    if rules:
        assert list(table.take([len(rules) - 1, 0])) == [rules[-1], rules[0]]


def test_generated_rules_are_seeded_distinct_and_in_test_ranges() -> None:
    table = generate_rules(3000, seed=5, ipv6_share=0.3)
    again = generate_rules(3000, seed=5, ipv6_share=0.3)
    assert all(
        np.array_equal(getattr(table, c), getattr(again, c)) for c in RuleTable.__dataclass_fields__
    )
    rules = list(table)
    assert len(rules) == 3000
    matches = {(r.family, r.src, r.dst, r.proto, r.sport, r.dport) for r in rules}
    assert len(matches) == 3000
    for rule in rules:
        for network in (rule.src, rule.dst):
            if network is not None:
                assert network.subnet_of(IPV4_BASE if network.version == 4 else IPV6_BASE)  # type: ignore[arg-type]
    families = {r.family for r in rules}
    assert families == {Family.IPV4, Family.IPV6, Family.ANY}
    # ClassBench-like: a few prefix lengths, mostly exact or no destination port, some ranges
    assert len(set(table.dst_len.tolist())) <= 10
    has_dport = table.dport_lo >= 0
    exact = has_dport & (table.dport_lo == table.dport_hi)
    assert exact.sum() > (has_dport & ~exact).sum() > 0


def test_generated_packets_stay_in_test_ranges_and_hit_rules() -> None:
    table = generate_rules(500, seed=2, ipv6_share=0.5)
    keys4 = generate_packets(table, 2000, seed=3, match_share=1.0)
    assert keys4.src4 is not None and keys4.dst4 is not None
    for column in (keys4.src4, keys4.dst4):
        assert ((column.astype(np.int64) >> 17) == int(IPV4_BASE.network_address) >> 17).all()
    keys6 = generate_packets(table, 2000, seed=3, version=6, match_share=1.0)
    assert keys6.src6 is not None
    assert (
        (keys6.src6[:, 0] >> np.uint64(16)) == np.uint64(int(IPV6_BASE.network_address) >> 80)
    ).all()
    linear = LinearClassifier.compile(table)
    for keys in (keys4, keys6):  # every aimed packet matches its rule, if not an earlier one
        assert (linear.classify(keys) >= 0).all()
        portless = ~np.isin(keys.proto, [6, 17])
        assert (keys.sport[portless] == 0).all() and (keys.dport[portless] == 0).all()
