"""The constraint language: one module per kind, each registering itself here.

A kind supplies five things:
- `check(units, params, ctx) -> (passed, reason)`: a pure function using builtins only. It is
  the single definition of the constraint's meaning: generated verifiers inline its source.
- `encode(model, x, c, problem)`: the same meaning in CP-SAT, over the plan variables.
- `describe(c, problem) -> str`: the sentence in the task prompt.
- `needs(c, problem) -> [Need]`: data an agent must be able to see through tools.
- `local` or `prefix`: how the plan counter (`verifiers.count`) prunes with it: a test on
  one unit's entities, or a necessary condition on a plan's first units. Both only prune;
  every counted plan also passes `check`.
- `propose(item, problem, current, reference, rng, opts) -> [Constraint]`: candidate new or
  tightened constraints for the difficulty ladder (the specialist agent's moves).
"""

from __future__ import annotations

import inspect
import textwrap
from dataclasses import dataclass, field
from typing import Any, Callable

__all__ = ["Constraint", "Kind", "Need", "KINDS", "register", "get_kind", "check_source", "Vars", "plural"]


def plural(noun: str) -> str:
    """English plural of an entity noun: city -> cities, bus -> buses, hotel -> hotels."""
    if noun.endswith("y") and noun[-2:-1] not in tuple("aeiou"):
        return noun[:-1] + "ies"
    return noun + ("es" if noun.endswith(("s", "x", "ch", "sh")) else "s")


@dataclass(frozen=True)
class Constraint:
    kind: str
    name: str                       # unique check name within a task, e.g. "total_budget"
    params: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"kind": self.kind, "name": self.name, "params": self.params}

    @staticmethod
    def from_json(d: dict) -> "Constraint":
        return Constraint(d["kind"], d["name"], dict(d["params"]))


@dataclass(frozen=True)
class Need:
    """Data a solver of the task must see: a table column, or a relation (`distances`)."""
    table: str
    column: str | None = None

    def __str__(self) -> str:
        return f"{self.table}.{self.column}" if self.column else self.table


class Vars:
    """The plan's CP-SAT variables: x[u][slot][id] is 1 iff unit u picks entity id for slot."""

    def __init__(self, x: list[dict[str, dict[str, Any]]]):
        self.x = x

    def value(self, u: int, slot: str, fn: Callable[[str], int]):
        """Linear expression of an integer property of unit u's entity in `slot`."""
        return sum(fn(eid) * v for eid, v in self.x[u][slot].items())


@dataclass(frozen=True)
class Kind:
    name: str
    check: Callable
    encode: Callable
    describe: Callable
    needs: Callable
    propose: Callable
    local: Callable | None = None    # (u, unit_rows, params) -> bool for constraints on one unit
    prefix: Callable | None = None   # (prefix_units, params, ctx, n_units, p) -> may a completion pass?


KINDS: dict[str, Kind] = {}


def register(name: str, *, check, encode, describe, needs, propose, local=None, prefix=None) -> Kind:
    kind = Kind(name, check, encode, describe, needs, propose, local, prefix)
    KINDS[name] = kind
    return kind


def get_kind(name: str) -> Kind:
    if name not in KINDS:
        raise KeyError(f"unknown constraint kind {name!r} (known: {', '.join(sorted(KINDS))})")
    return KINDS[name]


def check_source(name: str) -> str:
    """Source of a kind's check function, renamed `check_<kind>`, for inlining into verifiers."""
    src = textwrap.dedent(inspect.getsource(KINDS[name].check))
    fn = KINDS[name].check.__name__
    return src.replace(f"def {fn}(", f"def check_{name}(", 1)
