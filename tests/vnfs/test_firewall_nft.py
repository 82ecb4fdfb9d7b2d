"""nftables import/export (nfaas.vnfs.firewall.nft), checked against the real `nft` binary."""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nfaas.vnfs.firewall.generate import generate_rules
from nfaas.vnfs.firewall.nft import (
    NftError,
    Ruleset,
    format_rule,
    format_ruleset,
    load_nft,
    parse_nft,
)
from nfaas.vnfs.firewall.rules import Action, Family, PortRange, Rule

SAMPLE = """\
flush ruleset
table inet edge {
    chain fw_in {
        type filter hook forward priority filter; policy drop;
        ip saddr 198.18.0.0/16 tcp dport 80-90 accept
        ip6 daddr 2001:2::/64 udp sport { 53, 1024-65535 } counter drop comment "dns"
        meta l4proto icmp reject # handle 7
        ip protocol 47 accept; meta nfproto ipv6 meta l4proto ipv6-icmp accept
        tcp dport { 22, 443 } ip daddr { 198.18.1.1, 198.19.0.0/24 } drop
    }
}
"""
V4 = ipaddress.IPv4Network
V6 = ipaddress.IPv6Network


def test_parse_table_block() -> None:
    ruleset = parse_nft(SAMPLE)
    assert (ruleset.table, ruleset.chain, ruleset.hook, ruleset.priority) == (
        "edge",
        "fw_in",
        "forward",
        0,
    )
    assert ruleset.policy is Action.DROP
    web = [V4("198.18.1.1/32"), V4("198.19.0.0/24")]
    dns = Rule(
        Action.DROP, Family.IPV6, dst=V6("2001:2::/64"), proto=17, counter=True, comment="dns"
    )
    assert ruleset.rules == [
        Rule(Action.ACCEPT, Family.IPV4, src=V4("198.18.0.0/16"), proto=6, dport=PortRange(80, 90)),
        # a set expands into one rule per element, in the set's order
        *[replace(dns, sport=ports) for ports in (PortRange(53, 53), PortRange(1024, 65535))],
        Rule(Action.REJECT, proto=1, handle=7),
        Rule(Action.ACCEPT, Family.IPV4, proto=47),
        Rule(Action.ACCEPT, Family.IPV6, proto=58),
        # sets expand in the order the matches are listed in the model: src, dst, proto, ports
        *[
            Rule(Action.DROP, Family.IPV4, dst=d, proto=6, dport=PortRange.single(p))
            for d in web
            for p in (22, 443)
        ],
    ]


def test_plain_rule_lines_and_add_rule() -> None:
    text = "tcp dport 22 drop\n\nadd rule ip filter input udp dport 53 accept\nmeta nfproto ipv4 accept"
    ruleset = parse_nft(text)
    assert ruleset.rules == [
        Rule(Action.DROP, proto=6, dport=PortRange.single(22)),
        Rule(Action.ACCEPT, Family.IPV4, proto=17, dport=PortRange.single(53)),
        Rule(Action.ACCEPT, Family.IPV4),
    ]
    assert ruleset.policy is Action.ACCEPT


def test_load_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.nft"
    path.write_text("tcp dport 80 accept\ntcp dport 99999 accept\n")
    with pytest.raises(NftError, match=r"bad\.nft:2:11: .*99999"):
        load_nft(path)
    path.write_text(SAMPLE)
    assert load_nft(path) == parse_nft(SAMPLE)


def test_format_rule() -> None:
    rule = Rule(Action.DROP, Family.IPV4, src=V4("198.18.0.0/15"), proto=17, sport=PortRange(1, 2),
                dport=PortRange.single(53), counter=True, comment="x y", handle=3)  # fmt: skip
    assert (
        format_rule(rule)
        == 'ip saddr 198.18.0.0/15 udp sport 1-2 udp dport 53 counter drop comment "x y" # handle 3'
    )
    assert format_rule(Rule(Action.ACCEPT)) == "accept"


@pytest.mark.parametrize(
    ("text", "line", "column", "token"),
    [
        ("tcp dport 80 acept", 1, 14, "acept"),
        ("accept\nip saddr 198.18.0.1/16 drop", 2, 10, "198.18.0.1/16"),
        ("ip saddr 2001:2::/48 drop", 1, 10, "2001:2::/48"),
        ("tcp dport 80-70 drop", 1, 11, "80-70"),
        ("tcp dport http drop", 1, 11, "http"),
        ("udp sport { 53, } accept", 1, 17, "}"),
        ("meta l4proto foo accept", 1, 14, "foo"),
        ("ip saddr 198.18.0.0/16", 1, 23, "end of input"),
        ("tcp dport 22 accept drop", 1, 21, "drop"),
        ("ip saddr 198.18.0.0/16 ip6 daddr 2001:2::/48 accept", 1, 24, "ip6"),
        ("tcp dport 1 udp sport 2 accept", 1, 13, "udp"),
        ("meta l4proto udp tcp dport 5 accept", 1, 1, "meta"),
        ("ip saddr != 198.18.0.0/16 accept", 1, 10, "!"),
        (
            "table inet t {\n  chain c {\n    type filter hook input priority 0; policy reject;\n  }\n}",
            3,
            47,
            "reject",
        ),
        ("table inet t {\n  chain c {\n    tcp dport 1 accept\n", 4, 1, "end of input"),
        ("table inet t { chain a { accept }\n chain b { drop } }", 2, 8, "b"),
        ("table bridge t { }", 1, 7, "bridge"),
        ("reject with tcp reset", 1, 8, "with"),
        ('accept comment "unterminated', 1, 16, '"'),
    ],
)
def test_errors_name_line_column_and_token(text: str, line: int, column: int, token: str) -> None:
    with pytest.raises(NftError) as info:
        parse_nft(text, "rules.nft")
    error = info.value
    assert (error.line, error.column, error.token) == (line, column, token), str(error)
    assert str(error).startswith(f"rules.nft:{line}:{column}: ")


# --- round trip ---------------------------------------------------------------------------------

COMMENTS = st.text(
    st.characters(min_codepoint=32, max_codepoint=126, blacklist_characters='"'), max_size=20
)


@st.composite
def rules(draw: st.DrawFn) -> Rule:
    family = draw(st.sampled_from(list(Family)))
    src = dst = None
    if family is not Family.ANY:
        version, base = (4, "198.18.0.0/15") if family is Family.IPV4 else (6, "2001:2::/48")
        network = ipaddress.ip_network(base)
        bits = network.max_prefixlen

        def prefix() -> V4 | V6 | None:
            length = draw(st.sampled_from([None, 0, network.prefixlen, bits - 8, bits]))
            if length is None:
                return None
            offset = draw(st.integers(0, network.num_addresses - 1))
            return ipaddress.ip_network(
                (int(network.network_address) + offset, length), strict=False
            )

        src, dst = prefix(), prefix()
        assert version in (4, 6)
    proto = draw(st.sampled_from([None, 1, 6, 17, 47, 58, 132]))
    ports = st.one_of(st.none(), st.builds(lambda a, b: PortRange(min(a, b), max(a, b)),
                                            st.integers(0, 65535), st.integers(0, 65535)))  # fmt: skip
    sport, dport = (draw(ports), draw(ports)) if proto in (6, 17) else (None, None)
    return Rule(
        action=draw(st.sampled_from(list(Action))),
        family=family,
        src=src,
        dst=dst,
        proto=proto,
        sport=sport,
        dport=dport,
        counter=draw(st.booleans()),
        comment=draw(st.one_of(st.none(), COMMENTS)),
        handle=draw(st.one_of(st.none(), st.integers(0, 2**31))),
    )


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(rules(), max_size=12), st.sampled_from([Action.ACCEPT, Action.DROP]))
def test_emit_then_parse_gives_the_same_rules(rule_list: list[Rule], policy: Action) -> None:
    ruleset = Ruleset(rule_list, policy, table="t1", chain="c1", hook="input", priority=-5)
    assert parse_nft(format_ruleset(ruleset)) == ruleset
    plain = "\n".join(format_rule(rule) for rule in rule_list)
    assert parse_nft(plain).rules == rule_list


# --- the real nft accepts what we write ---------------------------------------------------------

needs_nft = pytest.mark.skipif(
    shutil.which("nft") is None or shutil.which("ip") is None,
    reason="needs nft and ip (nftables, iproute2)",
)


@pytest.fixture
def netns() -> Iterator[str]:
    name = f"nfaas-fw-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


def nft_check(netns: str, path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", "netns", "exec", netns, "nft", "-c", "-f", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )


@needs_nft
def test_real_nft_accepts_emitted_rulesets(netns: str, tmp_path: Path) -> None:
    generated = Ruleset(list(generate_rules(300, seed=21, ipv6_share=0.3)), Action.DROP)
    for name, ruleset in (("sample", parse_nft(SAMPLE)), ("generated", generated)):
        path = tmp_path / f"{name}.nft"
        path.write_text(format_ruleset(ruleset))
        result = nft_check(netns, path)
        assert result.returncode == 0, result.stderr
    broken = tmp_path / "broken.nft"  # the check is real: nft rejects what it should
    broken.write_text(format_ruleset(generated).replace(" accept", " acept", 1))
    assert nft_check(netns, broken).returncode != 0


@needs_nft
@settings(
    max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(rules(), min_size=1, max_size=30))
def test_real_nft_accepts_random_rules(netns: str, tmp_path: Path, rule_list: list[Rule]) -> None:
    path = tmp_path / "random.nft"
    path.write_text(format_ruleset(replace(Ruleset(), rules=rule_list)))
    result = nft_check(netns, path)
    assert result.returncode == 0, result.stderr + path.read_text()
