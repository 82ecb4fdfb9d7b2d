"""The firewall's rule model: ordered 5-tuple rules, one object per rule or one column per field.

A `Rule` is what people write and read (nftables import/export, tests); a `RuleTable` holds the
same fields as numpy columns, which is what the classifiers compile from and what the generator
produces, so that a million rules never exist as a million Python objects.
"""

from __future__ import annotations

import enum
import ipaddress
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

PORT_MAX = 65535
#: Protocols whose headers carry ports; a port match implies one of them (as in nftables).
PORT_PROTOCOLS = frozenset({6, 17})
PROTOCOL_NUMBERS = {"icmp": 1, "tcp": 6, "udp": 17, "ipv6-icmp": 58}
PROTOCOL_NAMES = {number: name for name, number in PROTOCOL_NUMBERS.items()}


class RuleError(ValueError):
    """A rule whose fields contradict each other or lie out of range."""


class Action(enum.Enum):
    """The verdict of a rule or of the chain policy."""

    ACCEPT = "accept"
    DROP = "drop"
    REJECT = "reject"

    @property
    def code(self) -> int:
        """Small integer used in numpy arrays of verdicts."""
        return _ACTION_CODES[self]

    @classmethod
    def from_code(cls, code: int) -> Action:
        return _ACTIONS_BY_CODE[code]


_ACTION_CODES = {Action.ACCEPT: 0, Action.DROP: 1, Action.REJECT: 2}
_ACTIONS_BY_CODE = {code: action for action, code in _ACTION_CODES.items()}


class Family(enum.Enum):
    """Which packets a rule can match: IPv4 only, IPv6 only, or both (an `inet` rule)."""

    IPV4 = "ipv4"
    IPV6 = "ipv6"
    ANY = "any"

    @property
    def code(self) -> int:
        """0 for any, 4 or 6: the value stored in `RuleTable.family`."""
        return {Family.ANY: 0, Family.IPV4: 4, Family.IPV6: 6}[self]

    @classmethod
    def from_code(cls, code: int) -> Family:
        return {0: Family.ANY, 4: Family.IPV4, 6: Family.IPV6}[code]


@dataclass(frozen=True)
class PortRange:
    """An inclusive range of port numbers; a single port has lo == hi."""

    lo: int
    hi: int

    def __post_init__(self) -> None:
        if not (0 <= self.lo <= self.hi <= PORT_MAX):
            raise RuleError(f"port range {self.lo}-{self.hi} is not within 0-{PORT_MAX}")

    @classmethod
    def single(cls, port: int) -> PortRange:
        return cls(port, port)

    def __contains__(self, port: object) -> bool:
        return isinstance(port, int) and self.lo <= port <= self.hi

    def __str__(self) -> str:
        return str(self.lo) if self.lo == self.hi else f"{self.lo}-{self.hi}"


@dataclass(frozen=True)
class Rule:
    """One firewall rule: all present fields must match (an absent field matches anything).

    `family` restricts the rule to IPv4 or IPv6 packets; it must agree with the address
    prefixes. A port match requires `proto` to be tcp or udp, so it never matches packets of
    protocols without ports. `counter`, `comment` and `handle` are carried for nftables round
    trips and do not affect matching.
    """

    action: Action
    family: Family = Family.ANY
    src: Network | None = None
    dst: Network | None = None
    proto: int | None = None
    sport: PortRange | None = None
    dport: PortRange | None = None
    counter: bool = False
    comment: str | None = None
    handle: int | None = None

    def __post_init__(self) -> None:
        for name, network in (("source", self.src), ("destination", self.dst)):
            if network is None:
                continue
            version = 4 if self.family is Family.IPV4 else 6 if self.family is Family.IPV6 else 0
            if network.version != version:
                raise RuleError(
                    f"{name} prefix {network} is IPv{network.version} but the rule's family"
                    f" is {self.family.value}"
                )
        if self.proto is not None and not 0 <= self.proto <= 255:
            raise RuleError(f"protocol number {self.proto} is not within 0-255")
        has_ports = self.sport is not None or self.dport is not None
        if has_ports and self.proto not in PORT_PROTOCOLS:
            raise RuleError("a port match needs protocol tcp or udp")
        if self.comment is not None and ('"' in self.comment or "\n" in self.comment):
            raise RuleError("a comment may not contain double quotes or newlines")
        if self.comment is not None and len(self.comment.encode()) > 128:
            raise RuleError("a comment is at most 128 bytes")
        if self.handle is not None and self.handle < 0:
            raise RuleError(f"handle {self.handle} is negative")

    def matches(self, family: int, src: int, dst: int, proto: int, sport: int, dport: int) -> bool:
        """Whether one packet (family 4 or 6, addresses as ints) matches; the reference."""
        if self.family is not Family.ANY and self.family.code != family:
            return False
        if self.src is not None and not _in_network(src, self.src):
            return False
        if self.dst is not None and not _in_network(dst, self.dst):
            return False
        if self.proto is not None and proto != self.proto:
            return False
        if self.sport is not None and sport not in self.sport:
            return False
        return self.dport is None or dport in self.dport


def _in_network(address: int, network: Network) -> bool:
    shift = network.max_prefixlen - network.prefixlen
    return (address >> shift) == (int(network.network_address) >> shift)


def parse_protocol(text: str) -> int:
    """A protocol number from a name (tcp, udp, icmp, ipv6-icmp) or a decimal number."""
    if text in PROTOCOL_NUMBERS:
        return PROTOCOL_NUMBERS[text]
    if text == "icmpv6":
        return 58
    if text.isdigit() and int(text) <= 255:
        return int(text)
    raise RuleError(f"unknown protocol {text!r}")


@dataclass(frozen=True)
class RuleTable:
    """An ordered rule list as numpy columns (index i = rule i).

    IPv4 addresses sit in the `*_lo` column with `*_hi` zero; IPv6 addresses are split into
    the high and low 64 bits. A prefix length of 0 means "any address". Protocol -1 means any;
    a port column pair of (-1, -1) means no port match.
    """

    action: np.ndarray  # uint8 Action.code
    family: np.ndarray  # uint8 Family.code
    src_hi: np.ndarray  # uint64
    src_lo: np.ndarray  # uint64
    src_len: np.ndarray  # uint8
    dst_hi: np.ndarray  # uint64
    dst_lo: np.ndarray  # uint64
    dst_len: np.ndarray  # uint8
    proto: np.ndarray  # int16, -1 = any
    sport_lo: np.ndarray  # int32, -1 = no match on the port
    sport_hi: np.ndarray  # int32
    dport_lo: np.ndarray  # int32
    dport_hi: np.ndarray  # int32

    def __len__(self) -> int:
        return len(self.action)

    @classmethod
    def from_rules(cls, rules: Iterable[Rule]) -> RuleTable:
        rows = [_row(rule) for rule in rules]
        columns = list(zip(*rows, strict=True)) if rows else [() for _ in _DTYPES]
        return cls(
            *(np.array(col, dtype=dtype) for col, dtype in zip(columns, _DTYPES, strict=True))
        )

    def rule(self, index: int) -> Rule:
        """Rule `index` as a `Rule` object (without comment, counter or handle)."""
        family = Family.from_code(int(self.family[index]))
        sport = _port_range(int(self.sport_lo[index]), int(self.sport_hi[index]))
        dport = _port_range(int(self.dport_lo[index]), int(self.dport_hi[index]))
        proto = int(self.proto[index])
        return Rule(
            action=Action.from_code(int(self.action[index])),
            family=family,
            src=_network(family, self.src_hi[index], self.src_lo[index], self.src_len[index]),
            dst=_network(family, self.dst_hi[index], self.dst_lo[index], self.dst_len[index]),
            proto=None if proto < 0 else proto,
            sport=sport,
            dport=dport,
        )

    def __iter__(self) -> Iterator[Rule]:
        return (self.rule(i) for i in range(len(self)))

    def take(self, indices: np.ndarray | Sequence[int]) -> RuleTable:
        """The rules at `indices`, in that order."""
        index = np.asarray(indices, dtype=np.intp)
        return RuleTable(*(getattr(self, name)[index] for name in _COLUMNS))


_COLUMNS = (
    "action",
    "family",
    "src_hi",
    "src_lo",
    "src_len",
    "dst_hi",
    "dst_lo",
    "dst_len",
    "proto",
    "sport_lo",
    "sport_hi",
    "dport_lo",
    "dport_hi",
)
_DTYPES = (
    np.uint8,
    np.uint8,
    np.uint64,
    np.uint64,
    np.uint8,
    np.uint64,
    np.uint64,
    np.uint8,
    np.int16,
    np.int32,
    np.int32,
    np.int32,
    np.int32,
)
_LOW64 = (1 << 64) - 1


def _split(network: Network | None) -> tuple[int, int, int]:
    if network is None:
        return 0, 0, 0
    value = int(network.network_address)
    return value >> 64, value & _LOW64, network.prefixlen


def _row(rule: Rule) -> tuple[int, ...]:
    src = _split(rule.src)
    dst = _split(rule.dst)
    sport = (rule.sport.lo, rule.sport.hi) if rule.sport else (-1, -1)
    dport = (rule.dport.lo, rule.dport.hi) if rule.dport else (-1, -1)
    proto = -1 if rule.proto is None else rule.proto
    return (rule.action.code, rule.family.code, *src, *dst, proto, *sport, *dport)


def _port_range(lo: int, hi: int) -> PortRange | None:
    return None if lo < 0 else PortRange(lo, hi)


def _network(family: Family, hi: np.uint64, lo: np.uint64, length: np.uint8) -> Network | None:
    if family is Family.ANY or int(length) == 0:
        return None
    if family is Family.IPV4:
        return ipaddress.IPv4Network((int(lo), int(length)))
    return ipaddress.IPv6Network(((int(hi) << 64) | int(lo), int(length)))
