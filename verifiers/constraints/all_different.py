"""all_different: no entity (or no value of one column) repeats in a slot across units
("no repeated hotel", "no airport landed at twice": `{slot, column}` with column optional)."""

from __future__ import annotations

from envfactory.verifiers.constraints.base import Constraint, Need, plural, register

SCHEMA = {"required": ["slot"], "properties": {"slot": {"type": "string"}, "column": {"type": ["string", "null"]}}}


def check(units, params, ctx):
    slot, col = params["slot"], params.get("column")
    seen = {}
    for i, unit in enumerate(units):
        v = unit[slot][col] if col else unit[slot]["_id"]
        if v in seen:
            what = f"{slot} {col} {v}" if col else f"{slot} {v}"
            return False, f"{what} is used in units {seen[v] + 1} and {i + 1}"
        seen[v] = i
    return True, f"all {len(units)} {slot}{' ' + col if col else ''} choices differ"


def _value(p, slot, col, eid):
    return p.rows[slot][eid][col] if col else eid


def encode(model, x, c, p):
    slot, col = c.params["slot"], c.params.get("column")
    groups: dict = {}
    for eid in p.rows[slot]:
        groups.setdefault(_value(p, slot, col, eid), []).append(eid)
    for eids in groups.values():
        model.add(sum(x.x[u][slot][e] for u in range(p.units) for e in eids) <= 1)


def describe(c, p):
    col = c.params.get("column")
    if col:
        return f"No two {plural(p.unit)} may share the same {c.params['slot']} {col.replace('_', ' ')}."
    return f"No {c.params['slot']} may be used on more than one {p.unit}."


def needs(c, p):
    col = c.params.get("column")
    return [Need(p.slot(c.params["slot"]).table, col)] if col else []


def propose(item, p, current, reference, rng, opts):
    col = item.column
    if any(k.kind == "all_different" and k.params["slot"] == item.slot and k.params.get("column") == col
           for k in current):
        return []
    params = {"slot": item.slot, **({"column": col} if col else {})}
    return [Constraint("all_different", f"all_different_{item.slot}" + (f"_{col}" if col else ""), params)]


def prefix(units, params, ctx, n, p):
    """The newest unit's value is not used by an earlier unit (earlier ones were checked)."""
    slot, col = params["slot"], params.get("column")
    last = units[-1][slot][col] if col else units[-1][slot]["_id"]
    return all((u[slot][col] if col else u[slot]["_id"]) != last for u in units[:-1])


register("all_different", check=check, encode=encode, describe=describe, needs=needs, propose=propose, prefix=prefix,
         target="slot", schema=SCHEMA)
