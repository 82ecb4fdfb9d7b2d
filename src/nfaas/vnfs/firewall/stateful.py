"""The stateful firewall: rules, compiled classifier, verdict cache, conntrack and counters.

`Firewall` is the object an NF graph and a control API share. Per batch, `decide` gives
every packet an `Outcome`, netfilter-style:

1. connection tracking (`ConnTrack`): packets of ESTABLISHED and RELATED connections are
   accepted without looking at the rules -- the usual first rule
   `ct state established,related accept` -- so replies of allowed connections pass even if
   the rules would drop them; INVALID packets are dropped (or, with `drop_invalid=False`,
   classified like new ones);
2. NEW and UNTRACKED IP packets go through the rules: first the verdict cache (a flow's
   first matching rule, remembered per 5-tuple), then the classifier for the misses;
3. a NEW packet that is not accepted leaves no connection behind. Netfilter keeps a new
   connection unconfirmed until its first packet leaves; here the tracker asks the rules
   (`ConnTrack.track`'s `confirm`) about every packet that would open a connection, as it
   comes to it, and records only the accepted ones. So the later packets of a batch see
   exactly the table they would see one packet at a time (a reply to a refused SYN is
   INVALID, a UDP "reply" to a refused datagram is a NEW flow of its own, a TCP connection
   in TIME_WAIT that a refused SYN would re-open is gone); a test holds batches to
   packet-at-a-time processing: same states, same outcomes, same connections left.

Rule updates (`insert`, `append`, `delete`, `add_nft`) keep the compiled classifier's
incremental updates, shift the per-rule counters, and invalidate the verdict cache. Every
public method holds `lock`, so a control API may call them from another thread while the
graph runs: a batch sees the rules either before or after an update, never half of one.
"""

from __future__ import annotations

import enum
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from nfaas.nf.batch import PacketBatch
from nfaas.nf.headers import PROTO_TCP, Headers
from nfaas.nf.state import ConnTrack, CtState
from nfaas.nf.timers import Timers
from nfaas.vnfs.firewall.classifier import Classifier
from nfaas.vnfs.firewall.flowcache import MISS, VerdictCache
from nfaas.vnfs.firewall.linear import LinearClassifier
from nfaas.vnfs.firewall.nft import Ruleset, format_rule, format_ruleset, parse_nft
from nfaas.vnfs.firewall.rules import Action, Rule, RuleTable
from nfaas.vnfs.firewall.tuples import PacketTuples

__all__ = [
    "NOT_CLASSIFIED",
    "NO_STATE",
    "Decision",
    "Firewall",
    "Outcome",
    "RuleSource",
]

RuleSource = Ruleset | Sequence[Rule] | RuleTable | Classifier | LinearClassifier

NOT_CLASSIFIED = -2  # `Decision.rule` of a packet the rules never saw (-1: the policy)
NO_STATE = 255  # `Decision.state` without connection tracking


class Outcome(enum.IntEnum):
    """What happens to a packet; every value but FORWARD is a drop reason (lower-case name)."""

    FORWARD = 0
    RULE = 1  # a drop rule, or the drop policy
    REJECT = 2  # a reject rule
    INVALID = 3  # conntrack said INVALID
    NON_IP = 4  # not IP, and non_ip is drop
    MALFORMED = 5  # the parser marked it invalid


_OUTCOME_OF_ACTION = np.array(
    [Outcome.FORWARD, Outcome.RULE, Outcome.REJECT], np.uint8
)  # indexed by Action.code


@dataclass(frozen=True)
class Decision:
    """Per packet of a batch: its outcome, the rule that decided it, its conntrack state."""

    outcome: NDArray[np.uint8]  # Outcome
    rule: NDArray[np.int32]  # rule position, -1 the policy, NOT_CLASSIFIED if no rule ran
    state: NDArray[np.uint8]  # CtState, or NO_STATE without conntrack


class Firewall:
    """Ordered 5-tuple rules applied statefully; see the module docstring.

    `rules` may be a `Ruleset` (its policy is the default), `Rule`s, a `RuleTable`, or an
    already compiled `Classifier` / `LinearClassifier` (a bare `Classifier` does not keep its
    rules: such a firewall counts and updates by position but cannot list or export them).
    `conntrack` is True (a fresh `ConnTrack`), False, or a tracker to share; `flow_cache` is
    True (a fresh `VerdictCache`), False, or a cache. `non_ip` is what happens to non-IP
    frames (ARP, ...), which rules cannot match; a bridging firewall must let ARP through.
    """

    def __init__(
        self,
        rules: RuleSource = (),
        *,
        policy: Action | None = None,
        conntrack: bool | ConnTrack = True,
        flow_cache: bool | VerdictCache = True,
        drop_invalid: bool = True,
        non_ip: Action = Action.ACCEPT,
        sweep_every: float = 10.0,
    ) -> None:
        self.lock = threading.RLock()
        self._rules: list[Rule] | None = None
        self._table: RuleTable | None = None  # rules not yet turned into Rule objects
        if isinstance(rules, Classifier):
            self.classifier: Classifier | LinearClassifier = rules
            self._actions = rules.verdicts(np.arange(len(rules), dtype=np.int32))
            default = rules.default_action
        elif isinstance(rules, LinearClassifier):
            self.classifier = rules
            self._table = rules.table
            self._actions = rules.table.action.astype(np.uint8)
            default = rules.default_action
        else:
            default = Action.ACCEPT
            if isinstance(rules, Ruleset):
                default, rules = rules.policy, rules.rules
            if isinstance(rules, RuleTable):
                self._table = rules
                table = rules
            else:
                self._rules = list(rules)
                table = RuleTable.from_rules(self._rules)
            self.classifier = Classifier.compile(table, policy or default)
            self._actions = table.action.astype(np.uint8)
        self.policy = policy or default
        if self.policy is Action.REJECT:
            raise ValueError("the policy is accept or drop, not reject")
        # isinstance first: an empty tracker or cache has length 0, so it is falsy.
        self.conntrack: ConnTrack | None = (
            conntrack if isinstance(conntrack, ConnTrack) else ConnTrack() if conntrack else None
        )
        self.cache: VerdictCache | None = (
            flow_cache
            if isinstance(flow_cache, VerdictCache)
            else VerdictCache()
            if flow_cache
            else None
        )
        self.drop_invalid = drop_invalid
        self.non_ip = non_ip
        self.sweep_every = sweep_every
        self.rule_packets = np.zeros(len(self._actions), np.uint64)
        self.rule_bytes = np.zeros(len(self._actions), np.uint64)
        self.policy_packets = 0
        self.policy_bytes = 0
        self.stats: dict[str, int] = {}
        self._timers: list[Timers] = []

    def __len__(self) -> int:
        return int(self._actions.shape[0])

    # -- the rules ---------------------------------------------------------------------------

    def _rule_list(self) -> list[Rule]:
        if self._rules is None:
            if self._table is None:
                raise LookupError(
                    "this firewall was built from a compiled Classifier, which does not keep "
                    "its rules; build it from the rules (or a RuleTable) to list or export them"
                )
            self._rules = list(self._table)
            self._table = None
        return self._rules

    @property
    def rules(self) -> list[Rule]:
        """A copy of the rules, in order."""
        with self.lock:
            return list(self._rule_list())

    def ruleset(self) -> Ruleset:
        with self.lock:
            return Ruleset(list(self._rule_list()), self.policy)

    def to_nft(self) -> str:
        """The rules as an `nft -f` file (one inet table, one forward chain)."""
        return format_ruleset(self.ruleset())

    def insert(self, position: int, rules: Rule | Sequence[Rule]) -> range:
        """Insert rules so that the first becomes rule `position`; returns their positions."""
        new = [rules] if isinstance(rules, Rule) else list(rules)
        with self.lock:
            if not 0 <= position <= len(self):
                raise IndexError(f"insert position {position} is outside 0..{len(self)}")
            if self._rules is not None or self._table is not None:
                self._rule_list()[position:position] = new
            if isinstance(self.classifier, Classifier):
                for offset, rule in enumerate(new):
                    self.classifier.insert(position + offset, rule)
            codes = np.array([rule.action.code for rule in new], np.uint8)
            zeros = np.zeros(len(new), np.uint64)
            self._actions = np.insert(self._actions, position, codes)
            self.rule_packets = np.insert(self.rule_packets, position, zeros)
            self.rule_bytes = np.insert(self.rule_bytes, position, zeros)
            self._rules_changed()
            return range(position, position + len(new))

    def append(self, rules: Rule | Sequence[Rule]) -> range:
        with self.lock:
            return self.insert(len(self), rules)

    def delete(self, position: int) -> Rule | None:
        """Remove rule `position` (later rules move up); returns it when rules are known."""
        with self.lock:
            if not 0 <= position < len(self):
                raise IndexError(f"no rule {position} (rules are 0..{len(self) - 1})")
            removed = None
            if self._rules is not None or self._table is not None:
                removed = self._rule_list().pop(position)
            if isinstance(self.classifier, Classifier):
                self.classifier.delete(position)
            self._actions = np.delete(self._actions, position)
            self.rule_packets = np.delete(self.rule_packets, position)
            self.rule_bytes = np.delete(self.rule_bytes, position)
            self._rules_changed()
            return removed

    def add_nft(
        self, text: str, position: int | None = None, source: str = "<rules>"
    ) -> tuple[range, list[Rule]]:
        """Parse nftables rule text (raises `NftError` naming line and column) and insert
        its rules at `position` (default: the end). Returns their positions and the rules."""
        parsed = parse_nft(text, source).rules
        if not parsed:
            raise ValueError(f"{source}: no rule in the text")
        with self.lock:
            at = len(self) if position is None else position
            return self.insert(at, parsed), parsed

    def set_policy(self, policy: Action) -> None:
        if policy is Action.REJECT:
            raise ValueError("the policy is accept or drop, not reject")
        with self.lock:
            self.policy = policy
            self.classifier.default_action = policy

    def _rules_changed(self) -> None:
        if isinstance(self.classifier, LinearClassifier):
            table = RuleTable.from_rules(self._rule_list())
            self.classifier = LinearClassifier(table, self.policy)
        if self.cache is not None:
            self.cache.invalidate()

    # -- counters ----------------------------------------------------------------------------

    def rule_counters(self) -> list[dict[str, Any]]:
        """Per rule: position, nft text (when known), packets and bytes it decided."""
        with self.lock:
            try:
                listed: list[Rule] | None = self._rule_list()
            except LookupError:
                listed = None
            return [
                {
                    "index": i,
                    "rule": format_rule(listed[i]) if listed is not None else None,
                    "action": Action.from_code(int(self._actions[i])).value,
                    "packets": int(self.rule_packets[i]),
                    "bytes": int(self.rule_bytes[i]),
                }
                for i in range(len(self))
            ]

    def counters(self) -> dict[str, Any]:
        """Everything counted: outcomes, conntrack states, cache, policy and per-rule hits."""
        with self.lock:
            cache = self.cache
            return {
                "packets": dict(self.stats),
                "policy": {
                    "action": self.policy.value,
                    "packets": self.policy_packets,
                    "bytes": self.policy_bytes,
                },
                "cache": None
                if cache is None
                else {"hits": cache.hits, "misses": cache.misses, "entries": len(cache)},
                "connections": None if self.conntrack is None else len(self.conntrack),
                "rules": self.rule_counters(),
            }

    def _count(self, batch: PacketBatch, d: Decision) -> None:
        stats = self.stats
        for value in np.unique(d.outcome).tolist():
            name = Outcome(value).name.lower()
            stats[name] = stats.get(name, 0) + int(np.count_nonzero(d.outcome == value))
        if self.conntrack is not None:
            for value in np.unique(d.state).tolist():
                name = "ct_" + CtState(value).name.lower()
                stats[name] = stats.get(name, 0) + int(np.count_nonzero(d.state == value))
        seen = np.flatnonzero(d.rule != NOT_CLASSIFIED)
        if not seen.size:
            return
        rule = d.rule[seen]
        size = batch.lengths[seen].astype(np.float64)
        policy = rule < 0
        if policy.any():
            self.policy_packets += int(np.count_nonzero(policy))
            self.policy_bytes += int(size[policy].sum())
            rule, size = rule[~policy], size[~policy]
        if rule.size:
            which, inverse = np.unique(rule, return_inverse=True)
            self.rule_packets[which] += np.bincount(inverse).astype(np.uint64)
            self.rule_bytes[which] += np.bincount(inverse, weights=size).astype(np.uint64)

    def reset_counters(self) -> None:
        with self.lock:
            self.rule_packets[:] = 0
            self.rule_bytes[:] = 0
            self.policy_packets = self.policy_bytes = 0
            self.stats = {}

    # -- timers ------------------------------------------------------------------------------

    def attach(self, timers: Timers) -> None:
        """Sweep idle connections and cache entries every `sweep_every` seconds (once per
        `Timers`, however many graph operators share this firewall)."""
        if self.sweep_every and not any(t is timers for t in self._timers):
            self._timers.append(timers)
            timers.every(self.sweep_every, self.sweep, name="firewall.expire")

    def sweep(self, now: float) -> None:
        with self.lock:
            if self.conntrack is not None:
                self.stats["ct_expired"] = self.stats.get("ct_expired", 0) + (
                    self.conntrack.expire(now)
                )
            if self.cache is not None:
                self.cache.expire(now)

    # -- the datapath ------------------------------------------------------------------------

    def decide(self, batch: PacketBatch, h: Headers, now: float) -> Decision:
        """The outcome of every packet of a parsed batch (and the connection updates)."""
        with self.lock:
            stateful = self.conntrack is not None
            d = self._stateful(batch, h, now) if stateful else self._stateless(h, now)
            self._count(batch, d)
            return d

    def _start(self, h: Headers) -> tuple[NDArray[np.uint8], NDArray[np.int32], NDArray[np.bool_]]:
        """Outcomes before any rule (malformed, non-IP), no rule yet, and the IP mask."""
        n = len(h)
        outcome = np.zeros(n, np.uint8)
        valid = h.valid
        ip = valid & (h.ip_version != 0)
        outcome[~valid] = Outcome.MALFORMED
        if self.non_ip is not Action.ACCEPT:
            outcome[valid & ~ip] = Outcome.NON_IP
        return outcome, np.full(n, NOT_CLASSIFIED, np.int32), ip

    def _stateless(self, h: Headers, now: float) -> Decision:
        outcome, rule, ip = self._start(h)
        rows = np.flatnonzero(ip)
        outcome[rows], rule[rows] = self._filter(h, rows, now)
        return Decision(outcome, rule, np.full(len(h), NO_STATE, np.uint8))

    def _stateful(self, batch: PacketBatch, h: Headers, now: float) -> Decision:
        assert self.conntrack is not None
        outcome, rule, ip = self._start(h)
        # The tracker asks about the packets that would open a connection, and records only
        # those the rules accept. The answers are kept for the packets that turn out NEW.
        asked = np.zeros(len(h), np.bool_)
        answer = np.zeros(len(h), np.uint8)
        answer_rule = np.full(len(h), NOT_CLASSIFIED, np.int32)

        def confirm(rows: NDArray[np.intp]) -> NDArray[np.bool_]:
            answer[rows], answer_rule[rows] = self._filter(h, rows, now)
            asked[rows] = True
            return answer[rows] == Outcome.FORWARD

        state = self.conntrack.track(batch, h, now, confirm=confirm).state
        check = ip & ((state == CtState.NEW) | (state == CtState.UNTRACKED))
        invalid = ip & (state == CtState.INVALID)
        if self.drop_invalid:
            outcome[invalid] = Outcome.INVALID
        else:
            check |= invalid
        known = np.flatnonzero(check & asked)
        outcome[known], rule[known] = answer[known], answer_rule[known]
        rows = np.flatnonzero(check & ~asked)
        outcome[rows], rule[rows] = self._filter(h, rows, now)
        return Decision(outcome, rule, state)

    def _filter(
        self, h: Headers, rows: NDArray[np.intp], now: float
    ) -> tuple[NDArray[np.uint8], NDArray[np.int32]]:
        """(outcome, first matching rule) of the IP packets `rows`: cache, then classifier."""
        if not rows.size:
            return np.zeros(0, np.uint8), np.zeros(0, np.int32)
        tuples = PacketTuples.of(h, rows)
        cache = self.cache
        if cache is None:
            rule = self._classify(tuples)
        else:
            rule, keys = cache.lookup(tuples, now)
            miss = np.flatnonzero(rule == MISS)
            if miss.size:
                rule[miss] = self._classify_misses(cache, tuples.take(miss), keys[miss], now)
        return _OUTCOME_OF_ACTION[self._actions_of(rule)], rule

    def _actions_of(self, rule: NDArray[np.int32]) -> NDArray[np.uint8]:
        """`Action.code` per classification result (-1: the policy)."""
        codes = np.full(rule.shape[0], self.policy.code, np.uint8)
        matched = rule >= 0
        codes[matched] = self._actions[rule[matched]]
        return codes

    def _classify(self, tuples: PacketTuples) -> NDArray[np.int32]:
        return np.asarray(self.classifier.classify(tuples.flow_keys()), np.int32)

    def _classify_misses(
        self, cache: VerdictCache, tuples: PacketTuples, keys: NDArray[np.uint64], now: float
    ) -> NDArray[np.int32]:
        """Classify each distinct missed flow once and remember it."""
        uniq, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        inverse = inverse.ravel()
        rep = first[inverse]  # the packet whose tuple stands for each packet's key
        alike = np.ones(len(tuples), np.bool_)
        columns: tuple[NDArray[Any], ...] = (
            tuples.src_lo, tuples.dst_lo, tuples.src_hi, tuples.dst_hi,
            tuples.sport, tuples.dport, tuples.proto, tuples.version,
        )  # fmt: skip
        for column in columns:
            alike &= column == column[rep]
        distinct = tuples.take(first)
        found = self._classify(distinct)
        remember = np.ones(len(distinct), np.bool_)
        if self.conntrack is not None:
            # An accepted TCP flow opens a connection whose later packets are ESTABLISHED
            # and never ask again: remembering it would only cost (a flood of new
            # connections would fill the cache for nothing).
            accepted = self._actions_of(found) == Action.ACCEPT.code
            remember = ~(accepted & (distinct.proto == PROTO_TCP))
        keep = np.flatnonzero(remember)
        cache.store(distinct.take(keep), uniq[keep], found[keep], now)
        rule = found[inverse]
        if not alike.all():  # two flows share a key: the odd ones are classified alone
            odd = np.flatnonzero(~alike)
            rule[odd] = self._classify(tuples.take(odd))
        return rule
