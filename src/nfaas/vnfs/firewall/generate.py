"""Seeded ClassBench-like rule sets and matching traffic, for tests and benchmarks.

ClassBench (Taylor and Turner, INFOCOM 2005) showed that real ACLs use a small set of prefix
lengths, mostly exact or wildcard ports with a few well-known ranges, and mostly TCP/UDP. The
default `Profile` follows that shape. All addresses lie in the ranges reserved for tests and
benchmarks, 198.18.0.0/15 and 2001:2::/48 (a prefix length of 0 is the wildcard), so that the
same rules and packets can be sent through real nftables in a network namespace.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

import numpy as np

from nfaas.vnfs.firewall.classifier import FlowKeys
from nfaas.vnfs.firewall.rules import PORT_MAX, RuleTable

IPV4_BASE = ipaddress.IPv4Network("198.18.0.0/15")
IPV6_BASE = ipaddress.IPv6Network("2001:2::/48")
_U64 = np.uint64
_ALL = (1 << 64) - 1

Weights = dict[int, float]


@dataclass(frozen=True)
class Profile:
    """Probability tables for each field of a generated rule."""

    src_len4: Weights = field(
        default_factory=lambda: {0: 0.30, 16: 0.08, 20: 0.04, 24: 0.30, 28: 0.04, 32: 0.24}
    )
    dst_len4: Weights = field(
        default_factory=lambda: {0: 0.12, 16: 0.08, 24: 0.30, 28: 0.06, 32: 0.44}
    )
    src_len6: Weights = field(
        default_factory=lambda: {0: 0.30, 48: 0.10, 56: 0.10, 64: 0.30, 128: 0.20}
    )
    dst_len6: Weights = field(
        default_factory=lambda: {0: 0.12, 48: 0.08, 56: 0.10, 64: 0.30, 128: 0.40}
    )
    #: protocol number -> weight; -1 is "any protocol"
    proto: Weights = field(default_factory=lambda: {6: 0.60, 17: 0.25, 1: 0.05, -1: 0.10})
    #: port kinds for tcp/udp rules: 0 none, 1 exact, 2 range
    sport_kind: Weights = field(default_factory=lambda: {0: 0.85, 1: 0.05, 2: 0.10})
    dport_kind: Weights = field(default_factory=lambda: {0: 0.20, 1: 0.55, 2: 0.25})
    popular_ports: tuple[int, ...] = (80, 443, 53, 22, 25, 110, 123, 143, 993, 3306, 5432, 8080)
    popular_ranges: tuple[tuple[int, int], ...] = (
        (0, 1023),
        (1024, 65535),
        (6000, 6063),
        (8000, 8999),
        (33434, 33534),
    )
    #: share of rules with both addresses wildcarded whose destination is drawn again
    redraw_wild_pair: float = 0.9
    #: order rules roughly from narrow to broad (otherwise in drawing order)
    specific_first: bool = True
    #: action code (accept, drop, reject) -> weight
    action: Weights = field(default_factory=lambda: {0: 0.5, 1: 0.4, 2: 0.1})


CLASSBENCH_LIKE = Profile()


def _pick(rng: np.random.Generator, weights: Weights, n: int) -> np.ndarray:
    values = np.array(list(weights), dtype=np.int64)
    p = np.array(list(weights.values()), dtype=float)
    return rng.choice(values, size=n, p=p / p.sum())


def _mask64(length: np.ndarray) -> np.ndarray:
    """Masks of the top `length` bits (0..64) of a 64-bit word."""
    shift = np.clip(64 - length, 0, 63).astype(_U64)
    return np.where(length > 0, np.full(len(length), _ALL, dtype=_U64) << shift, _U64(0)).astype(
        _U64
    )


def _random_addresses(
    rng: np.random.Generator, version: int, n: int
) -> tuple[np.ndarray, np.ndarray]:
    """Uniform addresses inside the test range, as (hi, lo) words (IPv4 in lo's low 32 bits)."""
    if version == 4:
        host = rng.integers(0, 1 << (32 - IPV4_BASE.prefixlen), n, dtype=np.uint64)
        return np.zeros(n, _U64), _U64(int(IPV4_BASE.network_address)) | host
    base = int(IPV6_BASE.network_address)
    hi = _U64(base >> 64) | rng.integers(0, 1 << (64 - IPV6_BASE.prefixlen), n, dtype=np.uint64)
    lo = rng.integers(0, np.iinfo(np.uint64).max, n, dtype=np.uint64, endpoint=True)
    return hi, lo


def _prefix_masks(version: int, length: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    length = length.astype(np.int64)
    if version == 4:
        return np.zeros(len(length), _U64), _mask64(length) >> _U64(32)
    return _mask64(np.minimum(length, 64)), _mask64(np.maximum(length - 64, 0))


def _nonzero(weights: Weights) -> Weights:
    return {length: weight for length, weight in weights.items() if length}


def _ports(
    rng: np.random.Generator, profile: Profile, kinds: np.ndarray, popular: bool, broad: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    n = len(kinds)
    lo = np.full(n, -1, dtype=np.int32)
    hi = np.full(n, -1, dtype=np.int32)
    exact = kinds == 1
    chosen = rng.choice(np.array(profile.popular_ports), n)
    if popular:
        odd = (rng.random(n) < 0.5) & ~broad
        value = np.where(odd, rng.integers(1, PORT_MAX + 1, n), chosen)
    else:
        value = np.where(broad, chosen, rng.integers(1024, PORT_MAX + 1, n))
    lo[exact] = hi[exact] = value[exact]
    ranged = kinds == 2
    known = np.array(profile.popular_ranges, dtype=np.int32)[
        rng.integers(0, len(profile.popular_ranges), n)
    ]
    start = rng.integers(0, PORT_MAX - 255, n)
    width = rng.integers(1, 256, n)
    use_known = (rng.random(n) < 0.7) | broad
    lo[ranged] = np.where(use_known, known[:, 0], start)[ranged]
    hi[ranged] = np.where(use_known, known[:, 1], start + width)[ranged]
    return lo, hi


def generate_rules(
    n: int, seed: int = 0, *, ipv6_share: float = 0.0, profile: Profile = CLASSBENCH_LIKE
) -> RuleTable:
    """`n` distinct rules drawn from `profile`; a share `ipv6_share` of them are IPv6 rules.

    No two rules have the same match (as in ClassBench, a repeated match would be dead). A rule
    with both addresses wildcarded is a family-independent (inet) rule half of the time when
    the set mixes families.
    """
    rng = np.random.default_rng(seed)
    table = _draw_rules(rng, n, ipv6_share, profile)
    for _ in range(20):
        table = _first_of_each_match(table)
        if len(table) >= n:
            break
        extra = _draw_rules(rng, n - len(table) + 16, ipv6_share, profile)
        table = RuleTable(
            *(np.concatenate([getattr(table, c), getattr(extra, c)]) for c in _FIELDS)
        )
    table = table.take(np.arange(min(n, len(table))))
    return table.take(_specific_first(rng, table)) if profile.specific_first else table


def _specific_first(rng: np.random.Generator, table: RuleTable) -> np.ndarray:
    """An order with narrow rules before broad ones, as in hand-written ACLs (noisy, stable)."""
    width = table.src_len.astype(float) + table.dst_len.astype(float)
    width += np.where(table.proto >= 0, 4.0, 0.0) + np.where(table.dport_lo >= 0, 8.0, 0.0)
    noisy = width + rng.normal(0.0, 8.0, len(table))
    return np.argsort(-noisy, kind="stable")


_FIELDS = tuple(RuleTable.__dataclass_fields__)


def _first_of_each_match(table: RuleTable) -> RuleTable:
    """The rules whose match fields differ from every earlier rule's, in order."""
    if len(table) < 2:
        return table
    # A 64-bit hash of the match fields: a collision only drops a rule, which a generator may.
    digest = np.zeros(len(table), dtype=np.uint64)
    for column in _FIELDS[1:]:
        digest = (digest ^ getattr(table, column).astype(np.uint64)) * np.uint64(0x9E3779B97F4A7C15)
        digest ^= digest >> np.uint64(29)
    _, first = np.unique(digest, return_index=True)
    return table.take(np.sort(first))


def _draw_rules(rng: np.random.Generator, n: int, ipv6_share: float, profile: Profile) -> RuleTable:
    is6 = rng.random(n) < ipv6_share
    lengths = {
        side: np.where(
            is6,
            _pick(rng, getattr(profile, f"{side}_len6"), n),
            _pick(rng, getattr(profile, f"{side}_len4"), n),
        )
        for side in ("src", "dst")
    }
    # Real ACLs rarely wildcard both addresses: redraw most such destinations.
    both_wild = (
        (lengths["src"] == 0) & (lengths["dst"] == 0) & (rng.random(n) < profile.redraw_wild_pair)
    )
    redrawn = np.where(
        is6, _pick(rng, _nonzero(profile.dst_len6), n), _pick(rng, _nonzero(profile.dst_len4), n)
    )
    lengths["dst"] = np.where(both_wild, redrawn, lengths["dst"])
    columns: dict[str, np.ndarray] = {}
    for side in ("src", "dst"):
        length = lengths[side]
        hi = np.zeros(n, _U64)
        lo = np.zeros(n, _U64)
        for version, rows in ((4, ~is6), (6, is6)):
            r_hi, r_lo = _random_addresses(rng, version, n)
            m_hi, m_lo = _prefix_masks(version, length)
            hi = np.where(rows, r_hi & m_hi, hi)
            lo = np.where(rows, r_lo & m_lo, lo)
        columns[f"{side}_hi"], columns[f"{side}_lo"], columns[f"{side}_len"] = (
            hi,
            lo,
            length.astype(np.uint8),
        )
    family = np.where(is6, 6, 4)
    wild = (columns["src_len"] == 0) & (columns["dst_len"] == 0)
    family = np.where(wild & (ipv6_share > 0) & (rng.random(n) < 0.5), 0, family)
    proto = _pick(rng, profile.proto, n)
    proto = np.where(is6 & (proto == 1), 58, proto)
    has_ports = (proto == 6) | (proto == 17)
    sport_kind = np.where(has_ports, _pick(rng, profile.sport_kind, n), 0)
    dport_kind = np.where(has_ports, _pick(rng, profile.dport_kind, n), 0)
    # Odd ports and ranges belong to particular hosts; broad rules use the well-known ones.
    broad = np.where(is6, columns["dst_len"] < 64, columns["dst_len"] < 24)
    sport_lo, sport_hi = _ports(rng, profile, sport_kind, popular=False, broad=broad)
    dport_lo, dport_hi = _ports(rng, profile, dport_kind, popular=True, broad=broad)
    return RuleTable(
        action=_pick(rng, profile.action, n).astype(np.uint8),
        family=family.astype(np.uint8),
        src_hi=columns["src_hi"],
        src_lo=columns["src_lo"],
        src_len=columns["src_len"],
        dst_hi=columns["dst_hi"],
        dst_lo=columns["dst_lo"],
        dst_len=columns["dst_len"],
        proto=proto.astype(np.int16),
        sport_lo=sport_lo,
        sport_hi=sport_hi,
        dport_lo=dport_lo,
        dport_hi=dport_hi,
    )


def _inside(
    rng: np.random.Generator, lo: np.ndarray, hi: np.ndarray, fallback: np.ndarray
) -> np.ndarray:
    """A random port in [lo, hi] where the rule has a port match, else `fallback`."""
    span = np.where(lo >= 0, hi - lo + 1, 1).astype(np.int64)
    offset = (rng.random(len(lo)) * span).astype(np.int64)
    return np.where(lo >= 0, lo + offset, fallback)


def generate_packets(
    rules: RuleTable, n: int, seed: int = 0, *, version: int = 4, match_share: float = 0.5
) -> FlowKeys:
    """`n` packets of IP `version`: a share aimed inside random rules, the rest uniform.

    An aimed packet lies inside its rule's prefixes, protocol and port ranges (it may still hit
    an earlier rule first); the others are uniform over the test range, mostly TCP and UDP.
    """
    rng = np.random.default_rng(seed)
    hi_s, lo_s = _random_addresses(rng, version, n)
    hi_d, lo_d = _random_addresses(rng, version, n)
    proto = rng.choice(
        np.array([6, 17, 1 if version == 4 else 58, 47]), n, p=[0.6, 0.3, 0.07, 0.03]
    )
    sport = rng.integers(0, PORT_MAX + 1, n)
    dport = np.where(
        rng.random(n) < 0.5,
        rng.choice(np.array(CLASSBENCH_LIKE.popular_ports), n),
        rng.integers(0, PORT_MAX + 1, n),
    )
    candidates = np.flatnonzero((rules.family == 0) | (rules.family == version))
    aimed = rng.random(n) < match_share if candidates.size else np.zeros(n, dtype=bool)
    if aimed.any():
        pick = candidates[rng.integers(0, candidates.size, n)]
        r = rules.take(pick)
        for side, (hi, lo) in (("src", (hi_s, lo_s)), ("dst", (hi_d, lo_d))):
            m_hi, m_lo = _prefix_masks(version, getattr(r, f"{side}_len"))
            in_hi = getattr(r, f"{side}_hi") | (hi & ~m_hi)
            in_lo = getattr(r, f"{side}_lo") | (lo & ~m_lo)
            hi[aimed], lo[aimed] = in_hi[aimed], in_lo[aimed]
        proto = np.where(aimed & (r.proto >= 0), r.proto, proto)
        sport = np.where(aimed, _inside(rng, r.sport_lo, r.sport_hi, sport), sport)
        dport = np.where(aimed, _inside(rng, r.dport_lo, r.dport_hi, dport), dport)
    portless = (proto != 6) & (proto != 17)
    sport = np.where(portless, 0, sport).astype(np.uint16)
    dport = np.where(portless, 0, dport).astype(np.uint16)
    proto = proto.astype(np.uint8)
    if version == 4:
        return FlowKeys.ipv4(lo_s.astype(np.uint32), lo_d.astype(np.uint32), proto, sport, dport)
    return FlowKeys.ipv6(
        np.stack([hi_s, lo_s], axis=1), np.stack([hi_d, lo_d], axis=1), proto, sport, dport
    )
