"""Reference first-match classifier: scans the rules in order, vectorised over the packets.

It is the oracle the compiled classifier is tested against and the baseline in benchmarks.
Its cost per packet grows with the position of the matching rule (up to the whole list), so it
is only practical up to a few thousand rules. Same interface as `classifier.Classifier`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from nfaas.vnfs.firewall.classifier import NO_MATCH, FlowKeys
from nfaas.vnfs.firewall.rules import Action, Rule, RuleTable

_U64 = np.uint64


def _in_prefix(hi: np.ndarray, lo: np.ndarray, net_hi: int, net_lo: int, length: int) -> np.ndarray:
    """Whether 128-bit addresses (hi, lo) lie in the prefix net/length."""
    if length == 0:
        return np.ones(len(lo), dtype=bool)
    if length <= 64:
        shift = _U64(64 - length)
        return (hi >> shift) == _U64(net_hi >> (64 - length))
    shift = _U64(128 - length)
    return (hi == _U64(net_hi)) & ((lo >> shift) == _U64(net_lo >> (128 - length)))


class LinearClassifier:
    """First match by scanning the rule list in order; build it with `compile`."""

    def __init__(self, table: RuleTable, default_action: Action) -> None:
        self.table = table
        self.default_action = default_action

    @classmethod
    def compile(
        cls, rules: Sequence[Rule] | RuleTable, default_action: Action = Action.ACCEPT
    ) -> LinearClassifier:
        table = rules if isinstance(rules, RuleTable) else RuleTable.from_rules(rules)
        return cls(table, default_action)

    def __len__(self) -> int:
        return len(self.table)

    def classify(self, keys: FlowKeys) -> np.ndarray:
        """Index of the first matching rule for each packet, or -1 (the chain policy)."""
        n = len(keys)
        result = np.full(n, NO_MATCH, dtype=np.int32)
        for version in (4, 6):
            rows = keys.family_rows(version)
            rows = np.arange(n) if rows is None else rows
            if rows.size:
                result[rows] = self._scan(keys, version, rows)
        return result

    def _scan(self, keys: FlowKeys, version: int, rows: np.ndarray) -> np.ndarray:
        if version == 4:
            assert keys.src4 is not None and keys.dst4 is not None
            # An IPv4 address is handled as the top 32 bits of a 128-bit one.
            zeros = np.zeros(rows.size, dtype=_U64)
            src = (keys.src4[rows].astype(_U64) << _U64(32), zeros)
            dst = (keys.dst4[rows].astype(_U64) << _U64(32), zeros)
            width = 32
        else:
            assert keys.src6 is not None and keys.dst6 is not None
            src = (keys.src6[rows, 0].astype(_U64), keys.src6[rows, 1].astype(_U64))
            dst = (keys.dst6[rows, 0].astype(_U64), keys.dst6[rows, 1].astype(_U64))
            width = 128
        proto = keys.proto[rows].astype(np.int32)
        sport = keys.sport[rows].astype(np.int32)
        dport = keys.dport[rows].astype(np.int32)
        result = np.full(rows.size, NO_MATCH, dtype=np.int32)
        pending = np.arange(rows.size)
        t = self.table
        for i in range(len(t)):
            if not pending.size:
                break
            if int(t.family[i]) not in (0, version):
                continue
            ok = np.ones(pending.size, dtype=bool)
            for (hi, lo), net_hi, net_lo, length in (
                (src, t.src_hi[i], t.src_lo[i], t.src_len[i]),
                (dst, t.dst_hi[i], t.dst_lo[i], t.dst_len[i]),
            ):
                if length:
                    net = (int(net_hi) << 64 | int(net_lo)) << (128 - width)
                    ok &= _in_prefix(
                        hi[pending], lo[pending], net >> 64, net & ((1 << 64) - 1), int(length)
                    )
            if t.proto[i] >= 0:
                ok &= proto[pending] == t.proto[i]
            if t.sport_lo[i] >= 0:
                ok &= (sport[pending] >= t.sport_lo[i]) & (sport[pending] <= t.sport_hi[i])
            if t.dport_lo[i] >= 0:
                ok &= (dport[pending] >= t.dport_lo[i]) & (dport[pending] <= t.dport_hi[i])
            result[pending[ok]] = i
            pending = pending[~ok]
        return result
