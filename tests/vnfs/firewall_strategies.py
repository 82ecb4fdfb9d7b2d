"""Hypothesis strategies for firewall rules that packets actually hit.

Addresses, prefix lengths, protocols and ports come from small pools shared with the
packets the tests build, so rules overlap, packets match them, and first-match order
matters. Used by the classifier tests (against the linear reference) and the firewall
graph tests (the verdict cache against the same reference).
"""

from __future__ import annotations

import ipaddress

from hypothesis import strategies as st

from nfaas.vnfs.firewall.rules import Action, Family, PortRange, Rule

V4 = ["198.18.0.1", "198.18.1.130", "198.19.255.254", "198.19.0.7"]
V6 = ["2001:2::1", "2001:2:0:1::80", "2001:2:0:ffff::9"]
V4_LENGTHS = [0, 15, 16, 23, 24, 25, 31, 32]
V6_LENGTHS = [0, 48, 63, 64, 65, 120, 128]
PROTOS = [1, 6, 17, 47, 58]
PORTS = [0, 53, 80, 443, 1023, 1024, 8080, 65535]


@st.composite
def networks(draw: st.DrawFn, version: int) -> ipaddress.IPv4Network | ipaddress.IPv6Network | None:
    """A prefix around one pool address (None: any address, prefix length 0)."""
    pool, lengths = (V4, V4_LENGTHS) if version == 4 else (V6, V6_LENGTHS)
    length = draw(st.sampled_from(lengths))
    if length == 0:
        return None
    return ipaddress.ip_network(f"{draw(st.sampled_from(pool))}/{length}", strict=False)


@st.composite
def port_ranges(draw: st.DrawFn) -> PortRange | None:
    """None, all ports, one pool port, or a range between two pool ports."""
    kind = draw(st.sampled_from(["none", "exact", "range", "full"]))
    if kind == "none":
        return None
    if kind == "full":
        return PortRange(0, 65535)
    lo = draw(st.sampled_from(PORTS))
    if kind == "exact":
        return PortRange.single(lo)
    return PortRange(lo, draw(st.sampled_from([p for p in PORTS if p >= lo])))


@st.composite
def rules(draw: st.DrawFn) -> Rule:
    family = draw(st.sampled_from([Family.IPV4, Family.IPV4, Family.IPV6, Family.ANY]))
    version = 6 if family is Family.IPV6 else 4
    src = dst = None
    if family is not Family.ANY:
        src, dst = draw(networks(version)), draw(networks(version))
    proto = draw(st.sampled_from([None, *PROTOS]))
    sport = dport = None
    if proto in (6, 17):
        sport, dport = draw(port_ranges()), draw(port_ranges())
    action = draw(st.sampled_from(list(Action)))
    return Rule(action, family, src, dst, proto, sport, dport)
