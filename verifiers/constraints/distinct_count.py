"""distinct_count: at least N distinct values of a column among the chosen entities
("at least 3 different cuisines")."""

from __future__ import annotations

from envfactory.verifiers.constraints.base import Constraint, Need, plural, register


def check(units, params, ctx):
    slot, col = params["slot"], params["column"]
    vals = {unit[slot][col] for unit in units if unit[slot][col] is not None}
    if len(vals) < params["min"]:
        return False, f"{len(vals)} distinct {col} values among the {slot} choices, need at least {params['min']}"
    return True, f"{len(vals)} distinct {col} values"


def encode(model, x, c, p):
    slot, col = c.params["slot"], c.params["column"]
    by_val: dict = {}
    for eid, row in p.rows[slot].items():
        by_val.setdefault(row[col], []).append(eid)
    present = []
    for v, eids in sorted(by_val.items(), key=lambda t: str(t[0])):
        if v is None:
            continue
        chosen = [x.x[u][slot][e] for u in range(p.units) for e in eids]
        b = model.new_bool_var(f"has_{col}_{v}")
        # b == OR(chosen): fully determined by the plan, so enumeration counts plans once
        model.add_max_equality(b, chosen)
        present.append(b)
    model.add(sum(present) >= c.params["min"])


def describe(c, p):
    return (f"The chosen {plural(c.params['slot'])} must cover at least {c.params['min']} different "
            f"{c.params['column'].replace('_', ' ')} values.")


def needs(c, p):
    return [Need(p.slot(c.params["slot"]).table, c.params["column"])]


def propose(item, p, current, reference, rng, opts):
    if item.has_value:
        return [Constraint("distinct_count", f"distinct_{item.slot}_{item.column}",
                           {"slot": item.slot, "column": item.column, "min": item.value})]
    old = next((k.params["min"] for k in current if k.kind == "distinct_count" and k.params["slot"] == item.slot), 1)
    out = []
    for n in range(old + 1, p.units + 1):
        out.append(Constraint("distinct_count", f"distinct_{item.slot}_{item.column}",
                              {"slot": item.slot, "column": item.column, "min": n}))
    return out[::-1]



def prefix(units, params, ctx, n, p):
    seen = {u[params["slot"]][params["column"]] for u in units} - {None}
    return len(seen) + (n - len(units)) >= params["min"]


SCHEMA = {"required": ["slot", "column", "min"], "properties": {
    "slot": {"type": "string"}, "column": {"type": "string"}, "min": {"type": "integer", "minimum": 1}}}

register("distinct_count", check=check, encode=encode, describe=describe, needs=needs, propose=propose, prefix=prefix,
         target="column", schema=SCHEMA)
