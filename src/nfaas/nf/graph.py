"""NF graphs: operators wired together with a small fluent API, validated, then run per batch.

    g = Graph("fw")
    tcp, other = g.source("in").parse().filter(is_ip).branch(is_tcp, ("tcp", "other"))
    tcp.map(rewrite).to("join")
    other.to("join")
    g.merge(name="join").deparse().to("out")
    g.sink("out")
    outputs = g.run_batch({"in": batch}, now=time.time())   # {"out": PacketBatch}

`Pipe` is a position in the graph (an operator's output); each fluent call adds an operator
there and returns the next position. `Fork` is the set of outputs of a branch. `.to(name)`
connects to a sink port or to any operator by name (several edges into one operator are
merged). `validate()` checks, before anything runs, that every output is connected exactly
once, the graph has no cycle, every named target exists, names are unique, and each operator
gets the edge type it needs (parsed or raw); every problem is reported with the operator's
name. `run_batch` runs the operators in topological order, after firing due timers.

By default an exception in user code drops the batch at that operator (counted as "error",
with the message in the counters) instead of stopping the NF; `Graph(errors="raise")` lets it
propagate, which is what tests and development want.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

from nfaas.nf.batch import PacketBatch
from nfaas.nf.operators import (
    BatchFn,
    Branch,
    Deparse,
    Discard,
    EdgeType,
    EdgeTypeError,
    Emit,
    Filter,
    Map,
    Merge,
    Operator,
    Output,
    Parse,
    Sink,
    Source,
    Transform,
    merge_outputs,
)
from nfaas.nf.timers import Timers

if TYPE_CHECKING:
    from nfaas.nf.bytestream import Reassembler, StreamCallback
    from nfaas.nf.state import ConnTrack

__all__ = ["Fork", "Graph", "GraphError", "Pipe"]


class GraphError(ValueError):
    """A graph is wired wrongly; `problems` lists every issue found, each naming its operator."""

    def __init__(self, graph: str, problems: Sequence[str]) -> None:
        self.graph = graph
        self.problems = list(problems)
        lines = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"graph '{graph}' is invalid:\n{lines}")


class Pipe:
    """One output of one operator: the place where the next operator attaches."""

    def __init__(self, graph: Graph, node: int, output: int) -> None:
        self.graph = graph
        self.node = node
        self.output = output

    def __repr__(self) -> str:
        op = self.graph._nodes[self.node]
        return f"Pipe({op.describe()}, output {op.outputs[self.output]!r})"

    # -- generic ------------------------------------------------------------------------------

    def then(self, op: Operator) -> Pipe:
        """Attach a single-output operator; returns its output."""
        if len(op.outputs) != 1:
            raise ValueError(
                f"{op.describe()} has {len(op.outputs)} outputs; use .fork(op) for several "
                "or .end(op) for none"
            )
        node = self.graph._add(op)
        self.graph._connect(self.node, self.output, node)
        return Pipe(self.graph, node, 0)

    def fork(self, op: Operator) -> Fork:
        """Attach an operator with several outputs; returns them."""
        node = self.graph._add(op)
        self.graph._connect(self.node, self.output, node)
        return Fork(self.graph, node)

    def end(self, op: Operator) -> None:
        """Attach an operator with no outputs (a custom sink)."""
        node = self.graph._add(op)
        self.graph._connect(self.node, self.output, node)

    def apply(self, fragment: Callable[[Pipe], Pipe]) -> Pipe:
        """Run a reusable fragment: `pipe.apply(lambda p: p.parse().filter(is_ip))`."""
        return fragment(self)

    def to(self, target: str) -> None:
        """Connect to a sink port or to an operator by name (checked by validate)."""
        self.graph._connect_named(self.node, self.output, target)

    def emit(self, port: str, *, checksums: bool = False, name: str | None = None) -> None:
        """Leave through sink `port`: headers are dropped (checksums fixed if asked)."""
        self.then(Emit(name, checksums=checksums)).to(port)

    def drop(self, reason: str = "discarded", name: str | None = None) -> None:
        """End here: every packet arriving is dropped and counted as `reason`."""
        self.end(Discard(name, reason))

    # -- the operator vocabulary -------------------------------------------------------------

    def parse(self, *, drop_invalid: bool = True, name: str | None = None) -> Pipe:
        return self.then(Parse(name, drop_invalid=drop_invalid))

    def deparse(
        self, *, checksums: bool = False, compact: bool = False, name: str | None = None
    ) -> Pipe:
        return self.then(Deparse(name, checksums=checksums, compact=compact))

    def map(self, fn: BatchFn, *, name: str | None = None, headers: bool = True) -> Pipe:
        return self.then(Map(fn, name, headers=headers))

    def filter(
        self,
        pred: BatchFn,
        *,
        name: str | None = None,
        reason: str = "filtered",
        headers: bool = True,
    ) -> Pipe:
        return self.then(Filter(pred, name, reason=reason, headers=headers))

    def transform(
        self,
        fn: BatchFn,
        *,
        name: str | None = None,
        headers: bool = True,
        reparse: bool = False,
    ) -> Pipe:
        return self.then(Transform(fn, name, headers=headers, reparse=reparse))

    def branch(
        self,
        fn: BatchFn,
        outputs: Sequence[str] | int = ("true", "false"),
        *,
        name: str | None = None,
        headers: bool = True,
    ) -> Fork:
        return self.fork(Branch(fn, outputs, name, headers=headers))

    def track(self, conntrack: ConnTrack, *, name: str | None = None) -> Pipe:
        """Connection tracking: adds meta columns ct_state, ct_reply (see nfaas.nf.state)."""
        from nfaas.nf.state import Track

        return self.then(Track(conntrack, name))

    def reassemble(
        self,
        on_data: StreamCallback | Reassembler,
        *,
        name: str | None = None,
        **options: Any,
    ) -> Pipe:
        """TCP bytestreams to `on_data(stream, data)`; packets pass on unchanged."""
        from nfaas.nf.bytestream import Reassemble

        return self.then(Reassemble(on_data, name, **options))


class Fork:
    """The outputs of a multi-output operator, by name or index; iterable in output order."""

    def __init__(self, graph: Graph, node: int) -> None:
        self.graph = graph
        self.node = node

    @property
    def names(self) -> tuple[str, ...]:
        return self.graph._nodes[self.node].outputs

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, key: str | int) -> Pipe:
        op = self.graph._nodes[self.node]
        if isinstance(key, int):
            if not 0 <= key < len(op.outputs):
                raise IndexError(f"{op.describe()} has outputs 0..{len(op.outputs) - 1}")
            return Pipe(self.graph, self.node, key)
        if key not in op.outputs:
            raise KeyError(f"{op.describe()} has no output {key!r} (outputs: {list(op.outputs)})")
        return Pipe(self.graph, self.node, op.outputs.index(key))

    def __iter__(self) -> Iterator[Pipe]:
        return (Pipe(self.graph, self.node, i) for i in range(len(self)))


class Graph:
    """A network function: named source and sink ports and the operators between them."""

    def __init__(
        self,
        name: str,
        *,
        errors: Literal["drop", "raise"] = "drop",
        timers: Timers | None = None,
    ) -> None:
        if errors not in ("drop", "raise"):
            raise ValueError(f"errors must be 'drop' or 'raise', got {errors!r}")
        self.name = name
        self.errors = errors
        self.timers = timers if timers is not None else Timers()
        self.timer_errors = 0
        self.last_timer_error: str | None = None
        self._nodes: list[Operator] = []
        # (from node, its output, to node or to a name resolved by validate), in creation order
        self._edges: list[tuple[int, int, int | str]] = []
        self._sources: dict[str, int] = {}
        self._sinks: dict[str, Sink] = {}
        self._order: list[int] | None = None  # topological order once validated
        self._consumers: list[list[int]] = []
        self._rank: list[list[int]] = []  # per node and output: when its edge was connected
        self._attached: set[int] = set()

    def __repr__(self) -> str:
        return f"Graph({self.name!r}, {len(self._nodes)} operators)"

    # -- building -----------------------------------------------------------------------------

    def _add(self, op: Operator) -> int:
        if any(op is other for other in self._nodes):
            raise ValueError(f"{op.describe()} is already in graph '{self.name}'")
        if not op.named:
            taken = {o.name for o in self._nodes}
            base, k = op.name, 2
            while op.name in taken:
                op.name = f"{base}{k}"
                k += 1
        self._nodes.append(op)
        self._order = None
        return len(self._nodes) - 1

    def _connect(self, src: int, output: int, dst: int) -> None:
        self._edges.append((src, output, dst))
        self._order = None

    def _connect_named(self, src: int, output: int, target: str) -> None:
        self._edges.append((src, output, target))
        self._order = None

    def source(self, port: str) -> Pipe:
        """Declare an input port; returns where its packets (raw) come out."""
        if port in self._sources:
            raise ValueError(f"graph '{self.name}' already has a source port '{port}'")
        node = self._add(Source(port))
        self._sources[port] = node
        return Pipe(self, node, 0)

    def sink(self, port: str) -> None:
        """Declare an output port; connect to it with `.to(port)`."""
        if port in self._sinks:
            raise ValueError(f"graph '{self.name}' already has a sink port '{port}'")
        sink = Sink(port)
        self._add(sink)
        self._sinks[port] = sink

    def merge(self, *pipes: Pipe, name: str | None = None, order: str = "input") -> Pipe:
        """A Merge fed by `pipes` (more can join later with `.to(name)`)."""
        node = self._add(Merge(name, order=order))
        for pipe in pipes:
            if pipe.graph is not self:
                raise ValueError("cannot merge a pipe of another graph")
            self._connect(pipe.node, pipe.output, node)
        return Pipe(self, node, 0)

    # -- inspection ---------------------------------------------------------------------------

    @property
    def sources(self) -> tuple[str, ...]:
        return tuple(self._sources)

    @property
    def sinks(self) -> tuple[str, ...]:
        return tuple(self._sinks)

    @property
    def operators(self) -> tuple[Operator, ...]:
        return tuple(self._nodes)

    def operator(self, name: str) -> Operator:
        for op in self._nodes:
            if op.name == name:
                return op
        raise KeyError(f"graph '{self.name}' has no operator '{name}'")

    def describe(self) -> str:
        """One line per edge, "from[output] -> to", in the order they were made."""
        lines = []
        for src, out, dst in self._all_edges():
            a, b = self._nodes[src], self._nodes[dst]
            port = "" if len(a.outputs) == 1 else f"[{a.outputs[out]}]"
            lines.append(f"{a.kind} '{a.name}'{port} -> {b.kind} '{b.name}'")
        return "\n".join(lines)

    def counters(self) -> list[dict[str, Any]]:
        """A snapshot of every operator's counters (nested ones as "outer/inner")."""
        rows: list[dict[str, Any]] = []
        order = self._order if self._order is not None else range(len(self._nodes))

        def add(op: Operator, name: str) -> None:
            rows.append({"graph": self.name, "operator": name, "kind": op.kind,
                         **op.counters.snapshot()})  # fmt: skip
            for child in op.children():
                add(child, f"{name}/{child.name}")

        for i in order:
            add(self._nodes[i], self._nodes[i].name)
        return rows

    def reset_counters(self) -> None:
        from nfaas.nf.operators import Counters

        def reset(op: Operator) -> None:
            op.counters = Counters()
            for child in op.children():
                reset(child)

        for op in self._nodes:
            reset(op)
        self.timer_errors = 0
        self.last_timer_error = None

    # -- validation ---------------------------------------------------------------------------

    def _target_index(self) -> dict[str, int]:
        """Operators that `.to(name)` can reach, by name: every one but the sources."""
        return {op.name: i for i, op in enumerate(self._nodes) if not isinstance(op, Source)}

    def _all_edges(self) -> list[tuple[int, int, int]]:
        """Edges with names resolved (unknown names left out: validate reports them)."""
        index = self._target_index()
        edges = []
        for src, out, dst in self._edges:
            if isinstance(dst, str):
                if dst not in index:
                    continue
                dst = index[dst]
            edges.append((src, out, dst))
        return edges

    def validate(self) -> None:
        """Check the wiring; raises GraphError listing every problem found."""
        problems: list[str] = []
        nodes = self._nodes
        names: dict[str, int] = {}
        for op in nodes:
            names[op.name] = names.get(op.name, 0) + 1
        for name, count in names.items():
            # A source and a sink may share a port name: one port, both directions.
            shared_port = count == 2 and name in self._sources and name in self._sinks
            if count > 1 and not shared_port:
                problems.append(f"{count} operators are named '{name}'; names must be unique")
        reachable = self._target_index()
        for src, _, target in self._edges:
            if isinstance(target, str) and target in self._sources and target not in reachable:
                problems.append(
                    f"{nodes[src].describe()} is connected to '{target}', which is an input "
                    f"port; connect to a sink (declare one with g.sink({target!r}))"
                )
            elif isinstance(target, str) and target not in reachable:
                problems.append(
                    f"{nodes[src].describe()} is connected to '{target}', which is neither a "
                    f"sink port nor an operator (sinks: {sorted(self._sinks)}; declare it with "
                    f"g.sink({target!r}))"
                )
        edges = self._all_edges()
        consumers: list[list[list[int]]] = [[[] for _ in op.outputs] for op in nodes]
        producers: list[list[int]] = [[] for _ in nodes]
        for src, out, dst in edges:
            consumers[src][out].append(dst)
            producers[dst].append(src)
        for i, op in enumerate(nodes):
            for out, dsts in enumerate(consumers[i]):
                label = f"output '{op.outputs[out]}' of {op.describe()}"
                if not dsts:
                    problems.append(f"{label} is not connected (end it with .to(port) or .drop())")
                elif len(dsts) > 1:
                    targets = ", ".join(nodes[d].describe() for d in dsts)
                    problems.append(
                        f"{label} is connected {len(dsts)} times ({targets}); an output feeds "
                        "one operator (use a branch to split packets)"
                    )
            if op.inputs == 0 and producers[i]:
                problems.append(f"{op.describe()} is an input port and cannot receive packets")
            if op.inputs > 0 and not producers[i]:
                problems.append(f"{op.describe()} has no input")
        order = self._topological(edges)
        if len(order) < len(nodes):
            stuck = [i for i in range(len(nodes)) if i not in set(order)]
            problems.append(
                "the graph has a cycle through " + ", ".join(nodes[i].describe() for i in stuck)
            )
        else:
            problems += self._check_types(order, edges)
        if problems:
            raise GraphError(self.name, problems)
        self._order = order
        self._consumers = [[d[0] for d in outs] for outs in consumers]
        rank = {(src, out): k for k, (src, out, _) in enumerate(edges)}
        self._rank = [
            [rank[i, out] for out in range(len(op.outputs))] for i, op in enumerate(nodes)
        ]
        for i, op in enumerate(nodes):
            if i not in self._attached:
                op.attach(self.timers)
                self._attached.add(i)

    def _topological(self, edges: list[tuple[int, int, int]]) -> list[int]:
        """Kahn's algorithm; ties keep insertion order. Nodes on a cycle are left out."""
        indegree = [0] * len(self._nodes)
        after: list[list[int]] = [[] for _ in self._nodes]
        for src, _, dst in edges:
            indegree[dst] += 1
            after[src].append(dst)
        ready = [i for i, d in enumerate(indegree) if d == 0]
        order: list[int] = []
        while ready:
            i = ready.pop(0)
            order.append(i)
            for j in after[i]:
                indegree[j] -= 1
                if indegree[j] == 0:
                    ready.append(j)
        return order

    def _check_types(self, order: list[int], edges: list[tuple[int, int, int]]) -> list[str]:
        problems: list[str] = []
        incoming: list[list[tuple[int, EdgeType]]] = [[] for _ in self._nodes]
        for i in order:
            op = self._nodes[i]
            kinds = {k for _, k in incoming[i]}
            if len(kinds) > 1:
                parts = ", ".join(
                    f"{k.value} packets from {self._nodes[s].describe()}" for s, k in incoming[i]
                )
                problems.append(f"{op.describe()} receives {parts}; they must all be alike")
                continue
            given = kinds.pop() if kinds else EdgeType.RAW
            try:
                produced = op.output_type(given)
            except EdgeTypeError as exc:
                problems.append(str(exc))
                continue
            for src, _, dst in edges:
                if src == i:
                    incoming[dst].append((i, produced))
        return problems

    # -- running ------------------------------------------------------------------------------

    def tick(self, now: float) -> int:
        """Fire the timers due at `now`; returns how many ran."""
        fired = 0
        while True:
            try:
                return fired + self.timers.advance(now)
            except Exception as exc:
                if self.errors == "raise":
                    raise
                fired += 1
                self.timer_errors += 1
                self.last_timer_error = f"{type(exc).__name__}: {exc}"

    def run_batch(
        self, port_batches: Mapping[str, PacketBatch], now: float
    ) -> dict[str, PacketBatch]:
        """Run one batch per input port through the graph; returns a batch per sink port.

        Timers due at `now` fire first. Ports missing from `port_batches` get no packets;
        every sink appears in the result (empty when nothing reached it).
        """
        if self._order is None:
            self.validate()
        assert self._order is not None
        for port in port_batches:
            if port not in self._sources:
                raise KeyError(
                    f"graph '{self.name}' has no source port '{port}' "
                    f"(sources: {sorted(self._sources)})"
                )
        self.tick(now)
        nodes = self._nodes
        for sink in self._sinks.values():
            sink.collected = []
        # Per node, its inputs tagged with the rank of their edge: merged in connection order.
        pending: dict[int, list[tuple[int, Output]]] = {
            self._sources[p]: [(0, (b, None))] for p, b in port_batches.items()
        }
        for i in self._order:
            inputs = pending.pop(i, None)
            if not inputs:
                continue
            inputs.sort(key=lambda item: item[0])
            batch, headers = merge_outputs([out for _, out in inputs])
            if not len(batch):
                continue
            op = nodes[i]
            try:
                outs = op.run(batch, headers, now)
            except Exception:
                if self.errors == "raise":
                    raise
                op.drop("error", len(batch))
                continue
            for consumer, rank, out in zip(self._consumers[i], self._rank[i], outs, strict=True):
                pending.setdefault(consumer, []).append((rank, out))
        return {port: sink.take() for port, sink in self._sinks.items()}
