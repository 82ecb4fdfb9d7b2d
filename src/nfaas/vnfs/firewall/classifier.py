"""Compiled first-match packet classifier: tuple space search with merged tuples, in numpy.

Algorithm (docs/vnf-firewall.md has the argument): tuple space search (Srinivasan, Suri and
Varghese, SIGCOMM 1999), as in Open vSwitch's classifier, with TupleMerge-style tuple merging
(Daly, Liu and Torng, ICNP 2016). Every rule has a *shape* -- (source prefix length,
destination prefix length, exact protocol?, exact source port?, exact destination port?). A
*tuple* is a shape used as a mask: it owns an open-addressing hash table keyed on the packet
fields under that mask. A rule lives in one tuple whose mask is no more specific than its own
(rare shapes merge into a more general tuple); each table slot heads a chain of its rules in
priority order. Port ranges stay out of the key. A hit walks the chain, verifying each rule
(its own masks and ranges) against the packet and skipping rules no better than the packet's
best match so far. A packet's answer is the lowest rule position over all tuples.

Per packet the cost is one hash probe per tuple plus the chain walks, independent of the
number of rules; the number of tuples is what grows, and merging keeps it small. Everything is
vectorised over the batch: each step is a numpy operation over all packets (or over the ones
still unresolved), never a Python loop over packets.

Incremental updates keep rule positions in the chains: inserting at position p adds one to
every stored position >= p (one vectorised pass over the rules, about a millisecond per 10^6
rules) and puts the rule into a fitting tuple's table; deleting unlinks it and shifts the
positions back. No table is rebuilt except one tuple whose load grows past its limit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from nfaas.vnfs.firewall.rules import PORT_MAX, Action, Rule, RuleTable

NO_MATCH = -1
_BEST_NONE = np.iinfo(np.int32).max
_EMPTY = -2  # slot never used; -1 in `head` means: key present, no live rule in its chain
_U64 = np.uint64
_ALL = (1 << 64) - 1
# Odd 64-bit multipliers (from splitmix64 / murmur3 finalisers) for multiplicative hashing.
_HASH_MULT = (
    0x9E3779B97F4A7C15,
    0xBF58476D1CE4E5B9,
    0x94D049BB133111EB,
    0xFF51AFD7ED558CCD,
    0xC4CEB9FE1A85EC53,
)
_MAX_LOAD = 0.4
_CHAIN_LIMIT = 8  # an inserted rule joins a merged tuple only while the key's chain is short


@dataclass(frozen=True)
class FlowKeys:
    """A batch of packet 5-tuples as numpy arrays, one row per packet.

    IPv4 addresses are uint32 arrays (`src4`, `dst4`); IPv6 addresses are uint64 arrays of
    shape (n, 2) holding the high and low 64 bits (`src6`, `dst6`). A batch of one family
    fills only that family's arrays; a mixed batch fills both and says per packet which one
    applies in `is_ipv6`. Ports are 0 for protocols without ports.
    """

    proto: np.ndarray
    sport: np.ndarray
    dport: np.ndarray
    src4: np.ndarray | None = None
    dst4: np.ndarray | None = None
    src6: np.ndarray | None = None
    dst6: np.ndarray | None = None
    is_ipv6: np.ndarray | None = None

    @classmethod
    def ipv4(
        cls,
        src: np.ndarray,
        dst: np.ndarray,
        proto: np.ndarray,
        sport: np.ndarray,
        dport: np.ndarray,
    ) -> FlowKeys:
        return cls(proto=proto, sport=sport, dport=dport, src4=src, dst4=dst)

    @classmethod
    def ipv6(
        cls,
        src: np.ndarray,
        dst: np.ndarray,
        proto: np.ndarray,
        sport: np.ndarray,
        dport: np.ndarray,
    ) -> FlowKeys:
        return cls(proto=proto, sport=sport, dport=dport, src6=src, dst6=dst)

    def __len__(self) -> int:
        return len(self.proto)

    def family_rows(self, version: int) -> np.ndarray | None:
        """Row indices of the packets of IP `version`; None when that is every row."""
        has4, has6 = self.src4 is not None, self.src6 is not None
        if self.is_ipv6 is None:
            if has4 and has6:
                raise ValueError("a batch with both IPv4 and IPv6 addresses needs is_ipv6")
            if (version == 4 and has4) or (version == 6 and has6):
                return None
            return np.empty(0, dtype=np.intp)
        mask = self.is_ipv6 if version == 6 else ~self.is_ipv6
        return np.flatnonzero(mask)


@dataclass
class _Packets:
    """The words a tuple masks and hashes: addresses then (proto << 32 | sport << 16 | dport)."""

    words: list[np.ndarray]
    sport: np.ndarray
    dport: np.ndarray


def _select(array: np.ndarray, rows: np.ndarray | None) -> np.ndarray:
    return array if rows is None else array[rows]


def _packets(keys: FlowKeys, version: int, rows: np.ndarray | None) -> _Packets:
    proto = _select(keys.proto, rows).astype(_U64)
    sport = _select(keys.sport, rows).astype(np.int32)
    dport = _select(keys.dport, rows).astype(np.int32)
    ports = (proto << _U64(32)) | (sport.astype(_U64) << _U64(16)) | dport.astype(_U64)
    if version == 4:
        assert keys.src4 is not None and keys.dst4 is not None
        src = _select(keys.src4, rows).astype(_U64)
        dst = _select(keys.dst4, rows).astype(_U64)
        return _Packets([(src << _U64(32)) | dst, ports], sport, dport)
    assert keys.src6 is not None and keys.dst6 is not None
    src6 = _select(keys.src6, rows)
    dst6 = _select(keys.dst6, rows)
    words = [np.ascontiguousarray(a[:, col], dtype=_U64) for a in (src6, dst6) for col in (0, 1)]
    return _Packets([*words, ports], sport, dport)


# --- rule shapes and masks ----------------------------------------------------------------------

Shape = tuple[int, int, int, int, int]  # src len, dst len, exact proto, exact sport, exact dport


def _prefix_mask(length: np.ndarray, width: int) -> np.ndarray:
    """Masks (as uint64) of `width`-bit prefixes of the given lengths."""
    length = length.astype(np.int64)
    shift = np.clip(64 - length, 0, 63).astype(_U64)
    masks = np.where(length > 0, np.full(len(length), _ALL, dtype=_U64) << shift, _U64(0))
    masks = masks.astype(_U64)
    return masks >> _U64(64 - width) if width < 64 else masks


def _split_prefix(length: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """128-bit prefix lengths as masks of the high and low 64-bit words."""
    length = length.astype(np.int64)
    hi = _prefix_mask(np.minimum(length, 64), 64)
    lo = _prefix_mask(np.maximum(length - 64, 0), 64)
    return hi, lo


@dataclass
class _RuleWords:
    """Per-rule mask and value words, ranges to verify, and shapes, for one family."""

    masks: list[np.ndarray]
    values: list[np.ndarray]
    sport: tuple[np.ndarray, np.ndarray]
    dport: tuple[np.ndarray, np.ndarray]
    shapes: np.ndarray  # int64 shape codes


def _shape_code(
    sl: np.ndarray, dl: np.ndarray, pe: np.ndarray, se: np.ndarray, de: np.ndarray
) -> np.ndarray:
    return (
        (sl.astype(np.int64) << 11)
        | (dl.astype(np.int64) << 3)
        | (pe.astype(np.int64) << 2)
        | (se.astype(np.int64) << 1)
        | de.astype(np.int64)
    )


def _decode_shape(code: int) -> Shape:
    return (code >> 11, (code >> 3) & 0xFF, (code >> 2) & 1, (code >> 1) & 1, code & 1)


def _range_columns(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(exact?, verify lo, verify hi): exact ports go in the mask, true ranges are verified."""
    present = lo >= 0
    exact = present & (lo == hi)
    ranged = present & ~exact & ~((lo == 0) & (hi == PORT_MAX))
    vlo = np.where(ranged, lo, 0).astype(np.int32)
    vhi = np.where(ranged, hi, PORT_MAX).astype(np.int32)
    return exact, vlo, vhi


def _rule_words(table: RuleTable, version: int) -> _RuleWords:
    proto_exact = table.proto >= 0
    sport_exact, sp_lo, sp_hi = _range_columns(table.sport_lo, table.sport_hi)
    dport_exact, dp_lo, dp_hi = _range_columns(table.dport_lo, table.dport_hi)
    ports_mask = (
        np.where(proto_exact, _U64(0xFF << 32), _U64(0))
        | np.where(sport_exact, _U64(0xFFFF << 16), _U64(0))
        | np.where(dport_exact, _U64(0xFFFF), _U64(0))
    ).astype(_U64)
    ports_value = (
        (np.maximum(table.proto, 0).astype(_U64) << _U64(32))
        | (np.maximum(table.sport_lo, 0).astype(_U64) << _U64(16))
        | np.maximum(table.dport_lo, 0).astype(_U64)
    ) & ports_mask
    if version == 4:
        smask = _prefix_mask(table.src_len, 32)
        dmask = _prefix_mask(table.dst_len, 32)
        mask = (smask << _U64(32)) | dmask
        value = ((table.src_lo << _U64(32)) | (table.dst_lo & _U64(0xFFFFFFFF))) & mask
        masks, values = [mask, ports_mask], [value, ports_value]
    else:
        s_hi, s_lo = _split_prefix(table.src_len)
        d_hi, d_lo = _split_prefix(table.dst_len)
        masks = [s_hi, s_lo, d_hi, d_lo, ports_mask]
        values = [
            table.src_hi & s_hi,
            table.src_lo & s_lo,
            table.dst_hi & d_hi,
            table.dst_lo & d_lo,
            ports_value,
        ]
    shapes = _shape_code(table.src_len, table.dst_len, proto_exact, sport_exact, dport_exact)
    return _RuleWords(masks, values, (sp_lo, sp_hi), (dp_lo, dp_hi), shapes)


def _shape_masks(shape: Shape, version: int) -> list[int]:
    sl, dl, pe, se, de = shape
    ports = (0xFF << 32 if pe else 0) | (0xFFFF << 16 if se else 0) | (0xFFFF if de else 0)
    if version == 4:
        smask = ((1 << sl) - 1) << (32 - sl)
        dmask = ((1 << dl) - 1) << (32 - dl)
        return [(smask << 32) | dmask, ports]
    src = ((1 << sl) - 1) << (128 - sl)
    dst = ((1 << dl) - 1) << (128 - dl)
    return [src >> 64, src & _ALL, dst >> 64, dst & _ALL, ports]


def _fits(rule: Shape, tuple_shape: Shape) -> bool:
    """Whether a rule of shape `rule` can live in a tuple of shape `tuple_shape`."""
    return all(t <= r for r, t in zip(rule, tuple_shape, strict=True))


# --- rule storage -------------------------------------------------------------------------------


class _Entries:
    """Columns for the rules of one family, indexed by a stable entry id; grows by doubling."""

    def __init__(self, words: _RuleWords, positions: np.ndarray) -> None:
        n = len(positions)
        self.size = n
        self.pos = positions.astype(np.int32)
        self.next = np.full(n, -1, dtype=np.int32)
        self.live = np.ones(n, dtype=bool)
        self.tuple = np.full(n, -1, dtype=np.int32)
        self.slot = np.full(n, -1, dtype=np.int64)
        self.masks = [m.astype(_U64) for m in words.masks]
        self.values = [v.astype(_U64) for v in words.values]
        self.sp_lo, self.sp_hi = words.sport
        self.dp_lo, self.dp_hi = words.dport
        self.shapes = words.shapes

    _COLUMNS = (
        "pos",
        "next",
        "live",
        "tuple",
        "slot",
        "sp_lo",
        "sp_hi",
        "dp_lo",
        "dp_hi",
        "shapes",
    )

    def append(self, words: _RuleWords, position: int) -> int:
        """Add one rule (the single row of `words`); returns its entry id."""
        if self.size == len(self.pos):
            grow = max(16, self.size)
            for name in self._COLUMNS:
                column = getattr(self, name)
                setattr(self, name, np.concatenate([column, np.zeros(grow, dtype=column.dtype)]))
            self.masks = [np.concatenate([m, np.zeros(grow, dtype=_U64)]) for m in self.masks]
            self.values = [np.concatenate([v, np.zeros(grow, dtype=_U64)]) for v in self.values]
        entry = self.size
        self.size += 1
        self.pos[entry] = position
        self.next[entry] = -1
        self.live[entry] = True
        self.tuple[entry] = -1
        self.slot[entry] = -1
        for i, (m, v) in enumerate(zip(words.masks, words.values, strict=True)):
            self.masks[i][entry] = m[0]
            self.values[i][entry] = v[0]
        self.sp_lo[entry], self.sp_hi[entry] = words.sport[0][0], words.sport[1][0]
        self.dp_lo[entry], self.dp_hi[entry] = words.dport[0][0], words.dport[1][0]
        self.shapes[entry] = words.shapes[0]
        return entry


# --- one tuple ----------------------------------------------------------------------------------


@dataclass
class _Tuple:
    """One mask and its open-addressing hash table: masked key -> chain of rule entries.

    A slot stores the key's 64-bit hash (its fingerprint) with the lowest bit replaced by an
    overflow flag -- "a key whose home is this slot sits further on" -- and, in `head`, the
    first entry of the key's chain. Fingerprints are unique within a table (the hash is
    re-salted if not), so a packet needs one probe unless its home slot overflowed. A hit is
    always verified against the rule itself, so a crafted hash collision cannot match.
    """

    shape: Shape
    masks: list[int]
    verify_ranges: bool = False
    salt: int = 0
    bits: int = 1
    fp: np.ndarray = field(default_factory=lambda: np.zeros(3, np.uint64))
    head: np.ndarray = field(default_factory=lambda: np.full(3, _EMPTY, np.int32))
    used: int = 0  # occupied slots
    rules: int = 0  # live rules
    overflowed: bool = False

    # hashing -----------------------------------------------------------------------------------
    def masked(self, words: Sequence[np.ndarray]) -> list[np.ndarray | None]:
        """The packet words under this tuple's mask (None for a word the mask zeroes)."""
        out: list[np.ndarray | None] = []
        for word, mask in zip(words, self.masks, strict=True):
            if mask == 0:
                out.append(None)
            elif mask == _ALL:
                out.append(word)
            else:
                out.append(word & _U64(mask))
        return out

    def hash(self, keys: Sequence[np.ndarray | None], n: int) -> np.ndarray:
        """64-bit multiplicative hash of masked keys; top bits give the home slot."""
        total: np.ndarray | None = None
        for i, key in enumerate(keys):
            if key is None:
                continue
            term = key * _U64(_HASH_MULT[(i + self.salt) % len(_HASH_MULT)])
            total = term if total is None else total + term
        return np.zeros(n, dtype=_U64) if total is None else total

    def home(self, hashes: np.ndarray) -> np.ndarray:
        return (hashes >> _U64(64 - self.bits)).astype(np.intp)

    # building ----------------------------------------------------------------------------------
    def build(self, entries: _Entries, members: np.ndarray) -> None:
        """(Re)build the table from the live entries `members` (any order)."""
        keys = [entries.values[i][members] & _U64(m) for i, m in enumerate(self.masks)]
        order = np.lexsort((entries.pos[members], *reversed(keys)))
        members = members[order]
        keys = [k[order] for k in keys]
        n = len(members)
        new_group = np.ones(n, dtype=bool)
        if n > 1:
            same = np.ones(n - 1, dtype=bool)
            for k in keys:
                same &= k[1:] == k[:-1]
            new_group[1:] = ~same
        nxt = np.full(n, -1, dtype=np.int32)
        if n > 1:
            nxt[:-1] = np.where(new_group[1:], -1, members[1:])
        entries.next[members] = nxt
        starts = np.flatnonzero(new_group)
        unique_keys: list[np.ndarray | None] = [
            k[starts] if m else None for k, m in zip(keys, self.masks, strict=True)
        ]
        groups = len(starts)
        self.bits = max(1, int(np.ceil(np.log2(max(1.0, groups / _MAX_LOAD)))))
        for salt in range(len(_HASH_MULT)):
            self.salt = salt
            hashes = self.hash(unique_keys, groups)
            if np.unique(hashes | _U64(1)).size == groups:
                break
        else:  # pragma: no cover - needs 64-bit collisions under every multiplier set
            raise RuntimeError("tuple hash collision under every salt")
        homes = self.home(hashes)
        by_home = np.argsort(homes, kind="stable")
        ordinal = np.arange(groups)
        placed = np.empty(groups, dtype=np.int64)
        if groups:
            placed[by_home] = np.maximum.accumulate(homes[by_home] - ordinal) + ordinal
        length = max(1 << self.bits, int(placed.max()) + 1 if groups else 0) + 1
        self.fp = np.zeros(length, dtype=_U64)
        self.head = np.full(length, _EMPTY, dtype=np.int32)
        self.fp[placed] = hashes & ~_U64(1)
        displaced = homes[placed != homes]
        self.fp[displaced] |= _U64(1)
        self.overflowed = bool(displaced.size)
        self.head[placed] = members[starts].astype(np.int32)
        entries.slot[members] = placed[np.cumsum(new_group) - 1]
        self.used = groups
        self.rules = n
        ranged = (entries.sp_lo[members] > 0) | (entries.sp_hi[members] < PORT_MAX)
        ranged |= (entries.dp_lo[members] > 0) | (entries.dp_hi[members] < PORT_MAX)
        self.verify_ranges = bool(np.any(ranged))

    # lookups -----------------------------------------------------------------------------------
    def lookup(self, packets: _Packets) -> tuple[np.ndarray, np.ndarray]:
        """(rows, first entry) for the packets whose key has a chain in this table."""
        hashes = self.hash(self.masked(packets.words), len(packets.sport))
        home = self.home(hashes)
        stored = self.fp[home]
        wanted = hashes | _U64(1)
        found = (stored | _U64(1)) == wanted
        rows = np.flatnonzero(found)
        first = self.head[home[rows]]
        if self.overflowed:
            pending = np.flatnonzero((stored & _U64(1)) > found)
            more_rows, more_first = [rows], [first]
            step = 1
            while pending.size:
                slot = home[pending] + step
                head = self.head[slot]
                hit = (self.fp[slot] | _U64(1)) == wanted[pending]
                more_rows.append(pending[hit])
                more_first.append(head[hit])
                pending = pending[~hit & (head != _EMPTY)]
                step += 1
            rows, first = np.concatenate(more_rows), np.concatenate(more_first)
        live = first >= 0
        return rows[live], first[live]

    def match(self, packets: _Packets, entries: _Entries, best: np.ndarray) -> None:
        """Lower `best` (rule positions) where a rule of this tuple matches."""
        rows, entry = self.lookup(packets)
        while rows.size:
            # Chains are in position order: once a rule is no better than the packet's best
            # match so far, neither is the rest of its chain (priority pruning).
            position = entries.pos[entry]
            better = position < best[rows]
            rows, entry, position = rows[better], entry[better], position[better]
            ok = self._verify(packets, entries, rows, entry)
            best[rows[ok]] = position[ok]
            rows, entry = rows[~ok], entries.next[entry[~ok]]
            alive = entry >= 0
            rows, entry = rows[alive], entry[alive]

    def _verify(
        self, packets: _Packets, entries: _Entries, rows: np.ndarray, entry: np.ndarray
    ) -> np.ndarray:
        ok = np.ones(rows.size, dtype=bool)
        for word, masks, values in zip(packets.words, entries.masks, entries.values, strict=True):
            ok &= (word[rows] & masks[entry]) == values[entry]
        if self.verify_ranges:
            sport, dport = packets.sport[rows], packets.dport[rows]
            ok &= (sport >= entries.sp_lo[entry]) & (sport <= entries.sp_hi[entry])
            ok &= (dport >= entries.dp_lo[entry]) & (dport <= entries.dp_hi[entry])
        return ok

    # single-rule updates -----------------------------------------------------------------------
    def key_hash(self, key: Sequence[int]) -> int:
        words = [
            np.array([k], dtype=_U64) if m else None for k, m in zip(key, self.masks, strict=True)
        ]
        return int(self.hash(words, 1)[0])

    def find_slot(self, key: Sequence[int], entries: _Entries) -> tuple[int, bool]:
        """(slot, present) for one masked key: its slot, or the empty slot it would take.

        Raises `_Collision` when another key has the same fingerprint.
        """
        wanted = self.key_hash(key) | 1
        slot = int(self.home(np.array([wanted], dtype=_U64))[0])
        while True:
            if self.head[slot] == _EMPTY:
                return slot, False
            if int(self.fp[slot]) | 1 == wanted:
                head = int(self.head[slot])
                if head < 0 or self._key_of(head, entries) == list(key):
                    return slot, True
                raise _Collision
            slot += 1

    def _key_of(self, entry: int, entries: _Entries) -> list[int]:
        return [int(entries.values[i][entry]) & m for i, m in enumerate(self.masks)]

    def _grow_tail(self) -> None:
        extra = 16
        self.fp = np.concatenate([self.fp, np.zeros(extra, dtype=_U64)])
        self.head = np.concatenate([self.head, np.full(extra, _EMPTY, dtype=np.int32)])

    def chain_length(self, slot: int, entries: _Entries) -> int:
        count, entry = 0, int(self.head[slot])
        while entry >= 0:
            count, entry = count + 1, int(entries.next[entry])
        return count

    def add(self, entries: _Entries, entry: int) -> None:
        """Link one entry into its key's chain, in position order (may raise `_Collision`)."""
        key = self._key_of(entry, entries)
        slot, present = self.find_slot(key, entries)
        if not present:
            hashed = self.key_hash(key)
            home = int(self.home(np.array([hashed], dtype=_U64))[0])
            self.fp[slot] = _U64(hashed & ~1)
            if slot != home:
                self.fp[home] |= _U64(1)
                self.overflowed = True
            self.head[slot] = -1
            self.used += 1
            if slot == len(self.head) - 1:  # keep an empty slot last: probes stop there
                self._grow_tail()
        position = entries.pos[entry]
        previous, current = -1, int(self.head[slot])
        while current >= 0 and entries.pos[current] < position:
            previous, current = current, int(entries.next[current])
        entries.next[entry] = current
        if previous < 0:
            self.head[slot] = entry
        else:
            entries.next[previous] = entry
        entries.slot[entry] = slot
        self.rules += 1
        if entries.sp_lo[entry] > 0 or entries.sp_hi[entry] < PORT_MAX:
            self.verify_ranges = True
        if entries.dp_lo[entry] > 0 or entries.dp_hi[entry] < PORT_MAX:
            self.verify_ranges = True

    def remove(self, entries: _Entries, entry: int) -> None:
        """Unlink one entry; its slot stays occupied so that probe runs stay intact."""
        slot = int(entries.slot[entry])
        previous, current = -1, int(self.head[slot])
        while current != entry:
            previous, current = current, int(entries.next[current])
        following = int(entries.next[entry])
        if previous < 0:
            self.head[slot] = following
        else:
            entries.next[previous] = following
        self.rules -= 1

    def needs_rebuild(self) -> bool:
        return self.used > _MAX_LOAD * 1.5 * (1 << self.bits)


class _Collision(Exception):
    """Two keys of one tuple share a fingerprint: the tuple must be re-salted."""


# --- one address family -------------------------------------------------------------------------


class _TupleSpace:
    """The tuples and rule entries for one IP version."""

    def __init__(
        self, version: int, table: RuleTable, positions: np.ndarray, merge_share: float
    ) -> None:
        self.version = version
        words = _rule_words(table, version)
        self.entries = _Entries(words, positions)
        self.tuples: list[_Tuple] = []
        assignment = self._choose_tuples(words.shapes, merge_share)
        for index, tuple_ in enumerate(self.tuples):
            members = np.flatnonzero(assignment == index)
            tuple_.build(self.entries, members)
            self.entries.tuple[members] = index

    def _choose_tuples(self, shapes: np.ndarray, merge_share: float) -> np.ndarray:
        """Tuple index per entry: frequent shapes get their own tuple, rare ones merge."""
        assignment = np.full(len(shapes), -1, dtype=np.int64)
        if not len(shapes):
            return assignment
        codes, inverse, counts = np.unique(shapes, return_inverse=True, return_counts=True)
        threshold = merge_share * len(shapes)
        tuple_of_code: dict[int, int] = {}
        for index in np.argsort(-counts, kind="stable"):
            shape = _decode_shape(int(codes[index]))
            fitting = [i for i, t in enumerate(self.tuples) if _fits(shape, t.shape)]
            if counts[index] >= threshold or not fitting:
                tuple_of_code[index] = len(self.tuples)
                self.tuples.append(_Tuple(shape, _shape_masks(shape, self.version)))
            else:
                tuple_of_code[index] = max(fitting, key=lambda i: sum(self.tuples[i].shape))
        lookup = np.array([tuple_of_code[i] for i in range(len(codes))], dtype=np.int64)
        return lookup[inverse.ravel()]

    def classify(self, packets: _Packets, best: np.ndarray) -> None:
        for tuple_ in self.tuples:
            if tuple_.rules:
                tuple_.match(packets, self.entries, best)

    def shift(self, position: int, delta: int) -> None:
        """Move every stored position >= `position` by `delta`."""
        pos = self.entries.pos[: self.entries.size]
        pos[pos >= position] += delta

    def insert(self, position: int, table: RuleTable) -> None:
        words = _rule_words(table, self.version)
        entry = self.entries.append(words, position)
        index = self._tuple_for(entry, _decode_shape(int(words.shapes[0])))
        tuple_ = self.tuples[index]
        self.entries.tuple[entry] = index
        try:
            tuple_.add(self.entries, entry)
        except _Collision:
            tuple_.salt += 1
            tuple_.build(self.entries, self._members(index))
            return
        if tuple_.needs_rebuild():
            tuple_.build(self.entries, self._members(index))

    def _members(self, index: int) -> np.ndarray:
        size = self.entries.size
        return np.flatnonzero((self.entries.tuple[:size] == index) & self.entries.live[:size])

    def _tuple_for(self, entry: int, shape: Shape) -> int:
        """The rule's own tuple if it exists, else a fitting one with a short chain, else new."""
        fitting = [i for i, t in enumerate(self.tuples) if _fits(shape, t.shape)]
        for i in fitting:
            if self.tuples[i].shape == shape:
                return i
        for i in sorted(fitting, key=lambda i: -sum(self.tuples[i].shape)):
            tuple_ = self.tuples[i]
            try:
                slot, present = tuple_.find_slot(tuple_._key_of(entry, self.entries), self.entries)
            except _Collision:
                continue
            if not present or tuple_.chain_length(slot, self.entries) < _CHAIN_LIMIT:
                return i
        tuple_ = _Tuple(shape, _shape_masks(shape, self.version))
        tuple_.build(self.entries, np.empty(0, dtype=np.int64))
        self.tuples.append(tuple_)
        return len(self.tuples) - 1

    def delete(self, position: int) -> None:
        size = self.entries.size
        found = np.flatnonzero((self.entries.pos[:size] == position) & self.entries.live[:size])
        for entry in found:
            self.tuples[int(self.entries.tuple[entry])].remove(self.entries, int(entry))
            self.entries.live[entry] = False
        self.shift(position + 1, -1)


# --- the classifier -----------------------------------------------------------------------------


class Classifier:
    """First-match classifier over an ordered rule list; build it with `Classifier.compile`."""

    def __init__(
        self, spaces: dict[int, _TupleSpace], actions: np.ndarray, default_action: Action
    ) -> None:
        self._spaces = spaces
        self._actions = actions
        self.default_action = default_action

    @classmethod
    def compile(
        cls,
        rules: Sequence[Rule] | RuleTable,
        default_action: Action = Action.ACCEPT,
        *,
        merge_share: float = 0.01,
    ) -> Classifier:
        """Compile rules (in priority order) into tuple tables.

        A rule shape holding less than `merge_share` of the rules shares a more general tuple
        instead of getting its own (0 disables merging).
        """
        table = rules if isinstance(rules, RuleTable) else RuleTable.from_rules(rules)
        spaces = {}
        for version in (4, 6):
            rows = np.flatnonzero((table.family == 0) | (table.family == version))
            spaces[version] = _TupleSpace(version, table.take(rows), rows, merge_share)
        return cls(spaces, table.action.copy(), default_action)

    def __len__(self) -> int:
        return len(self._actions)

    def classify(self, keys: FlowKeys) -> np.ndarray:
        """Index of the first matching rule for each packet, or -1 (the chain policy)."""
        result = np.full(len(keys), NO_MATCH, dtype=np.int32)
        for version, space in self._spaces.items():
            rows = keys.family_rows(version)
            if rows is not None and not rows.size:
                continue
            packets = _packets(keys, version, rows)
            best = np.full(len(packets.sport), _BEST_NONE, dtype=np.int32)
            space.classify(packets, best)
            found = np.where(best == _BEST_NONE, NO_MATCH, best).astype(np.int32)
            if rows is None:
                result = found
            else:
                result[rows] = found
        return result

    def verdicts(self, matches: np.ndarray) -> np.ndarray:
        """Action codes (`Action.code`) for `classify` results, the policy where -1."""
        codes = (
            self._actions[np.maximum(matches, 0)]
            if len(self._actions)
            else np.zeros(len(matches), np.uint8)
        )
        return np.where(matches >= 0, codes, self.default_action.code).astype(np.uint8)

    def insert(self, position: int, rule: Rule) -> None:
        """Insert `rule` so that it becomes rule `position` (0 <= position <= len)."""
        if not 0 <= position <= len(self):
            raise IndexError(f"insert position {position} is outside 0..{len(self)}")
        table = RuleTable.from_rules([rule])
        for version, space in self._spaces.items():
            space.shift(position, 1)
            if int(table.family[0]) in (0, version):
                space.insert(position, table)
        self._actions = np.insert(self._actions, position, rule.action.code)

    def delete(self, position: int) -> None:
        """Remove rule `position`; later rules move up by one."""
        if not 0 <= position < len(self):
            raise IndexError(f"delete position {position} is outside 0..{len(self) - 1}")
        for space in self._spaces.values():
            space.delete(position)
        self._actions = np.delete(self._actions, position)

    def stats(self) -> dict[str, object]:
        """Tuple counts, table sizes and chain lengths, for docs and benchmarks."""
        out: dict[str, object] = {"rules": len(self)}
        for version, space in self._spaces.items():
            live = [t for t in space.tuples if t.rules]
            out[f"ipv{version}_tuples"] = len(live)
            out[f"ipv{version}_slots"] = sum(len(t.head) for t in live)
        return out
