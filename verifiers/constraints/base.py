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
  tightened constraints for the difficulty ladder (the specialist agent's moves); an item
  that states its operator and value (`attribute:hotel.stars >= 4`) proposes exactly that.
  `opts` carries the seed's ladder settings and `opts["optimum"](problem, constraints,
  {slot: column}, minimize)`, the best sum under constraints (the agent passes CP-SAT's,
  `verifiers.solver.extreme_sum`, so no kind imports the solver that imports the kinds).
- `target`: what a ladder entry of the kind names: nothing, a slot, or a slot's column;
  `schema`: the JSON Schema of its parameters. `validate(c, problem)` checks any proposed
  constraint against both before use, and casts values to their column's type.
"""

from __future__ import annotations

import inspect
import textwrap
from dataclasses import dataclass, field
from typing import Any, Callable

__all__ = ["Constraint", "Kind", "Need", "KINDS", "register", "get_kind", "check_source", "Vars", "plural",
           "ConstraintError", "validate", "NUMERIC", "article"]

NUMERIC = ("INTEGER", "DOUBLE")


def article(phrase: str) -> str:
    """`a` or `an` before a phrase, by its first letter (an altitude, a rating)."""
    return "an" if phrase[:1].lower() in "aeiou" else "a"


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
    target: str = "none"             # what a ladder entry names: "none", "slot" or "column"
    schema: dict = field(default_factory=dict)  # JSON Schema of `params`
    ordered: bool = False            # refers to unit positions or legs: meaningless for a selection
    refine: Callable | None = None   # (params, p) -> why they cannot be used, for what a schema cannot say


KINDS: dict[str, Kind] = {}


def register(name: str, *, check, encode, describe, needs, propose, local=None, prefix=None,
             target="none", schema=None, ordered=False, refine=None) -> Kind:
    schema = {"type": "object", "additionalProperties": False, **(schema or {})}
    kind = Kind(name, check, encode, describe, needs, propose, local, prefix, target, schema, ordered, refine)
    KINDS[name] = kind
    return kind


class ConstraintError(ValueError):
    """A proposed constraint that cannot be used: one line saying why."""


def _cast(value, ctype: str, what: str):
    """A stated value in its column's type: numbers compare by the column's type, not by how
    the value happened to be written (4 on a DOUBLE column is 4.0; 4.5 on an INTEGER one is
    refused rather than silently compared at another scale)."""
    if isinstance(value, list):
        return [_cast(v, ctype, what) for v in value]
    if ctype == "VARCHAR":
        if not isinstance(value, str):
            raise ConstraintError(f"{what}: {value!r} must be a string (the column is VARCHAR)")
        return value
    if ctype == "BOOLEAN":
        if not isinstance(value, bool):
            raise ConstraintError(f"{what}: {value!r} must be true or false (the column is BOOLEAN)")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConstraintError(f"{what}: {value!r} must be a number (the column is {ctype})")
    if ctype == "INTEGER":
        if float(value) != int(value):
            raise ConstraintError(f"{what}: {value!r} is not a whole number (the column is INTEGER)")
        return int(value)
    return float(value)


def _column(p, slot: str, column: str, what: str) -> str:
    try:
        sv = p.slot(slot)
    except KeyError:
        raise ConstraintError(f"{what}: no slot {slot!r} (slots: {', '.join(s.name for s in p.slots)})") from None
    if column not in sv.columns:
        raise ConstraintError(f"{what}: {column!r} is not a column of {sv.table}")
    return sv.columns[column]


_VALIDATORS: dict = {}


def _validator(kind: str):
    """The kind's JSON Schema validator, built once (jsonschema.validate re-checks the schema
    itself on every call: 1.2 s of a 10 s two-environment build)."""
    if kind not in _VALIDATORS:
        import jsonschema

        cls = jsonschema.validators.validator_for(KINDS[kind].schema)
        cls.check_schema(KINDS[kind].schema)
        _VALIDATORS[kind] = cls(KINDS[kind].schema)
    return _VALIDATORS[kind]


def validate(c: "Constraint", p) -> "Constraint":
    """`c` checked against its kind's schema and the problem's slots and columns, with stated
    values cast to their column's type; ConstraintError (one line) if it cannot be used."""
    what = f"constraint {c.name!r} ({c.kind})"
    if c.kind not in KINDS:
        raise ConstraintError(f"{what}: unknown kind (known: {', '.join(sorted(KINDS))})")
    kind = KINDS[c.kind]
    if not isinstance(c.params, dict):
        raise ConstraintError(f"{what}: params must be an object")
    err = next(iter(_validator(c.kind).iter_errors(c.params)), None)
    if err is not None:
        where = ".".join(str(x) for x in err.absolute_path) or "params"
        raise ConstraintError(f"{what}: {where}: {err.message}")
    if getattr(p, "unordered", False) and (kind.ordered or c.params.get("unit") not in (None, 0)):
        raise ConstraintError(f"{what}: refers to unit order, but a selection's units have none")
    params = dict(c.params)
    if "slot" in params:
        if "column" in params and params["column"] is not None:
            ctype = _column(p, params["slot"], params["column"], what)
            if "value" in params:
                if params.get("op") in (">=", "<=", ">", "<") and ctype not in NUMERIC:
                    raise ConstraintError(f"{what}: {params['op']} needs a numeric column, {params['column']} is {ctype}")
                if params.get("op") in ("in", "not in") and not isinstance(params["value"], list):
                    raise ConstraintError(f"{what}: {params['op']} needs a list of values")
                params["value"] = _cast(params["value"], ctype, what)
        elif params["slot"] not in [s.name for s in p.slots]:
            raise ConstraintError(f"{what}: no slot {params['slot']!r} (slots: {', '.join(s.name for s in p.slots)})")
    for slot in params.get("slots") or []:
        if slot not in [s.name for s in p.slots]:
            raise ConstraintError(f"{what}: slots: no slot {slot!r} (slots: {', '.join(s.name for s in p.slots)})")
    for field_ in ("costs", "terms", "then_costs", "duration", "opens", "closes"):
        types = {_column(p, s, col, what) for s, col in (params.get(field_) or {}).items()}
        if types - set(NUMERIC):
            raise ConstraintError(f"{what}: {field_} must name numeric columns")
        if len(types) > 1 and field_ in ("costs", "terms", "then_costs"):
            raise ConstraintError(f"{what}: {field_} mixes INTEGER and DOUBLE columns")
    if "unit" in params and isinstance(params["unit"], int) and params["unit"] > p.units:
        raise ConstraintError(f"{what}: unit {params['unit']} is beyond the plan's {p.units} units")
    why = kind.refine(params, p) if kind.refine else None
    if why:
        raise ConstraintError(f"{what}: {why}")
    return Constraint(c.kind, c.name, params)


def get_kind(name: str) -> Kind:
    if name not in KINDS:
        raise KeyError(f"unknown constraint kind {name!r} (known: {', '.join(sorted(KINDS))})")
    return KINDS[name]


def check_source(name: str) -> str:
    """Source of a kind's check function, renamed `check_<kind>`, for inlining into verifiers."""
    src = textwrap.dedent(inspect.getsource(KINDS[name].check))
    fn = KINDS[name].check.__name__
    return src.replace(f"def {fn}(", f"def check_{name}(", 1)
