"""The stateful firewall graph: conntrack before rules, the verdict cache, live rule updates.

Packets are built with nfaas.nf.build, run through `firewall_graph(...).run_batch`, and the
outputs checked packet by packet. A hypothesis test holds the cache to the linear reference
classifier: with conntrack off, the graph must forward exactly the packets the rules accept,
before and after an incremental rule update.
"""

from __future__ import annotations

import ipaddress
import itertools
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from firewall_strategies import PORTS, PROTOS, V4, V6, rules
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nfaas.nf import build as B
from nfaas.nf.batch import PacketBatch
from nfaas.nf.graph import Graph
from nfaas.nf.headers import parse
from nfaas.nf.pcap import write_pcap
from nfaas.nf.state import ConnTrack, CtState
from nfaas.vnfs.firewall import (
    Firewall,
    FirewallFilter,
    Outcome,
    VerdictCache,
    firewall_graph,
    firewall_of,
)
from nfaas.vnfs.firewall.classifier import Classifier, FlowKeys
from nfaas.vnfs.firewall.linear import LinearClassifier
from nfaas.vnfs.firewall.nft import NftError, Ruleset, parse_nft
from nfaas.vnfs.firewall.rules import Action, Family, PortRange, Rule
from tshark import requires_tshark, tshark_fields

IN_HOST, IN_HOST2, OUT_HOST = "198.18.0.5", "198.18.0.6", "198.19.0.9"
IN6, OUT6 = "2001:2::5", "2001:2:0:1::9"
SYN, ACK, FIN, RST = B.TCP_SYN, B.TCP_ACK, B.TCP_FIN, B.TCP_RST

# Inside may open web connections; nothing else is allowed, in either direction.
WEB_ONLY = """
table inet fw {
    chain forward {
        type filter hook forward priority 0; policy drop;
        ip saddr 198.18.0.0/24 tcp dport 80 accept
        ip6 saddr 2001:2::/64 tcp dport 80 accept
        ip saddr 198.18.0.0/24 udp dport 53 accept
        meta l4proto icmp reject
    }
}
"""


def tcp(src: str, dst: str, sport: int, dport: int, flags: int, payload: bytes = b"") -> bytes:
    return B.tcp_frame(src, dst, sport, dport, payload, flags=flags)


def udp(src: str, dst: str, sport: int, dport: int, payload: bytes = b"q") -> bytes:
    return B.udp_frame(src, dst, sport, dport, payload)


def run(
    g: Graph, now: float, inside: Sequence[bytes] = (), outside: Sequence[bytes] = ()
) -> dict[str, list[bytes]]:
    batches = {}
    if inside:
        batches["inside"] = PacketBatch.from_bytes(inside)
    if outside:
        batches["outside"] = PacketBatch.from_bytes(outside)
    return {port: b.to_list() for port, b in g.run_batch(batches, now).items()}


def drops(g: Graph, operator: str) -> dict[str, int]:
    return g.operator(operator).counters.drops


# -- conntrack before the rules ----------------------------------------------------------------


def test_replies_of_an_allowed_connection_pass_although_the_rules_drop_them() -> None:
    g = firewall_graph(parse_nft(WEB_ONLY), errors="raise")
    syn = tcp(IN_HOST, OUT_HOST, 40000, 80, SYN)
    synack = tcp(OUT_HOST, IN_HOST, 80, 40000, SYN | ACK)
    ack = tcp(IN_HOST, OUT_HOST, 40000, 80, ACK)
    request = tcp(IN_HOST, OUT_HOST, 40000, 80, ACK, b"GET / HTTP/1.0\r\n\r\n")
    response = tcp(OUT_HOST, IN_HOST, 80, 40000, ACK, b"HTTP/1.0 200 OK\r\n\r\n")
    fin = tcp(OUT_HOST, IN_HOST, 80, 40000, FIN | ACK)
    assert run(g, 1.0, inside=[syn]) == {"outside": [syn], "inside": []}
    # The rules allow nothing from port 80 outside: the reply passes as ESTABLISHED.
    assert run(g, 1.1, outside=[synack]) == {"inside": [synack], "outside": []}
    assert run(g, 1.2, inside=[ack, request], outside=[response, fin]) == {
        "outside": [ack, request],
        "inside": [response, fin],
    }
    # A new connection from outside to the same host is still refused by the rules.
    probe = tcp(OUT_HOST, IN_HOST, 80, 40001, SYN)
    assert run(g, 1.3, outside=[probe]) == {"inside": [], "outside": []}
    assert drops(g, "filter_outside") == {"rule": 1}
    extra = g.operator("filter_outside").counters.extra
    assert extra["ct_established"] == 3 and extra["ct_new"] == 1
    fw = firewall_of(g)
    assert [r["packets"] for r in fw.rule_counters()] == [1, 0, 0, 0]  # only the SYN met them
    assert fw.policy_packets == 1  # the probe


def test_udp_and_icmp_echo_replies_pass_as_established() -> None:
    rules = parse_nft(
        "ip saddr 198.18.0.0/24 udp dport 53 accept\n"
        "ip saddr 198.18.0.0/24 meta l4proto icmp accept\n"
        "drop\n"
    )
    g = firewall_graph(rules, errors="raise")
    query = udp(IN_HOST, OUT_HOST, 5353, 53)
    answer = udp(OUT_HOST, IN_HOST, 53, 5353, b"answer")
    ping = B.icmp_echo_frame(IN_HOST, OUT_HOST, ident=7, seq=1)
    pong = B.icmp_echo_frame(OUT_HOST, IN_HOST, ident=7, seq=1, reply=True)
    stray_pong = B.icmp_echo_frame(OUT_HOST, IN_HOST, ident=8, seq=1, reply=True)
    assert run(g, 1.0, inside=[query, ping])["outside"] == [query, ping]
    assert run(g, 1.1, outside=[answer, pong, stray_pong])["inside"] == [answer, pong]
    assert drops(g, "filter_outside") == {"invalid": 1}  # an echo reply nobody asked for


def test_related_icmp_error_about_an_allowed_connection_passes() -> None:
    g = firewall_graph(parse_nft(WEB_ONLY), errors="raise")
    syn = tcp(IN_HOST, OUT_HOST, 40000, 80, SYN)
    run(g, 1.0, inside=[syn])
    quoted = parse(PacketBatch.from_bytes([syn]))
    inner = syn[int(quoted.l3_offset[0]) :][:28]
    router = "198.19.0.1"
    unreachable = B.ethernet(B.ipv4(router, IN_HOST, 1, _icmp(3, 1, inner)))
    unrelated = B.ethernet(
        B.ipv4(router, IN_HOST, 1, _icmp(3, 1, tcp(IN_HOST, OUT_HOST, 40009, 80, SYN)[14:42]))
    )
    out = run(g, 1.1, outside=[unreachable, unrelated])
    assert out["inside"] == [unreachable]
    assert drops(g, "filter_outside") == {"invalid": 1}
    assert g.operator("filter_outside").counters.extra["ct_related"] == 1


def _icmp(kind: int, code: int, body: bytes) -> bytes:
    from nfaas.nf.checksum import internet_checksum

    head = bytes([kind, code, 0, 0, 0, 0, 0, 0])
    csum = internet_checksum(head + body)
    return head[:2] + csum.to_bytes(2, "big") + head[4:] + body


def test_ipv6_connections_are_tracked_too() -> None:
    g = firewall_graph(parse_nft(WEB_ONLY), errors="raise")
    syn = tcp(IN6, OUT6, 40000, 80, SYN)
    synack = tcp(OUT6, IN6, 80, 40000, SYN | ACK)
    refused = tcp(OUT6, IN6, 80, 40001, SYN)
    assert run(g, 1.0, inside=[syn])["outside"] == [syn]
    assert run(g, 1.1, outside=[synack, refused])["inside"] == [synack]


# -- refused connections leave nothing behind --------------------------------------------------


def test_a_dropped_syn_leaves_no_state_and_its_reply_is_dropped() -> None:
    g = firewall_graph(parse_nft(WEB_ONLY), errors="raise")
    fw = firewall_of(g)
    syn = tcp(OUT_HOST, IN_HOST, 50000, 22, SYN)  # ssh from outside: no rule allows it
    synack = tcp(IN_HOST, OUT_HOST, 22, 50000, SYN | ACK)
    assert run(g, 1.0, outside=[syn]) == {"inside": [], "outside": []}
    assert fw.conntrack is not None and len(fw.conntrack) == 0
    assert run(g, 1.1, inside=[synack]) == {"inside": [], "outside": []}
    assert drops(g, "filter_outside") == {"rule": 1}
    assert drops(g, "filter_inside") == {"invalid": 1}  # a SYN-ACK with no SYN before it
    assert len(fw.conntrack) == 0


def test_a_dropped_udp_packet_leaves_no_state_its_answer_is_a_new_flow() -> None:
    g = firewall_graph(parse_nft(WEB_ONLY), errors="raise")
    fw = firewall_of(g)
    probe = udp(OUT_HOST, IN_HOST, 53, 6000)
    answer = udp(IN_HOST, OUT_HOST, 6000, 53)  # the rules allow inside -> udp 53
    echo = udp(IN_HOST, OUT_HOST, 6000, 7)  # ... but not udp 7
    assert run(g, 1.0, outside=[probe])["inside"] == []
    assert fw.conntrack is not None and len(fw.conntrack) == 0
    # Had the dropped probe left an entry, both would pass as ESTABLISHED "replies".
    assert run(g, 1.1, inside=[answer, echo])["outside"] == [answer]
    assert drops(g, "filter_inside") == {"rule": 1}
    assert len(fw.conntrack) == 1  # the answer's own connection


def test_within_one_batch_packets_after_a_refused_new_one_are_tracked_without_it() -> None:
    """`Firewall.decide` on a batch holding both directions (one port, say)."""
    fw = Firewall(parse_nft(WEB_ONLY))
    syn = tcp(OUT_HOST, IN_HOST, 50000, 22, SYN)
    synack = tcp(IN_HOST, OUT_HOST, 22, 50000, SYN | ACK)
    probe = udp(OUT_HOST, IN_HOST, 53, 6000)
    answer = udp(IN_HOST, OUT_HOST, 6000, 53)
    allowed = tcp(IN_HOST, OUT_HOST, 40000, 80, SYN)
    allowed_reply = tcp(OUT_HOST, IN_HOST, 80, 40000, SYN | ACK)
    batch = PacketBatch.from_bytes([syn, probe, allowed, synack, answer, allowed_reply])
    d = fw.decide(batch, parse(batch), 1.0)
    assert d.outcome.tolist() == [
        Outcome.RULE,  # ssh SYN
        Outcome.RULE,  # udp probe
        Outcome.FORWARD,  # web SYN
        Outcome.INVALID,  # SYN-ACK of the refused ssh SYN
        Outcome.FORWARD,  # udp "answer": a NEW flow the rules allow
        Outcome.FORWARD,  # the web SYN's reply
    ]
    assert d.state.tolist() == [
        CtState.NEW, CtState.NEW, CtState.NEW, CtState.INVALID, CtState.NEW, CtState.ESTABLISHED,
    ]  # fmt: skip
    assert fw.conntrack is not None and len(fw.conntrack) == 2  # web, udp answer


def test_an_accepted_connection_stays_when_the_rules_later_refuse_it() -> None:
    """Netfilter keeps a confirmed entry: later NEW packets are refused, replies still pass."""
    fw = Firewall(parse_nft("udp dport 9 accept\ndrop\n"))
    g = firewall_graph(fw, errors="raise")
    first = udp(IN_HOST, OUT_HOST, 7000, 9)
    assert run(g, 1.0, inside=[first])["outside"] == [first]
    fw.delete(0)
    assert run(g, 1.1, inside=[first])["outside"] == []  # still NEW (no reply yet): refused
    reply = udp(OUT_HOST, IN_HOST, 9, 7000)
    assert run(g, 1.2, outside=[reply])["inside"] == [reply]


def test_invalid_packets_are_dropped_or_classified() -> None:
    stray_ack = tcp(OUT_HOST, IN_HOST, 80, 40000, ACK)
    strict = firewall_graph(parse_nft("accept\n"), errors="raise")
    assert run(strict, 1.0, outside=[stray_ack])["inside"] == []
    assert drops(strict, "filter_outside") == {"invalid": 1}
    lenient = firewall_graph(parse_nft("accept\n"), drop_invalid=False, errors="raise")
    assert run(lenient, 1.0, outside=[stray_ack])["inside"] == [stray_ack]


def test_non_ip_frames_pass_or_drop_as_configured() -> None:
    arp = B.ethernet(bytes(28), ethertype=0x0806)
    passing = firewall_graph(parse_nft("drop\n"), errors="raise")
    assert run(passing, 1.0, inside=[arp])["outside"] == [arp]
    dropping = firewall_graph(parse_nft("drop\n"), non_ip=Action.DROP, errors="raise")
    assert run(dropping, 1.0, inside=[arp])["outside"] == []
    assert drops(dropping, "filter_inside") == {"non_ip": 1}


def test_malformed_packets_are_counted_drops() -> None:
    g = firewall_graph(parse_nft("accept\n"), errors="raise")
    good = udp(IN_HOST, OUT_HOST, 1, 2)
    truncated = good[:30]
    bad_offset = bytearray(tcp(IN_HOST, OUT_HOST, 1, 2, SYN))
    bad_offset[14 + 20 + 12] = 0x20  # data offset 2 words: shorter than a TCP header
    assert run(g, 1.0, inside=[truncated, good, bytes(bad_offset)])["outside"] == [good]
    assert drops(g, "parse_inside") == {"truncated_ip": 1, "bad_tcp_offset": 1}


# -- the verdict cache -------------------------------------------------------------------------


def test_flow_cache_answers_repeated_flows() -> None:
    fw = Firewall(parse_nft(WEB_ONLY), conntrack=False)
    g = firewall_graph(fw, errors="raise")
    flows = [udp(IN_HOST, OUT_HOST, 1000 + i, 53) for i in range(10)]
    assert run(g, 1.0, inside=flows + flows)["outside"] == flows + flows
    assert fw.cache is not None
    assert (fw.cache.hits, fw.cache.misses, len(fw.cache)) == (0, 20, 10)
    assert run(g, 2.0, inside=flows)["outside"] == flows
    assert (fw.cache.hits, fw.cache.misses) == (10, 20)
    assert fw.rule_counters()[2]["packets"] == 30  # counted for hits and misses alike


def test_flow_cache_entries_expire() -> None:
    fw = Firewall(parse_nft("accept\n"), conntrack=False)
    assert fw.cache is not None
    fw.cache.table.timeout = 5.0
    g = firewall_graph(fw, errors="raise")
    flow = [udp(IN_HOST, OUT_HOST, 1, 2)]
    run(g, 1.0, inside=flow)
    run(g, 3.0, inside=flow)
    assert fw.cache.hits == 1
    run(g, 20.0, inside=flow)  # idle 17 s > 5 s: classified again
    assert (fw.cache.hits, fw.cache.misses) == (1, 2)
    g.tick(40.0)  # the sweep (every 10 s) frees idle entries
    assert len(fw.cache) == 0


def test_new_flows_of_unanswered_udp_hit_the_cache_with_conntrack() -> None:
    fw = Firewall(parse_nft(WEB_ONLY))
    g = firewall_graph(fw, errors="raise")
    stream = [udp(IN_HOST, OUT_HOST, 4000 + i, 53) for i in range(4)]
    for k in range(3):  # one-way UDP stays NEW: every packet meets the rules
        assert run(g, 1.0 + k, inside=stream)["outside"] == stream
    assert fw.cache is not None and (fw.cache.hits, fw.cache.misses) == (8, 4)


def test_rule_updates_between_batches_take_effect_and_invalidate_the_cache() -> None:
    fw = Firewall(parse_nft(WEB_ONLY), conntrack=False)
    g = firewall_graph(fw, errors="raise")
    web = tcp(IN_HOST, OUT_HOST, 40000, 80, SYN)
    other = tcp(IN_HOST2, OUT_HOST, 40000, 80, SYN)
    assert run(g, 1.0, inside=[web, other])["outside"] == [web, other]
    positions, added = fw.add_nft("ip saddr 198.18.0.5 tcp dport 80 counter drop", position=0)
    assert positions == range(0, 1) and added[0].action is Action.DROP
    assert run(g, 2.0, inside=[web, other])["outside"] == [other]
    assert drops(g, "filter_inside") == {"rule": 1}
    counters = fw.rule_counters()
    assert [c["packets"] for c in counters] == [1, 3, 0, 0, 0]  # old counts moved down
    assert counters[0]["rule"] == "ip saddr 198.18.0.5/32 tcp dport 80 counter drop"
    removed = fw.delete(0)
    assert removed is not None and removed.action is Action.DROP
    assert run(g, 3.0, inside=[web, other])["outside"] == [web, other]
    appended = fw.append(Rule(Action.DROP))
    assert appended == range(len(fw) - 1, len(fw))
    fw.delete(0)  # the web rule: the catch-all drop now decides
    assert run(g, 4.0, inside=[web])["outside"] == []
    assert fw.cache is not None and fw.cache.generation == 5


def test_rule_text_errors_name_line_and_column() -> None:
    fw = Firewall(parse_nft(WEB_ONLY))
    with pytest.raises(NftError) as err:
        fw.add_nft("tcp dport 80 accept\nip saddr 198.18.0.1/16 drop", source="request")
    assert (err.value.line, err.value.column) == (2, 10)
    assert len(fw) == 4  # nothing was added
    with pytest.raises(IndexError):
        fw.delete(9)


def test_export_reads_back_to_the_same_rules() -> None:
    fw = Firewall(parse_nft(WEB_ONLY))
    fw.append(Rule(Action.ACCEPT, Family.IPV4, dst=ipaddress.IPv4Network("198.18.0.0/24"),
                   proto=17, dport=PortRange(5000, 5100)))  # fmt: skip
    back = parse_nft(fw.to_nft())
    assert back.rules == fw.rules and back.policy is Action.DROP


def test_a_firewall_built_from_a_bare_classifier_counts_but_cannot_export() -> None:
    rules = parse_nft(WEB_ONLY)
    fw = Firewall(Classifier.compile(rules.rules, Action.DROP))
    g = firewall_graph(fw, errors="raise")
    assert run(g, 1.0, inside=[tcp(IN_HOST, OUT_HOST, 1, 80, SYN)])["outside"]
    assert fw.rule_counters()[0]["packets"] == 1 and fw.rule_counters()[0]["rule"] is None
    with pytest.raises(LookupError, match="does not keep its rules"):
        fw.to_nft()


def test_options_go_to_the_firewall_not_to_the_graph_when_given_a_firewall() -> None:
    with pytest.raises(ValueError, match="conntrack"):
        firewall_graph(Firewall(Ruleset()), conntrack=False)


# -- reject --------------------------------------------------------------------------------------


def test_reject_answers_with_port_unreachable_out_of_the_ingress_port() -> None:
    g = firewall_graph(parse_nft("tcp dport 23 reject\nudp dport 69 reject\naccept\n"),
                       send_rejects=True, errors="raise")  # fmt: skip
    telnet = tcp(IN_HOST, OUT_HOST, 40000, 23, SYN)
    tftp6 = udp(IN6, OUT6, 5000, 69, b"x" * 2000)  # quoted only up to 1232 bytes
    out = g.run_batch({"inside": PacketBatch.from_bytes([telnet, tftp6])}, 1.0)
    assert len(out["outside"]) == 0
    answers = out["inside"]
    h = parse(answers)
    assert h.valid.all() and len(answers) == 2
    assert B.ipv4_checksums_ok(answers, h).all() and B.l4_checksums_ok(answers, h).all()
    first, second = answers.packet(0), answers.packet(1)
    assert (int(h.icmp_type[0]), int(h.icmp_code[0])) == (3, 3)
    assert str(ipaddress.IPv4Address(int(h.ipv4_src[0]))) == OUT_HOST
    assert str(ipaddress.IPv4Address(int(h.ipv4_dst[0]))) == IN_HOST
    assert first[:6] == telnet[6:12] and first[6:12] == telnet[:6]  # MACs swapped
    assert first[14 + 20 + 8 :] == telnet[14:]  # the whole small packet is quoted
    assert (int(h.icmp_type[1]), int(h.icmp_code[1])) == (1, 4)
    assert len(second) == 14 + 40 + 8 + 1232
    assert second[14 + 48 :] == tftp6[14 : 14 + 1232]
    assert drops(g, "filter_inside") == {"reject": 2}
    assert g.operator("filter_inside").counters.extra["rejects_sent"] == 2


def test_no_answer_to_icmp_errors_or_multicast_and_at_most_max_rejects() -> None:
    fw = Firewall(parse_nft("reject\n"), conntrack=False)  # (conntrack: the error is INVALID)
    g = firewall_graph(fw, send_rejects=True, errors="raise")
    stage = g.operator("filter_inside")
    assert isinstance(stage, FirewallFilter)
    stage.max_rejects = 3
    error = B.ethernet(B.ipv4(IN_HOST, OUT_HOST, 1, _icmp(3, 3, bytes(28))))
    multicast = udp(IN_HOST, "224.0.0.251", 5353, 5353)
    flood = [udp(IN_HOST, OUT_HOST, 1000 + i, 9) for i in range(5)]
    out = run(g, 1.0, inside=[error, multicast, *flood])
    assert len(out["inside"]) == 3 and out["outside"] == []
    assert drops(g, "filter_inside") == {"reject": 7}


@requires_tshark
def test_tshark_reads_the_reject_answer(tmp_path: Path) -> None:
    g = firewall_graph(parse_nft("reject\n"), send_rejects=True, errors="raise")
    packet = tcp(IN_HOST, OUT_HOST, 40000, 23, SYN)
    answers = g.run_batch({"inside": PacketBatch.from_bytes([packet])}, 1.0)["inside"]
    path = tmp_path / "reject.pcap"
    write_pcap(path, [answers])
    fields = ["icmp.type", "icmp.code", "icmp.checksum.status", "ip.checksum.status",
              "ip.src", "ip.dst", "tcp.srcport", "tcp.dstport"]  # fmt: skip
    # Two IP headers: the answer's, then the quoted one (checksum status 1: good, 0: bad).
    assert tshark_fields(path, fields) == [
        {
            "icmp.type": ["3"],
            "icmp.code": ["3"],
            "icmp.checksum.status": ["1"],
            "ip.checksum.status": ["1", "1"],
            "ip.src": [OUT_HOST, IN_HOST],
            "ip.dst": [IN_HOST, OUT_HOST],
            "tcp.srcport": ["40000"],
            "tcp.dstport": ["23"],
        }
    ]


# -- the cache never changes a verdict (hypothesis) ----------------------------------------------

Flow = tuple[str, str, int, int, int]


@st.composite
def flows(draw: st.DrawFn) -> Flow:
    pool = draw(st.sampled_from([V4, V6]))
    src, dst = draw(st.sampled_from(pool)), draw(st.sampled_from(pool))
    proto = draw(st.sampled_from(PROTOS))
    ports = (
        (draw(st.sampled_from(PORTS)), draw(st.sampled_from(PORTS))) if proto in (6, 17) else (0, 0)
    )
    return src, dst, proto, *ports


def frame(flow: Flow) -> bytes:
    src, dst, proto, sport, dport = flow
    v6 = ":" in src
    if proto == 6:
        segment = B.tcp(sport, dport, src=src, dst=dst, flags=ACK)
    elif proto == 17:
        segment = B.udp(sport, dport, b"u", src=src, dst=dst)
    elif proto == 1 and not v6:
        segment = B.icmp_echo(1, 1)
    elif proto == 58 and v6:
        segment = B.icmpv6_echo(1, 1, src=src, dst=dst)
    else:
        segment = bytes(8)
    return B.ethernet(B._ip_packet(src, dst, proto, segment), ethertype=0x86DD if v6 else 0x0800)


def reference(rule_list: list[Rule], policy: Action, batch: list[Flow]) -> list[Action]:
    """Each flow's verdict by the linear scan (the oracle of the classifier tests)."""
    v6 = np.array([":" in f[0] for f in batch])
    addr = [[int(ipaddress.ip_address(f[k])) for f in batch] for k in (0, 1)]
    src4 = np.array([a if not s else 0 for a, s in zip(addr[0], v6, strict=True)], np.uint32)
    dst4 = np.array([a if not s else 0 for a, s in zip(addr[1], v6, strict=True)], np.uint32)
    src6 = np.array([[a >> 64, a & (2**64 - 1)] for a in addr[0]], np.uint64).reshape(-1, 2)
    dst6 = np.array([[a >> 64, a & (2**64 - 1)] for a in addr[1]], np.uint64).reshape(-1, 2)
    keys = FlowKeys(
        np.array([f[2] for f in batch], np.uint8),
        np.array([f[3] for f in batch], np.uint16),
        np.array([f[4] for f in batch], np.uint16),
        src4, dst4, src6, dst6, v6,
    )  # fmt: skip
    matches = LinearClassifier.compile(rule_list, policy).classify(keys)
    return [rule_list[m].action if m >= 0 else policy for m in matches.tolist()]


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rule_list=st.lists(rules(), max_size=25),
    policy=st.sampled_from([Action.ACCEPT, Action.DROP]),
    pool=st.lists(flows(), min_size=1, max_size=12),
    picks=st.lists(st.lists(st.integers(0, 11), min_size=1, max_size=20), min_size=2, max_size=3),
    update=st.tuples(st.booleans(), st.integers(0, 100), rules()),
)
def test_the_cache_never_changes_a_verdict(
    rule_list: list[Rule],
    policy: Action,
    pool: list[Flow],
    picks: list[list[int]],
    update: tuple[bool, int, Rule],
) -> None:
    fw = Firewall(Ruleset(list(rule_list), policy), conntrack=False, flow_cache=True)
    g = firewall_graph(fw, errors="raise")
    current = list(rule_list)

    def check(now: float, port: str, other: str) -> None:
        for pick in picks + picks:  # the second round is answered by the cache
            batch = [pool[i % len(pool)] for i in pick]
            verdicts = reference(current, policy, batch)
            out = g.run_batch({port: PacketBatch.from_bytes([frame(f) for f in batch])}, now)
            expected = [
                frame(f) for f, v in zip(batch, verdicts, strict=True) if v is Action.ACCEPT
            ]
            assert out[other].to_list() == expected
            assert len(out[port]) == 0

    check(1.0, "inside", "outside")
    is_insert, where, rule = update
    if is_insert or not current:
        fw.insert(where % (len(current) + 1), rule)
        current.insert(where % (len(current) + 1), rule)
    else:
        fw.delete(where % len(current))
        del current[where % len(current)]
    check(2.0, "outside", "inside")
    assert fw.cache is not None and fw.cache.hits > 0


# -- a batch decides as packet-by-packet would (hypothesis) ---------------------------------------

HOSTS = ["198.18.0.1", "198.18.0.2", "198.19.0.1"]
KINDS = ["syn", "synack", "ack", "fin", "rst", "udp", "echo", "echo_reply"]
FLAGS = {"syn": SYN, "synack": SYN | ACK, "ack": ACK, "fin": FIN | ACK, "rst": RST}


@st.composite
def conversation_packets(draw: st.DrawFn) -> bytes:
    src, dst = draw(st.sampled_from([(a, b) for a in HOSTS for b in HOSTS if a != b]))
    kind = draw(st.sampled_from(KINDS))
    sport, dport = draw(st.sampled_from([(1000, 80), (80, 1000), (1000, 53), (53, 1000)]))
    if kind in FLAGS:
        return tcp(src, dst, sport, dport, FLAGS[kind])
    if kind == "udp":
        return udp(src, dst, sport, dport)
    return B.icmp_echo_frame(src, dst, ident=draw(st.sampled_from([1, 2])), reply=kind != "echo")


@st.composite
def host_rules(draw: st.DrawFn) -> Rule:
    def host() -> ipaddress.IPv4Network | None:
        pick = draw(st.sampled_from([None, *HOSTS]))
        return None if pick is None else ipaddress.IPv4Network(f"{pick}/32")

    proto = draw(st.sampled_from([None, 1, 6, 17]))
    dport = (
        draw(st.sampled_from([None, PortRange(80, 80), PortRange(53, 53)]))
        if proto in (6, 17)
        else None
    )
    action = draw(st.sampled_from([Action.ACCEPT, Action.DROP]))
    return Rule(action, Family.IPV4, host(), host(), proto, None, dport)


def _connections(fw: Firewall) -> list[tuple[int, int, int]]:
    assert fw.conntrack is not None
    table = fw.conntrack.table
    rows = table.rows()
    keys = table.keys_of(rows).tolist()
    records = table.records[rows]
    return sorted(zip(keys, records["state"].tolist(), records["orig"].tolist(), strict=True))


def _decide_in_batches(
    fw: Firewall, packets: list[bytes], bounds: Sequence[int]
) -> list[tuple[int, int]]:
    """(outcome, conntrack state) per packet, deciding `packets[bounds[i]:bounds[i + 1]]`
    as one batch each, at 1 ms per packet from t = 1 s."""
    decided: list[tuple[int, int]] = []
    for start, end in itertools.pairwise(bounds):
        if start < end:
            batch = PacketBatch.from_bytes(packets[start:end])
            d = fw.decide(batch, parse(batch), 1.0 + start * 1e-3)
            decided += zip(d.outcome.tolist(), d.state.tolist(), strict=True)
    return decided


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    rule_list=st.lists(host_rules(), max_size=6),
    policy=st.sampled_from([Action.ACCEPT, Action.DROP]),
    packets=st.lists(conversation_packets(), min_size=1, max_size=30),
    cuts=st.lists(st.integers(1, 29), max_size=3),
    drop_invalid=st.booleans(),
)
def test_batches_decide_like_one_packet_at_a_time(
    rule_list: list[Rule], policy: Action, packets: list[bytes], cuts: list[int],
    drop_invalid: bool,
) -> None:  # fmt: skip
    """Only connections whose first packet is accepted are recorded, and a batch's later
    packets see the table as packet-at-a-time processing (netfilter's) leaves it: every
    packet gets the same state and outcome, and the same connections remain."""
    one_by_one = Firewall(Ruleset(list(rule_list), policy), drop_invalid=drop_invalid)
    expected = _decide_in_batches(one_by_one, packets, range(len(packets) + 1))
    batched = Firewall(Ruleset(list(rule_list), policy), drop_invalid=drop_invalid)
    bounds = [0, *sorted(c for c in cuts if c < len(packets)), len(packets)]
    assert _decide_in_batches(batched, packets, bounds) == expected
    assert _connections(batched) == _connections(one_by_one)


# The stored failing examples of the test above: a SYN, a RST back and a SYN back of one
# connection, in one batch, with the first or the last SYN refused.
SYN_RST_SYN_BACK = [
    tcp("198.19.0.1", "198.18.0.2", 1000, 53, SYN),
    tcp("198.18.0.2", "198.19.0.1", 53, 1000, RST),
    tcp("198.18.0.2", "198.19.0.1", 53, 1000, SYN),
]


def test_a_reset_to_a_refused_syn_is_invalid_and_the_syn_back_opens_the_connection() -> None:
    fw = Firewall(parse_nft("ip daddr 198.18.0.2 drop\n"))  # policy accept
    batch = PacketBatch.from_bytes(SYN_RST_SYN_BACK)
    d = fw.decide(batch, parse(batch), 1.0)
    # Had the refused SYN's connection been seen, the RST would pass as its reply.
    assert d.outcome.tolist() == [Outcome.RULE, Outcome.INVALID, Outcome.FORWARD]
    assert d.state.tolist() == [CtState.NEW, CtState.INVALID, CtState.NEW]
    assert fw.conntrack is not None and len(fw.conntrack) == 1
    synack = tcp("198.19.0.1", "198.18.0.2", 1000, 53, SYN | ACK)  # the SYN back's answer
    assert fw.decide(PacketBatch.from_bytes([synack]), parse(PacketBatch.from_bytes([synack])),
                     1.1).outcome.tolist() == [Outcome.FORWARD]  # fmt: skip


def test_a_refused_syn_after_a_reset_leaves_no_connection() -> None:
    fw = Firewall(parse_nft("ip daddr 198.18.0.2 accept\ndrop\n"))
    batch = PacketBatch.from_bytes(SYN_RST_SYN_BACK)
    d = fw.decide(batch, parse(batch), 1.0)
    assert d.outcome.tolist() == [Outcome.FORWARD, Outcome.FORWARD, Outcome.RULE]
    assert fw.conntrack is not None and len(fw.conntrack) == 0  # the RST ended the first


def test_a_refused_syn_in_time_wait_leaves_no_connection() -> None:
    """Netfilter kills a TIME_WAIT connection when a SYN re-opens it, accepted or not."""
    fw = Firewall(parse_nft("ip saddr 198.18.0.0/24 accept\ndrop\n"))
    a, z = IN_HOST, OUT_HOST
    close = [tcp(a, z, 1000, 80, SYN), tcp(z, a, 80, 1000, SYN | ACK), tcp(a, z, 1000, 80, ACK),
             tcp(a, z, 1000, 80, FIN | ACK), tcp(z, a, 80, 1000, ACK),
             tcp(z, a, 80, 1000, FIN | ACK), tcp(a, z, 1000, 80, ACK)]  # fmt: skip
    reopen = [tcp(z, a, 80, 1000, SYN), tcp(a, z, 1000, 80, SYN | ACK)]
    batch = PacketBatch.from_bytes(close + reopen)  # all in one batch
    d = fw.decide(batch, parse(batch), 1.0)
    assert d.outcome.tolist() == [Outcome.FORWARD] * 7 + [Outcome.RULE, Outcome.INVALID]
    assert fw.conntrack is not None and len(fw.conntrack) == 0


def test_with_conntrack_accepted_tcp_flows_are_not_cached_refused_ones_are() -> None:
    fw = Firewall(parse_nft(WEB_ONLY))
    g = firewall_graph(fw, errors="raise")
    opened = tcp(IN_HOST, OUT_HOST, 40000, 80, SYN)  # accepted: its connection answers next time
    refused = tcp(IN_HOST, OUT_HOST, 40000, 25, SYN)  # refused: retries ask the rules again
    run(g, 1.0, inside=[opened, refused])
    run(g, 2.0, inside=[opened, refused])  # both retransmitted (no reply yet): NEW again
    assert fw.cache is not None
    assert (len(fw.cache), fw.cache.hits, fw.cache.misses) == (1, 1, 3)


def test_a_shared_tracker_and_cache_are_used_even_while_empty() -> None:
    ct, cache = ConnTrack(), VerdictCache(timeout=5.0, seed=1)
    fw = Firewall(parse_nft("accept\n"), conntrack=ct, flow_cache=cache)
    assert fw.conntrack is ct and fw.cache is cache
    run(firewall_graph(fw, errors="raise"), 1.0, inside=[udp(IN_HOST, OUT_HOST, 1, 2)])
    assert len(ct) == 1 and len(cache) == 1
