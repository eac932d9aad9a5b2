"""sum: a bound on the sum of one numeric column over the units ("total flight distance at
most 4,000 km", "the programme runs at least 300 minutes"), or on each unit's value.

`{slot, column, op, value, scope}`: op "<=" or ">="; scope "total" (the sum over all units)
or "each" (every unit's own value). Without a stated value the ladder picks one: a bound
tuned at level 0 (the `<=` case, like a budget) or tightened from the current one.
"""

from __future__ import annotations

from envfactory.verifiers.constraints.base import Constraint, Need, article, plural, register
from envfactory.verifiers.problem import scaled as _scaled

SCHEMA = {"required": ["slot", "column", "op", "value", "scope"], "properties": {
    "slot": {"type": "string"}, "column": {"type": "string"}, "op": {"enum": ["<=", ">="]},
    "value": {"type": "number"}, "scope": {"enum": ["total", "each"]}}}


def check(units, params, ctx):
    slot, col, op = params["slot"], params["column"], params["op"]
    bound = _scaled(params["value"])
    parts = []
    for i, unit in enumerate(units):
        v = unit[slot][col]
        if v is None:
            return False, f"{slot} {unit[slot]['_id']} has no {col}"
        parts.append(_scaled(v))
        if params["scope"] == "each" and ((parts[-1] > bound) if op == "<=" else (parts[-1] < bound)):
            return False, f"unit {i + 1}: {slot} {col} is {v}, needs {op} {params['value']}"
    if params["scope"] == "each":
        return True, f"every {slot} {col} is {op} {params['value']}"
    total = sum(parts)
    if (total > bound) if op == "<=" else (total < bound):
        return False, f"the {slot} {col} values sum to {total} (scaled), needs {op} {bound}"
    return True, f"the {slot} {col} values sum to {total} (scaled), {op} {bound}"


def encode(model, x, c, p):
    slot, col, op = c.params["slot"], c.params["column"], c.params["op"]
    rows, bound = p.rows[slot], _scaled(c.params["value"])
    terms = [x.value(u, slot, lambda e: _scaled(rows[e][col])) for u in range(p.units)]
    for t in (terms if c.params["scope"] == "each" else [sum(terms)]):
        model.add(t <= bound if op == "<=" else t >= bound)


def describe(c, p):
    prm = c.params
    col = prm["column"].replace("_", " ")
    word = "at most" if prm["op"] == "<=" else "at least"
    if prm["scope"] == "each":
        return f"Every chosen {prm['slot']} must have {article(col)} {col} of {word} {prm['value']}."
    return f"The {col} of the chosen {plural(prm['slot'])}, added up over all {plural(p.unit)}, must be {word} {prm['value']}."


def needs(c, p):
    return [Need(p.slot(c.params["slot"]).table, c.params["column"])]


def name_of(slot: str, column: str, scope: str = "total") -> str:
    return f"sum_{slot}_{column}" + ("_each" if scope == "each" else "")


def propose(item, p, current, reference, rng, opts):
    """A stated bound as is; else tighten the current total bound towards the best plan's."""
    slot, col, op = item.slot, item.column, item.op or "<="
    if item.has_value:
        return [Constraint("sum", name_of(slot, col), {"slot": slot, "column": col, "op": op,
                                                     "value": item.value, "scope": "total"})]
    old = next((k for k in current if k.name == name_of(slot, col)), None)
    if old is None:
        return []
    best = opts["optimum"](p, [k for k in current if k.name != old.name], {slot: col}, minimize=op == "<=")
    if best is None:
        return []
    cur = _scaled(old.params["value"])
    out = []
    for frac in (0.5, 0.7, 0.85):
        v = best + int((cur - best) * frac)
        if (op == "<=" and best <= v < cur) or (op == ">=" and cur < v <= best):
            out.append(v)
    is_float = p.slot(slot).columns[col] == "DOUBLE"
    return [Constraint("sum", old.name, dict(old.params, value=(v / 10 if is_float else v)))
            for v in dict.fromkeys(out)]


def prefix(units, params, ctx, n, p):
    """With every remaining unit at the column's most favourable value, can the bound hold?"""
    slot, col, op = params["slot"], params["column"], params["op"]
    bound = _scaled(params["value"])
    got = [_scaled(u[slot][col]) for u in units if u[slot][col] is not None]
    if params["scope"] == "each":
        return all((g <= bound) if op == "<=" else (g >= bound) for g in got)
    vals = [_scaled(r[col]) for r in p.rows[slot].values() if r[col] is not None]
    if not vals:
        return False
    rest = (min(vals) if op == "<=" else max(vals)) * (n - len(units))
    return (sum(got) + rest <= bound) if op == "<=" else (sum(got) + rest >= bound)


register("sum", check=check, encode=encode, describe=describe, needs=needs, propose=propose, prefix=prefix,
         target="column", schema=SCHEMA)
