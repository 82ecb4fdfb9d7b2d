"""The operator vocabulary of NF graphs: parse, deparse, map, filter, transform, branch, merge.

NetBricks builds network functions from a few operators customised by user functions; this
module is that vocabulary for nfaas. Every operator works on a whole `PacketBatch` at once
(with its parsed `Headers` once a `Parse` has run) and returns one (batch, headers) pair per
output port. User functions receive the batch and the headers and answer with numpy arrays
(a mask, a class per packet) or rewrite bytes in place; they never loop over packets.

Edges carry either raw packets (`EdgeType.RAW`: headers are None) or parsed ones
(`EdgeType.PARSED`). Each operator declares what it needs and what it produces, so a graph can
check its edges before it runs (`nfaas.nf.graph`).

Every operator counts what it sees: packets and bytes in and out, batches, drops by reason
(a Parse counts malformed packets under their `ParseError` name) and errors raised by user
code. Malformed packets never raise: `parse` marks them invalid and `Parse` drops them.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import numpy as np
from numpy.typing import NDArray

from nfaas.nf.batch import PacketBatch
from nfaas.nf.build import fix_ipv4_checksums, fix_l4_checksums
from nfaas.nf.headers import Headers, ParseError, parse
from nfaas.nf.timers import Timers

__all__ = [
    "PARSE_DROP_REASONS",
    "Branch",
    "Compose",
    "Counters",
    "Deparse",
    "Discard",
    "EdgeType",
    "EdgeTypeError",
    "Emit",
    "Filter",
    "Map",
    "Merge",
    "Operator",
    "Output",
    "Parse",
    "Sink",
    "Source",
    "Transform",
    "concat_headers",
    "merge_outputs",
    "select_output",
    "with_meta",
]

# What travels on an edge: the packets and, once parsed, their headers.
Output = tuple[PacketBatch, Headers | None]
BatchFn = Callable[[PacketBatch, Headers], Any]


class EdgeType(enum.Enum):
    """What an edge carries: raw packets, or packets with their parsed `Headers`."""

    RAW = "raw"
    PARSED = "parsed"


class EdgeTypeError(ValueError):
    """An operator cannot take what its input edge carries."""


@dataclasses.dataclass
class Counters:
    """What one operator has seen since it was created (or reset)."""

    batches: int = 0
    packets_in: int = 0
    packets_out: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    drops: dict[str, int] = dataclasses.field(default_factory=dict)
    errors: int = 0
    last_error: str | None = None
    # Operator-specific numbers (conntrack states seen, streams open, ...).
    extra: dict[str, int] = dataclasses.field(default_factory=dict)

    @property
    def dropped(self) -> int:
        return sum(self.drops.values())

    def snapshot(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "packets_in": self.packets_in,
            "packets_out": self.packets_out,
            "bytes_in": self.bytes_in,
            "bytes_out": self.bytes_out,
            "dropped": self.dropped,
            "drops": dict(self.drops),
            "errors": self.errors,
            "last_error": self.last_error,
            "extra": dict(self.extra),
        }


# -- helpers on (batch, headers) pairs ---------------------------------------------------------


def concat_headers(parts: Sequence[Headers]) -> Headers:
    """One Headers holding the rows of all `parts`, in order."""
    if len(parts) == 1:
        return parts[0]
    return Headers(
        **{
            f.name: np.concatenate([getattr(p, f.name) for p in parts])
            for f in dataclasses.fields(Headers)
        }
    )


def _concat_batches(parts: Sequence[PacketBatch]) -> PacketBatch:
    """Concatenate batches; without copying bytes when they all share one buffer."""
    if len(parts) == 1:
        return parts[0]
    data = parts[0].data
    if all(p.data is data for p in parts):
        names = set(parts[0].meta).intersection(*(p.meta for p in parts[1:]))
        return PacketBatch(
            data,
            np.concatenate([p.offsets for p in parts]),
            np.concatenate([p.lengths for p in parts]),
            np.concatenate([p.timestamps_ns for p in parts]),
            np.concatenate([p.port for p in parts]),
            {k: np.concatenate([p.meta[k] for p in parts]) for k in sorted(names)},
        )
    return PacketBatch.concat(parts)


def merge_outputs(parts: Sequence[Output]) -> Output:
    """Join several (batch, headers) inputs into one; headers survive only if all have them."""
    live = [p for p in parts if len(p[0])] or list(parts[:1])
    if not live:
        return PacketBatch.empty(), None
    if len(live) == 1:
        return live[0]
    batch = _concat_batches([b for b, _ in live])
    heads = [h for _, h in live]
    if all(h is not None for h in heads):
        return batch, concat_headers([h for h in heads if h is not None])
    return batch, None


def with_meta(batch: PacketBatch, **columns: NDArray[Any]) -> PacketBatch:
    """The same packets (same buffer, no copy) with extra or replaced meta columns."""
    out = PacketBatch.__new__(PacketBatch)
    out.data, out.offsets, out.lengths = batch.data, batch.offsets, batch.lengths
    out.timestamps_ns, out.port = batch.timestamps_ns, batch.port
    n = len(batch)
    for name, column in columns.items():
        if column.shape[:1] != (n,):
            raise ValueError(f"meta column {name!r} has {column.shape[:1]} rows, expected {n}")
    out.meta = {**batch.meta, **columns}
    return out


def select_output(batch: PacketBatch, headers: Headers | None, rows: NDArray[np.intp]) -> Output:
    """The packets at `rows` (sharing the buffer, no byte copy) with their headers."""
    if rows.shape[0] == len(batch):
        return batch, headers  # rows are in order, so all of them means "unchanged"
    return batch.select(rows, copy=False), None if headers is None else headers.select(rows)


def _as_mask(result: Any, n: int, who: str) -> NDArray[np.bool_]:
    mask = np.asarray(result)
    if mask.shape != (n,):
        raise ValueError(f"{who} returned an array of shape {mask.shape} for {n} packets")
    return mask.astype(np.bool_, copy=False)


def _fn_name(fn: Any, default: str) -> str:
    name = getattr(fn, "__name__", "")
    return name if name and name != "<lambda>" else default


# -- the base class ---------------------------------------------------------------------------


class Operator:
    """One node of an NF graph.

    Subclasses set `kind` (a short word for counters and error messages), `outputs` (names of
    the output ports, in order), `needs` (the input EdgeType required, None for either) and
    implement `process`. `run` wraps `process` with the counters.
    """

    kind: ClassVar[str] = "operator"
    needs: EdgeType | None = None
    inputs: int = 1  # 0 for sources; graph nodes with several incoming edges get them merged

    def __init__(
        self,
        name: str | None = None,
        outputs: Sequence[str] = ("out",),
        default_name: str | None = None,
    ) -> None:
        self.name = name or default_name or self.kind
        self.named = name is not None  # unnamed operators get a unique suffix in a graph
        self.outputs: tuple[str, ...] = tuple(outputs)
        self.counters = Counters()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name!r})"

    def describe(self) -> str:
        return f"{self.kind} '{self.name}'"

    # -- typing of edges ----------------------------------------------------------------------

    def output_type(self, input_type: EdgeType) -> EdgeType:
        """What the outputs carry given the input; raises EdgeTypeError if unacceptable."""
        if self.needs is EdgeType.PARSED and input_type is not EdgeType.PARSED:
            raise EdgeTypeError(
                f"{self.describe()} needs parsed packets but its input carries raw packets "
                "(add .parse() before it)"
            )
        return input_type

    # -- running ------------------------------------------------------------------------------

    def attach(self, timers: Timers) -> None:
        """Called once when the graph is validated: register scheduled work here."""

    def drop(self, reason: str, count: int) -> None:
        """Count `count` packets dropped for `reason`."""
        if count:
            drops = self.counters.drops
            drops[reason] = drops.get(reason, 0) + int(count)

    def process(self, batch: PacketBatch, headers: Headers | None, now: float) -> list[Output]:
        raise NotImplementedError

    def run(self, batch: PacketBatch, headers: Headers | None, now: float) -> list[Output]:
        """`process` with counting; user-code exceptions are recorded, then re-raised."""
        c = self.counters
        c.batches += 1
        c.packets_in += len(batch)
        c.bytes_in += batch.total_bytes
        try:
            outs = self.process(batch, headers, now)
        except Exception as exc:
            c.errors += 1
            c.last_error = f"{type(exc).__name__}: {exc}"
            raise
        if len(outs) != len(self.outputs):
            raise RuntimeError(
                f"{self.describe()} returned {len(outs)} outputs, declared {len(self.outputs)}"
            )
        for out, _ in outs:
            c.packets_out += len(out)
            c.bytes_out += out.total_bytes
        return outs

    def children(self) -> Sequence[Operator]:
        """Operators nested inside this one (Compose)."""
        return ()


# -- endpoints ------------------------------------------------------------------------------


class Source(Operator):
    """Where packets enter: a named input port of the graph. Carries raw packets."""

    kind = "source"
    inputs = 0

    def output_type(self, input_type: EdgeType) -> EdgeType:
        return EdgeType.RAW

    def process(self, batch: PacketBatch, headers: Headers | None, now: float) -> list[Output]:
        return [(batch, None)]


class Sink(Operator):
    """Where packets leave: a named output port of the graph (headers are dropped)."""

    kind = "sink"

    def __init__(self, name: str) -> None:
        super().__init__(name, outputs=())
        self.collected: list[PacketBatch] = []

    def process(self, batch: PacketBatch, headers: Headers | None, now: float) -> list[Output]:
        self.collected.append(batch)
        return []

    def take(self) -> PacketBatch:
        """The packets collected since the last take, as one batch."""
        parts, self.collected = self.collected, []
        if not parts:
            return PacketBatch.empty()
        return _concat_batches(parts)


class Discard(Operator):
    """A dead end that counts every packet it receives as dropped for `reason`."""

    kind = "discard"

    def __init__(self, name: str | None = None, reason: str = "discarded") -> None:
        super().__init__(name, outputs=())
        self.reason = reason

    def process(self, batch: PacketBatch, headers: Headers | None, now: float) -> list[Output]:
        self.drop(self.reason, len(batch))
        return []


# -- packet processing --------------------------------------------------------------------------


class Parse(Operator):
    """Parse every packet (Ethernet / VLAN / IP / L4 / GTP-U) into `Headers`.

    Malformed packets are dropped and counted by their `ParseError` name (e.g.
    "truncated_ip"); with `drop_invalid=False` they pass on with `headers.valid` False and the
    fields parsed before the problem filled in. A parsed input is parsed again (after a
    rewrite that moved headers, say).
    """

    kind = "parse"

    def __init__(self, name: str | None = None, *, drop_invalid: bool = True) -> None:
        super().__init__(name)
        self.drop_invalid = drop_invalid

    def output_type(self, input_type: EdgeType) -> EdgeType:
        return EdgeType.PARSED

    def process(self, batch: PacketBatch, headers: Headers | None, now: float) -> list[Output]:
        h = parse(batch)
        if not self.drop_invalid or h.valid.all():
            return [(batch, h)]
        for error, count in h.error_counts().items():
            self.drop(error.name.lower(), count)
        return [select_output(batch, h, np.flatnonzero(h.valid))]


class Deparse(Operator):
    """Leave the parsed world: forget the headers (the bytes already hold any rewrites).

    With `checksums=True` the IPv4 header and TCP/UDP/ICMP checksums are recomputed first
    (useful after a map that rewrote fields without incremental updates); with `compact=True`
    the packets are copied into a fresh contiguous buffer.
    """

    kind = "deparse"
    needs: EdgeType | None = EdgeType.PARSED

    def __init__(
        self, name: str | None = None, *, checksums: bool = False, compact: bool = False
    ) -> None:
        super().__init__(name)
        self.checksums = checksums
        self.compact = compact

    def output_type(self, input_type: EdgeType) -> EdgeType:
        super().output_type(input_type)
        return EdgeType.RAW

    def process(self, batch: PacketBatch, headers: Headers | None, now: float) -> list[Output]:
        if self.checksums and headers is not None:
            fix_ipv4_checksums(batch, headers)
            fix_l4_checksums(batch, headers)
        return [(batch.compact() if self.compact else batch, None)]


class Emit(Deparse):
    """The last step before a sink: like Deparse, but also takes raw packets."""

    kind = "emit"
    needs = None


class Map(Operator):
    """`fn(batch, headers)` rewrites packets in place (addresses, ports, TTLs, payload bytes).

    Its return value is ignored (so `build.decrement_ttl` and friends fit as they are). The
    number and lengths of packets stay the same; to change them use a Transform. With
    `headers=False` the function also runs on raw packets (and gets None for headers).
    """

    kind = "map"

    def __init__(self, fn: BatchFn, name: str | None = None, *, headers: bool = True) -> None:
        super().__init__(name, default_name=_fn_name(fn, self.kind))
        self.fn = fn
        self.needs = EdgeType.PARSED if headers else None

    def process(self, batch: PacketBatch, headers: Headers | None, now: float) -> list[Output]:
        result = self.fn(batch, headers)  # type: ignore[arg-type]
        if isinstance(result, PacketBatch):
            raise TypeError(
                f"{self.describe()} returned a PacketBatch; a map rewrites packets in place "
                "(use a transform to return new packets)"
            )
        return [(batch, headers)]


class Filter(Operator):
    """Keep the packets where `pred(batch, headers)` is True; drop the rest as `reason`."""

    kind = "filter"

    def __init__(
        self,
        pred: BatchFn,
        name: str | None = None,
        *,
        reason: str = "filtered",
        headers: bool = True,
    ) -> None:
        super().__init__(name, default_name=_fn_name(pred, self.kind))
        self.pred = pred
        self.reason = reason
        self.needs = EdgeType.PARSED if headers else None

    def process(self, batch: PacketBatch, headers: Headers | None, now: float) -> list[Output]:
        mask = _as_mask(self.pred(batch, headers), len(batch), self.describe())  # type: ignore[arg-type]
        keep = np.flatnonzero(mask)
        self.drop(self.reason, len(batch) - keep.shape[0])
        return [select_output(batch, headers, keep)]


class Transform(Operator):
    """`fn(batch, headers) -> PacketBatch` returns new packets, e.g. encapsulated or decapsulated
    with `PacketBatch.rebuild`, or fewer of them (the missing ones count as dropped).

    The output is raw; `reparse=True` parses it again (dropping malformed results).
    """

    kind = "transform"

    def __init__(
        self,
        fn: BatchFn,
        name: str | None = None,
        *,
        headers: bool = True,
        reparse: bool = False,
    ) -> None:
        super().__init__(name, default_name=_fn_name(fn, self.kind))
        self.fn = fn
        self.needs = EdgeType.PARSED if headers else None
        self.reparse = reparse

    def output_type(self, input_type: EdgeType) -> EdgeType:
        super().output_type(input_type)
        return EdgeType.PARSED if self.reparse else EdgeType.RAW

    def process(self, batch: PacketBatch, headers: Headers | None, now: float) -> list[Output]:
        out = self.fn(batch, headers)  # type: ignore[arg-type]
        if not isinstance(out, PacketBatch):
            raise TypeError(
                f"{self.describe()} returned {type(out).__name__}, expected a PacketBatch"
            )
        self.drop("transform", max(0, len(batch) - len(out)))
        if not self.reparse:
            return [(out, None)]
        h = parse(out)
        if h.valid.all():
            return [(out, h)]
        for error, count in h.error_counts().items():
            self.drop(error.name.lower(), count)
        return [select_output(out, h, np.flatnonzero(h.valid))]


# -- control flow ------------------------------------------------------------------------------


class Branch(Operator):
    """Send each packet to one of several outputs.

    `fn(batch, headers)` returns either a boolean mask (True goes to the first output, False to
    the second; two outputs) or an integer class per packet (class k goes to output k; classes
    outside the outputs are dropped as "unclassified"). Packets keep their order within each
    output. Outputs are named by `outputs` (names) or numbered "0".."n-1" (a count).
    """

    kind = "branch"

    def __init__(
        self,
        fn: BatchFn,
        outputs: Sequence[str] | int = ("true", "false"),
        name: str | None = None,
        *,
        headers: bool = True,
    ) -> None:
        names = [str(i) for i in range(outputs)] if isinstance(outputs, int) else list(outputs)
        if len(names) < 1:
            raise ValueError("a branch needs at least one output")
        if len(set(names)) != len(names):
            raise ValueError(f"branch outputs must be distinct, got {names}")
        super().__init__(name, outputs=names, default_name=_fn_name(fn, self.kind))
        self.fn = fn
        self.needs = EdgeType.PARSED if headers else None

    def classify(self, batch: PacketBatch, headers: Headers | None) -> NDArray[np.intp]:
        """The output index of each packet (may be out of range: dropped)."""
        n = len(batch)
        result = np.asarray(self.fn(batch, headers))  # type: ignore[arg-type]
        if result.shape != (n,):
            raise ValueError(
                f"{self.describe()} returned an array of shape {result.shape} for {n} packets"
            )
        if result.dtype == np.bool_:
            if len(self.outputs) != 2:
                raise ValueError(
                    f"{self.describe()} returned a boolean mask but has "
                    f"{len(self.outputs)} outputs (a mask needs exactly 2)"
                )
            return (~result).astype(np.intp)
        if not np.issubdtype(result.dtype, np.integer):
            raise ValueError(
                f"{self.describe()} returned {result.dtype} values; expected bool or integers"
            )
        return result.astype(np.intp, copy=False)

    def process(self, batch: PacketBatch, headers: Headers | None, now: float) -> list[Output]:
        k = len(self.outputs)
        classes = self.classify(batch, headers)
        n = len(batch)
        if n and int(classes.min()) == int(classes.max()) and 0 <= int(classes[0]) < k:
            whole = int(classes[0])  # everything goes one way: pass the batch on untouched
            empty = np.zeros(0, np.intp)
            return [
                (batch, headers) if i == whole else select_output(batch, headers, empty)
                for i in range(k)
            ]
        inside = (classes >= 0) & (classes < k)
        self.drop("unclassified", n - int(np.count_nonzero(inside)))
        if k <= 8:
            rows = [np.flatnonzero(classes == i) for i in range(k)]
        else:
            order = np.argsort(np.where(inside, classes, k), kind="stable")
            bounds = np.cumsum(np.bincount(np.where(inside, classes, k), minlength=k + 1))
            rows = np.split(order, bounds[:-1])[:k]
        return [select_output(batch, headers, r) for r in rows]


class Merge(Operator):
    """Join several branches into one output.

    A graph node with several incoming edges receives their packets concatenated (in the
    order the edges were connected); Merge makes that explicit. With `order="arrival"` the
    merged packets are sorted (stably) by receive timestamp, so a flow split across branches
    leaves in its original order when the packets carry timestamps.
    """

    kind = "merge"

    def __init__(self, name: str | None = None, *, order: str = "input") -> None:
        if order not in ("input", "arrival"):
            raise ValueError(f"merge order must be 'input' or 'arrival', got {order!r}")
        super().__init__(name)
        self.order = order

    def process(self, batch: PacketBatch, headers: Headers | None, now: float) -> list[Output]:
        if self.order == "arrival" and len(batch) > 1:
            ts = batch.timestamps_ns
            if bool(np.any(ts[1:] < ts[:-1])):
                order = np.argsort(ts, kind="stable").astype(np.intp)
                return [
                    (
                        batch.select(order, copy=False),
                        None if headers is None else headers.select(order),
                    )
                ]
        return [(batch, headers)]


class Compose(Operator):
    """A chain of single-output operators used as one: a reusable building block.

    Its counters cover the chain as a whole; each member keeps its own counters too (the graph
    reports them as "compose/member").
    """

    kind = "compose"

    def __init__(self, *members: Operator, name: str | None = None) -> None:
        if not members:
            raise ValueError("compose needs at least one operator")
        for op in members:
            if len(op.outputs) != 1 or op.inputs != 1:
                raise ValueError(
                    f"compose can only chain single-input, single-output operators; "
                    f"{op.describe()} has {op.inputs} inputs and {len(op.outputs)} outputs"
                )
        super().__init__(name)
        self.members: tuple[Operator, ...] = tuple(members)
        self._raw_out = False  # set by output_type: does the chain end in raw packets?

    def children(self) -> Sequence[Operator]:
        return self.members

    def output_type(self, input_type: EdgeType) -> EdgeType:
        kind = input_type
        for op in self.members:
            try:
                kind = op.output_type(kind)
            except EdgeTypeError as exc:
                raise EdgeTypeError(f"in {self.describe()}: {exc}") from None
        self._raw_out = kind is EdgeType.RAW
        return kind

    def attach(self, timers: Timers) -> None:
        for op in self.members:
            op.attach(timers)

    def process(self, batch: PacketBatch, headers: Headers | None, now: float) -> list[Output]:
        for op in self.members:
            if not len(batch):
                # Nothing left: skip the rest (user functions need not handle empty batches).
                return [(batch, None if self._raw_out else headers)]
            [(batch, headers)] = op.run(batch, headers, now)
        return [(batch, headers)]


# Names of ParseError values, so counters and docs can list every drop reason of a Parse.
PARSE_DROP_REASONS: tuple[str, ...] = tuple(e.name.lower() for e in ParseError if e)
