"""aggregate: an average over the units' entities in a slot, e.g. mean restaurant rating >= 4.2.

`{slot, column, value, op}` with op ">=" (the default: at least) or "<=" (at most).
"""

from __future__ import annotations

from envfactory.verifiers.constraints.base import Constraint, Need, plural, register
from envfactory.verifiers.problem import scaled as _scaled

SCHEMA = {"required": ["slot", "column", "value"], "properties": {
    "slot": {"type": "string"}, "column": {"type": "string"}, "value": {"type": "number"},
    "op": {"enum": [">=", "<="]}}}


def check(units, params, ctx):
    slot, col, op = params["slot"], params["column"], params.get("op", ">=")
    vals = [unit[slot][col] for unit in units]
    if not vals or any(v is None for v in vals):
        return False, f"some {slot} has no {col}"
    total, need = sum(_scaled(v) for v in vals), _scaled(params["value"]) * len(vals)
    mean = total / len(vals) / (10 if isinstance(params["value"], float) else 1)
    if (total < need) if op == ">=" else (total > need):
        return False, f"average {slot} {col} is {mean:.2f}, {'below' if op == '>=' else 'above'} {params['value']}"
    return True, f"average {slot} {col} is {mean:.2f} {op} {params['value']}"


def encode(model, x, c, p):
    slot, col = c.params["slot"], c.params["column"]
    rows = p.rows[slot]
    total = sum(x.value(u, slot, lambda e: _scaled(rows[e][col])) for u in range(p.units))
    bound = _scaled(c.params["value"]) * p.units
    model.add(total >= bound if c.params.get("op", ">=") == ">=" else total <= bound)


def describe(c, p):
    most = c.params.get("op", ">=") == "<="
    return (f"The average {c.params['column'].replace('_', ' ')} of the chosen {plural(c.params['slot'])} "
            f"must be at {'most' if most else 'least'} {c.params['value']}.")


def needs(c, p):
    return [Need(p.slot(c.params["slot"]).table, c.params["column"])]


def propose(item, p, current, reference, rng, opts):
    slot, col = item.slot, item.column
    name = f"aggregate_{slot}_{col}"
    if item.has_value:
        return [Constraint("aggregate", name, {"slot": slot, "column": col, "value": item.value, "op": item.op or ">="})]
    old = next((k.params["value"] for k in current if k.name == name), None)
    vals = sorted(r[col] for r in p.rows[slot].values() if r[col] is not None)
    if not vals:
        return []
    ref = [p.rows[slot][ids[[s.name for s in p.slots].index(slot)]][col] for ids in reference]
    start = sum(ref) / len(ref)
    out = []
    for bump in (0.1, 0.3, 0.5):
        v = round(start + bump * (vals[-1] - start), 1) if isinstance(vals[0], float) else int(start + bump * (vals[-1] - start)) + 1
        if old is None or _scaled(v) > _scaled(old):
            out.append(Constraint("aggregate", name, {"slot": slot, "column": col, "value": v}))
    return list({str(k.params["value"]): k for k in out}.values())


def prefix(units, params, ctx, n, p):
    """The prefix plus the best value still available on every remaining unit can meet the bound."""
    slot, col = params["slot"], params["column"]
    vals = [_scaled(r[col]) for r in p.rows[slot].values() if r[col] is not None]
    got = sum(_scaled(u[slot][col]) for u in units if u[slot][col] is not None)
    bound = _scaled(params["value"]) * n
    if params.get("op", ">=") == ">=":
        return got + max(vals) * (n - len(units)) >= bound
    return got + min(vals) * (n - len(units)) <= bound


register("aggregate", check=check, encode=encode, describe=describe, needs=needs, propose=propose, prefix=prefix,
         target="column", schema=SCHEMA)
