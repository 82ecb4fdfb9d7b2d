"""Read and write firewall rules in nftables syntax.

Reads a file as `nft -f` takes it -- `table inet NAME { chain NAME { type filter hook ...;
policy accept; RULE... } }`, `add rule FAMILY TABLE CHAIN RULE`, `flush ruleset` -- or bare
rule lines. A rule is a sequence of matches and a verdict:

    ip saddr 198.18.0.0/16 ip6 daddr 2001:2::/64     address prefixes (or { a, b } sets)
    ip protocol tcp | meta l4proto { tcp, udp }       protocol by name or number
    meta nfproto ipv4 | ipv6                          family without an address match
    tcp dport 80 | udp sport 1024-65535 | tcp dport { 80, 443 }
    counter                                           kept, has no effect on matching
    accept | drop | reject                            the verdict
    comment "text"                                    after the verdict

Anonymous sets are expanded into one rule per combination, in order, so rule indices count
expanded rules. The chain policy becomes the default action. Anything else is an `NftError`
naming the line, column and offending token. `format_ruleset` writes a file that
`nft -c -f` accepts and `parse_nft` reads back to equal rules.
"""

from __future__ import annotations

import ipaddress
import itertools
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

from nfaas.vnfs.firewall.rules import (
    PORT_MAX,
    PROTOCOL_NAMES,
    Action,
    Family,
    Network,
    PortRange,
    Rule,
    RuleError,
    parse_protocol,
)


class NftError(ValueError):
    """Malformed nftables input; says where (line and column) and which token."""

    def __init__(self, message: str, source: str, line: int, column: int, token: str) -> None:
        super().__init__(f"{source}:{line}:{column}: {message} (at {token!r})")
        self.source = source
        self.line = line
        self.column = column
        self.token = token


@dataclass(frozen=True)
class Ruleset:
    """An ordered rule list with its chain's policy and the names used when writing it."""

    rules: list[Rule] = field(default_factory=list)
    policy: Action = Action.ACCEPT
    table: str = "nfaas"
    chain: str = "forward"
    hook: str = "forward"
    priority: int = 0


# --- tokens -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Token:
    kind: str  # word, string, punct, newline, end
    text: str
    line: int
    column: int


_TOKEN = re.compile(
    r"""(?P<space>[ \t\r]+)
      | (?P<comment>\#[^\n]*)
      | (?P<newline>\n)
      | (?P<continuation>\\\n)
      | (?P<string>"[^"\n]*")
      | (?P<punct>[{};,])
      | (?P<word>[A-Za-z0-9_./:\-]+)""",
    re.VERBOSE,
)
_HANDLE = re.compile(r"#\s*handle\s+(\d+)\s*$")


def _tokens(text: str, source: str) -> Iterator[_Token]:
    line, line_start, offset = 1, 0, 0
    while offset < len(text):
        match = _TOKEN.match(text, offset)
        column = offset - line_start + 1
        if match is None:
            raise NftError("unexpected character", source, line, column, text[offset])
        kind = match.lastgroup or ""
        value = match.group()
        if kind == "comment":
            handle = _HANDLE.match(value)
            if handle:
                yield _Token("handle", handle.group(1), line, column)
        elif kind in ("newline", "continuation"):
            if kind == "newline":
                yield _Token("newline", value, line, column)
            line, line_start = line + 1, match.end()
        elif kind != "space":
            yield _Token(kind, value, line, column)
        offset = match.end()
    yield _Token("end", "", line, offset - line_start + 1)


# --- parser -------------------------------------------------------------------------------------

_T = TypeVar("_T")
_PRIORITY_NAMES = {
    "raw": -300,
    "mangle": -150,
    "dstnat": -100,
    "filter": 0,
    "security": 50,
    "srcnat": 100,
}
_VERDICTS = {"accept": Action.ACCEPT, "drop": Action.DROP, "reject": Action.REJECT}
_TABLE_FAMILIES = {"inet": Family.ANY, "ip": Family.IPV4, "ip6": Family.IPV6}
_END_OF_RULE = {"newline", "end"}


@dataclass
class _RuleParts:
    """Matches of one rule, before sets are expanded; each field holds its set's elements."""

    family: Family | None = None
    src: list[Network] | None = None
    dst: list[Network] | None = None
    proto: list[int] | None = None
    port_proto: int | None = None
    sport: list[PortRange] | None = None
    dport: list[PortRange] | None = None
    counter: bool = False
    action: Action | None = None
    comment: str | None = None
    handle: int | None = None


class _Parser:
    def __init__(self, text: str, source: str) -> None:
        self.source = source
        self.tokens = list(_tokens(text, source))
        self.index = 0
        self.ruleset = Ruleset()
        self.rules: list[Rule] = []
        self.chain_seen: str | None = None

    # token helpers -----------------------------------------------------------------------------
    @property
    def token(self) -> _Token:
        return self.tokens[self.index]

    def error(self, message: str, token: _Token | None = None) -> NftError:
        token = token or self.token
        return NftError(
            message, self.source, token.line, token.column, token.text or "end of input"
        )

    def take(self) -> _Token:
        token = self.token
        self.index += 1
        return token

    def expect(self, text: str) -> _Token:
        if self.token.text != text or self.token.kind == "string":
            raise self.error(f"expected {text!r}")
        return self.take()

    def word(self, what: str) -> _Token:
        if self.token.kind != "word":
            raise self.error(f"expected {what}")
        return self.take()

    def skip_separators(self) -> None:
        while self.token.kind in ("newline", "handle") or self.token.text == ";":
            self.take()

    # structure ---------------------------------------------------------------------------------
    def parse(self) -> Ruleset:
        while True:
            self.skip_separators()
            token = self.token
            if token.kind == "end":
                break
            if token.text == "table":
                self.table_block()
            elif token.text == "flush":
                self.take()
                self.expect("ruleset")
            elif token.text == "add":
                self.add_command()
            else:
                self.rule(Family.ANY)
        return replace(self.ruleset, rules=self.rules)

    def table_family(self) -> Family:
        token = self.word("a table family (inet, ip or ip6)")
        if token.text not in _TABLE_FAMILIES:
            raise self.error("unsupported table family (use inet, ip or ip6)", token)
        return _TABLE_FAMILIES[token.text]

    def table_block(self) -> None:
        self.expect("table")
        family = self.table_family()
        name = self.word("a table name").text
        self.ruleset = replace(self.ruleset, table=name)
        self.expect("{")
        while True:
            self.skip_separators()
            if self.token.text == "}":
                self.take()
                return
            if self.token.text != "chain":
                raise self.error("expected 'chain' or '}'")
            self.take()
            chain = self.word("a chain name")
            self.start_chain(chain)
            self.expect("{")
            self.chain_body(family)

    def start_chain(self, chain: _Token) -> None:
        if self.chain_seen is not None and self.chain_seen != chain.text:
            raise self.error("only one chain is supported", chain)
        self.chain_seen = chain.text
        self.ruleset = replace(self.ruleset, chain=chain.text)

    def chain_body(self, family: Family) -> None:
        while True:
            self.skip_separators()
            text = self.token.text
            if text == "}" and self.token.kind == "punct":
                self.take()
                return
            if self.token.kind == "end":
                raise self.error("expected '}' to close the chain")
            if text == "type":
                self.chain_type()
            elif text == "policy":
                self.take()
                token = self.word("a policy (accept or drop)")
                if token.text not in ("accept", "drop"):
                    raise self.error("a chain policy is accept or drop", token)
                self.ruleset = replace(self.ruleset, policy=_VERDICTS[token.text])
            else:
                self.rule(family, closing_brace=True)

    def chain_type(self) -> None:
        self.expect("type")
        token = self.word("a chain type")
        if token.text != "filter":
            raise self.error("only filter chains are supported", token)
        self.expect("hook")
        hook = self.word("a hook name").text
        self.expect("priority")
        priority = self.word("a priority")
        if re.fullmatch(r"-?\d+", priority.text):
            value = int(priority.text)
        elif priority.text in _PRIORITY_NAMES:
            value = _PRIORITY_NAMES[priority.text]
        else:
            raise self.error("expected a priority number or name", priority)
        self.ruleset = replace(self.ruleset, hook=hook, priority=value)

    def add_command(self) -> None:
        self.expect("add")
        kind = self.word("table, chain or rule")
        if kind.text == "table":
            self.table_family()
            self.ruleset = replace(self.ruleset, table=self.word("a table name").text)
        elif kind.text == "chain":
            self.table_family()
            self.word("a table name")
            self.start_chain(self.word("a chain name"))
            if self.token.text == "{":
                self.take()
                self.chain_body(Family.ANY)
        elif kind.text == "rule":
            family = self.table_family()
            self.word("a table name")
            self.start_chain(self.word("a chain name"))
            self.rule(family)
        else:
            raise self.error("expected table, chain or rule after 'add'", kind)

    # one rule ----------------------------------------------------------------------------------
    def rule(self, table_family: Family, closing_brace: bool = False) -> None:
        first = self.token
        parts = _RuleParts(family=None if table_family is Family.ANY else table_family)
        while True:
            token = self.token
            at_end = token.kind in _END_OF_RULE or token.text == ";"
            if closing_brace and token.text == "}" and token.kind == "punct":
                at_end = True
            if at_end:
                break
            if token.kind == "handle":
                parts.handle = int(self.take().text)
            elif parts.action is not None:
                if token.text != "comment":
                    raise self.error("nothing but a comment may follow the verdict")
                self.take()
                if self.token.kind != "string":
                    raise self.error("expected a quoted comment")
                parts.comment = self.take().text[1:-1]
            else:
                self.statement(parts)
        if parts.action is None:
            raise self.error("rule has no verdict (accept, drop or reject)")
        self.rules.extend(self.expand(parts, first))

    def statement(self, parts: _RuleParts) -> None:
        token = self.word("a match or a verdict")
        text = token.text
        if text in _VERDICTS:
            parts.action = _VERDICTS[text]
            if text == "reject" and self.token.text == "with":
                raise self.error("'reject with ...' is not supported; use plain reject")
        elif text == "counter":
            parts.counter = True
        elif text in ("ip", "ip6"):
            self.address_match(parts, Family.IPV4 if text == "ip" else Family.IPV6, token)
        elif text == "meta":
            self.meta_match(parts)
        elif text in ("tcp", "udp"):
            self.port_match(parts, 6 if text == "tcp" else 17, token)
        else:
            raise self.error("unknown or unsupported statement", token)

    def set_family(self, parts: _RuleParts, family: Family, token: _Token) -> None:
        if parts.family is not None and parts.family is not family:
            raise self.error(f"{family.value} match in a rule for {parts.family.value}", token)
        parts.family = family

    def address_match(self, parts: _RuleParts, family: Family, keyword: _Token) -> None:
        field_token = self.word("saddr, daddr or protocol")
        if family is Family.IPV4 and field_token.text == "protocol":
            self.set_family(parts, family, keyword)
            self.protocol_values(parts)
            return
        if field_token.text not in ("saddr", "daddr"):
            raise self.error("expected saddr or daddr", field_token)
        self.set_family(parts, family, keyword)
        networks = self.elements(lambda token: self.network(token, family))
        setattr(parts, "src" if field_token.text == "saddr" else "dst", networks)

    def meta_match(self, parts: _RuleParts) -> None:
        key = self.word("l4proto or nfproto")
        if key.text == "l4proto":
            self.protocol_values(parts)
        elif key.text == "nfproto":
            value = self.word("ipv4 or ipv6")
            if value.text not in ("ipv4", "ipv6"):
                raise self.error("expected ipv4 or ipv6", value)
            self.set_family(parts, Family.IPV4 if value.text == "ipv4" else Family.IPV6, value)
        else:
            raise self.error("unsupported meta key (use l4proto or nfproto)", key)

    def protocol_values(self, parts: _RuleParts) -> None:
        if parts.proto is not None:
            raise self.error("protocol matched twice")
        parts.proto = self.elements(self.protocol)

    def port_match(self, parts: _RuleParts, proto: int, keyword: _Token) -> None:
        if parts.port_proto is not None and parts.port_proto != proto:
            raise self.error("tcp and udp port matches in one rule", keyword)
        parts.port_proto = proto
        direction = self.word("sport or dport")
        if direction.text not in ("sport", "dport"):
            raise self.error("expected sport or dport", direction)
        setattr(parts, direction.text, self.elements(self.ports))

    # values ------------------------------------------------------------------------------------
    def elements(self, convert: Callable[[_Token], _T]) -> list[_T]:
        """One value, or the elements of an anonymous set `{ a, b, ... }`."""
        if self.token.text != "{":
            return [convert(self.word("a value"))]
        self.take()
        values: list[_T] = []
        while True:
            while self.token.kind == "newline":
                self.take()
            values.append(convert(self.word("a set element")))
            while self.token.kind == "newline":
                self.take()
            if self.token.text == "}":
                self.take()
                return values
            self.expect(",")

    def network(self, token: _Token, family: Family) -> Network:
        try:
            network = ipaddress.ip_network(token.text, strict=True)
        except ValueError as exc:
            raise self.error(f"bad address prefix: {exc}", token) from None
        if network.version != (4 if family is Family.IPV4 else 6):
            raise self.error(
                f"an IPv{network.version} prefix after {'ip' if network.version == 6 else 'ip6'}",
                token,
            )
        return network

    def protocol(self, token: _Token) -> int:
        try:
            return parse_protocol(token.text)
        except RuleError as exc:
            raise self.error(str(exc), token) from None

    def ports(self, token: _Token) -> PortRange:
        text = token.text
        if self.token.text == "-" and text.isdigit():  # "80 - 90"
            self.take()
            text = f"{text}-{self.word('the end of a port range').text}"
        match = re.fullmatch(r"(\d+)(?:-(\d+))?", text)
        if not match:
            raise self.error("expected a port number or range", token)
        lo = int(match.group(1))
        hi = int(match.group(2)) if match.group(2) else lo
        if hi > PORT_MAX or lo > hi:
            raise self.error(f"port range must be within 0-{PORT_MAX} with low <= high", token)
        return PortRange(lo, hi)

    # expansion ---------------------------------------------------------------------------------
    def expand(self, parts: _RuleParts, first: _Token) -> list[Rule]:
        protos: list[int | None] = list(parts.proto) if parts.proto is not None else [None]
        if parts.port_proto is not None:
            if any(p is not None and p != parts.port_proto for p in protos):
                raise self.error("protocol match contradicts the port match's protocol", first)
            protos = [parts.port_proto]
        rules = []
        combos = itertools.product(
            _or_none(parts.src),
            _or_none(parts.dst),
            protos,
            _or_none(parts.sport),
            _or_none(parts.dport),
        )
        for src, dst, proto, sport, dport in combos:
            assert parts.action is not None
            try:
                rules.append(
                    Rule(
                        action=parts.action,
                        family=parts.family or Family.ANY,
                        src=src,
                        dst=dst,
                        proto=proto,
                        sport=sport,
                        dport=dport,
                        counter=parts.counter,
                        comment=parts.comment,
                        handle=parts.handle,
                    )
                )
            except RuleError as exc:
                raise self.error(str(exc), first) from None
        return rules


def _or_none(values: Sequence[_T] | None) -> list[_T | None]:
    """A set's elements, or the single "no match on this field"."""
    return [None] if values is None else list(values)


def parse_nft(text: str, source: str = "<string>") -> Ruleset:
    """Rules (sets expanded), policy and names from nftables text; raises `NftError`."""
    return _Parser(text, source).parse()


def load_nft(path: str | Path) -> Ruleset:
    """`parse_nft` of a file, with errors naming the file."""
    path = Path(path)
    return parse_nft(path.read_text(), str(path))


# --- writer -------------------------------------------------------------------------------------


_IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_]*")


def _protocol_name(proto: int) -> str:
    return PROTOCOL_NAMES.get(proto, str(proto))


def format_rule(rule: Rule) -> str:
    """One rule as an nftables rule statement for an `inet` table."""
    words: list[str] = []
    keyword = "ip" if rule.family is Family.IPV4 else "ip6"
    if rule.src is not None:
        words += [keyword, "saddr", str(rule.src)]
    if rule.dst is not None:
        words += [keyword, "daddr", str(rule.dst)]
    if rule.family is not Family.ANY and rule.src is None and rule.dst is None:
        words += ["meta", "nfproto", rule.family.value]
    has_ports = rule.sport is not None or rule.dport is not None
    if rule.proto is not None and not has_ports:
        words += ["meta", "l4proto", _protocol_name(rule.proto)]
    if has_ports:
        assert rule.proto is not None
        name = _protocol_name(rule.proto)
        if rule.sport is not None:
            words += [name, "sport", str(rule.sport)]
        if rule.dport is not None:
            words += [name, "dport", str(rule.dport)]
    if rule.counter:
        words.append("counter")
    words.append(rule.action.value)
    if rule.comment is not None:
        words += ["comment", f'"{rule.comment}"']
    if rule.handle is not None:
        words.append(f"# handle {rule.handle}")
    return " ".join(words)


def format_ruleset(ruleset: Ruleset) -> str:
    """A file for `nft -f`: one inet table with one filter chain holding the rules."""
    if ruleset.policy is Action.REJECT:
        raise RuleError("a chain policy is accept or drop, not reject")
    for name in (ruleset.table, ruleset.chain, ruleset.hook):
        # nft takes names unquoted; a name that is an nft keyword (e.g. "fwd") fails there.
        if not _IDENTIFIER.fullmatch(name):
            raise RuleError(f"{name!r} is not a valid nftables name")
    lines = [
        f"table inet {ruleset.table} {{",
        f"\tchain {ruleset.chain} {{",
        f"\t\ttype filter hook {ruleset.hook} priority {ruleset.priority}; policy {ruleset.policy.value};",
    ]
    lines += [f"\t\t{format_rule(rule)}" for rule in ruleset.rules]
    lines += ["\t}", "}", ""]
    return "\n".join(lines)
