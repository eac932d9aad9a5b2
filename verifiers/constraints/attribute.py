"""attribute: a filter on one column of the entities chosen for a slot.

`{slot, column, op, value, unit}`: with unit 0 the filter holds on every unit, otherwise
only on that (1-based) unit, e.g. "every hotel has at least 4 stars" or "the day-3 city
has an airport". Ops: >=, <=, >, <, ==, != (numbers and booleans compare exactly, DOUBLE at
0.1 resolution), and `in` / `not in` a list of values. Text compares by equality only.
"""

from __future__ import annotations

from envfactory.verifiers.constraints.base import Constraint, Need, article, register
from envfactory.verifiers.problem import scaled as _scaled

OPS = {">=": "at least", "<=": "at most", ">": "more than", "<": "less than", "==": "exactly",
       "!=": "other than"}
SCHEMA = {"required": ["slot", "column", "op", "value", "unit"], "properties": {
    "slot": {"type": "string"}, "column": {"type": "string"},
    "op": {"enum": [">=", "<=", ">", "<", "==", "!=", "in", "not in"]},
    "value": {"type": ["number", "string", "boolean", "array"], "items": {"type": ["number", "string", "boolean"]}},
    "unit": {"type": "integer", "minimum": 0}}}


def check(units, params, ctx):
    slot, col, op, want = params["slot"], params["column"], params["op"], params["value"]
    which = range(len(units)) if params["unit"] == 0 else [params["unit"] - 1]
    for i in which:
        if i >= len(units):
            return False, f"unit {i + 1} is missing"
        got = units[i][slot][col]
        if got is None:
            return False, f"{slot} {units[i][slot]['_id']} has no {col}"
        if op in ("in", "not in"):
            hit = any((got == w) if isinstance(w, str) or isinstance(got, str) else _scaled(got) == _scaled(w)
                      for w in want)
            ok = hit if op == "in" else not hit
        elif isinstance(want, str) or isinstance(got, str):
            ok = (got == want) if op == "==" else (got != want) if op == "!=" else False
        else:
            a, b = _scaled(got), _scaled(want)
            ok = {">=": a >= b, "<=": a <= b, ">": a > b, "<": a < b, "==": a == b, "!=": a != b}[op]
        if not ok:
            return False, f"unit {i + 1}: {slot} {units[i][slot]['_id']} has {col} {got}, needs {op} {want}"
    return True, f"{slot} {col} {op} {want} holds"


def _ok(row, params):
    return check([{params["slot"]: dict(row, _id="")}], dict(params, unit=1), {})[0]


def encode(model, x, c, p):
    units = range(p.units) if c.params["unit"] == 0 else [c.params["unit"] - 1]
    for u in units:
        for eid, row in p.rows[c.params["slot"]].items():
            if not _ok(row, c.params):
                model.add(x.x[u][c.params["slot"]][eid] == 0)


def describe(c, p):
    slot, col, op, v = c.params["slot"], c.params["column"].replace("_", " "), c.params["op"], c.params["value"]
    where = f"Every {slot}" if c.params["unit"] == 0 else f"The {slot} of {p.unit} {c.params['unit']}"
    if op in ("in", "not in"):
        listed = ", ".join(repr(x) if isinstance(x, str) else str(x) for x in v)
        return f"{where} must have {article(col)} {col} {'among' if op == 'in' else 'other than any of'} {listed}."
    if isinstance(v, bool):
        return f"{where} must {'have' if v == (op == '==') else 'not have'} {col.removeprefix('has ')}."
    if isinstance(v, str):
        return f"{where} must have {col} {'equal to' if op == '==' else 'other than'} '{v}'."
    return f"{where} must have {article(col)} {col} of {OPS[op]} {v}."


def needs(c, p):
    return [Need(p.slot(c.params["slot"]).table, c.params["column"])]


def propose(item, p, current, reference, rng, opts):
    slot, col = item.slot, item.column
    if item.has_value:  # stated in the seed: exactly this filter, on every unit
        return [Constraint("attribute", f"attribute_{slot}_{col}",
                           {"slot": slot, "column": col, "op": item.op, "value": item.value, "unit": 0})]
    rows = list(p.rows[slot].values())
    vals = [r[col] for r in rows if r[col] is not None]
    ctype = p.slot(slot).columns[col]
    taken = [k for k in current if k.kind == "attribute" and k.params["slot"] == slot and k.params["column"] == col]
    name = f"attribute_{slot}_{col}"
    if ctype == "BOOLEAN":
        if taken:
            return []
        # a yes/no property constrains one unit, e.g. the last day's city has an airport
        return [Constraint("attribute", name, {"slot": slot, "column": col, "op": "==", "value": True, "unit": p.units})]
    if ctype == "VARCHAR":
        if taken:
            return []
        common = sorted({v for v in vals}, key=lambda v: (-vals.count(v), v))[:3]
        return [Constraint("attribute", name, {"slot": slot, "column": col, "op": "!=", "value": v, "unit": 0})
                for v in common]
    # numeric: a lower bound from the column's spread, tighter than any bound already set
    floor = max([k.params["value"] for k in taken], default=None)
    levels = sorted({v for v in vals if floor is None or _scaled(v) > _scaled(floor)})
    if not levels:
        return []
    picks = [levels[int(q * (len(levels) - 1))] for q in (0.25, 0.4, 0.55)]
    return [Constraint("attribute", name, {"slot": slot, "column": col, "op": ">=", "value": v, "unit": 0})
            for v in dict.fromkeys(picks)]



def local(u, unit, params):
    if params["unit"] not in (0, u + 1):
        return True
    return _ok(unit[params["slot"]], params)


register("attribute", check=check, encode=encode, describe=describe, needs=needs, propose=propose, local=local,
         target="column", schema=SCHEMA)
