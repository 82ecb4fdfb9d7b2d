"""Small helpers every VNF uses: checking configuration numbers, finding a VNF's operator.

Configuration errors name the setting and the value given, in one wording for all VNFs
("sweep_every must be > 0 seconds, got 0"). A VNF's graph function builds the graph around
one operator that holds the VNF's state; `find_operator` is how `firewall_of`, `nat_of` and
the like get it back from the graph.
"""

from __future__ import annotations

from typing import TypeVar

from nfaas.nf.graph import Graph
from nfaas.nf.operators import Operator

__all__ = ["check_positive", "check_range", "find_operator"]

OperatorT = TypeVar("OperatorT", bound=Operator)


def check_positive(name: str, value: float, unit: str = "") -> None:
    """ValueError unless `value` > 0 (NaN is not); `unit` is named in the message."""
    if not value > 0:
        raise ValueError(f"{name} must be > 0{f' {unit}' if unit else ''}, got {value}")


def check_range(name: str, value: float, low: float, high: float | None = None) -> None:
    """ValueError unless `low` <= `value` (<= `high` when given)."""
    if high is None:
        if not value >= low:
            raise ValueError(f"{name} must be >= {low}, got {value}")
    elif not low <= value <= high:
        raise ValueError(f"{name} must be {low}..{high}, got {value}")


def find_operator(graph: Graph, kind: type[OperatorT], what: str) -> OperatorT:
    """The first operator of class `kind` in `graph`; LookupError (naming `what`, e.g.
    "firewall") when the graph has none."""
    for op in graph.operators:
        if isinstance(op, kind):
            return op
    raise LookupError(f"graph '{graph.name}' has no {what} operator")
