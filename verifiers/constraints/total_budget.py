"""total_budget: the summed cost of every unit's priced slots stays within a budget."""

from __future__ import annotations

from envfactory.verifiers.constraints.base import Constraint, Need, plural, register
from envfactory.verifiers.problem import scaled as _scaled


def check(units, params, ctx):
    total = 0
    for unit in units:
        for slot, col in params["costs"].items():
            v = unit[slot][col]
            if v is None:
                return False, f"{slot} {unit[slot]['_id']} has no {col}"
            total += _scaled(v)
    cap = _scaled(params["max"])
    if total > cap:
        return False, f"total cost {total} exceeds the budget {cap}"
    return True, f"total cost {total} is within the budget {cap}"


def encode(model, x, c, p):
    model.add(sum(x.value(u, s, lambda e, s=s: p.cost(s, e)) for u in range(p.units) for s in c.params["costs"])
              <= _scaled(c.params["max"]))


def describe(c, p):
    what = ", ".join(c.params["costs"])
    return f"The total cost of all {plural(p.unit)} ({what}) must be at most ${c.params['max']}."


def needs(c, p):
    return [Need(p.slot(s).table, col) for s, col in c.params["costs"].items()]


def costs(p) -> dict[str, str]:
    return {s.name: s.cost for s in p.cost_slots}


def propose(item, p, current, reference, rng, opts):
    """Tighten an existing budget to a point between the cheapest plan and the current cap."""
    old = next((k for k in current if k.kind == "total_budget"), None)
    if old is None:
        return []
    low = opts["optimum"](p, [k for k in current if k.kind != "total_budget"], costs(p), minimize=True)
    if low is None or low >= old.params["max"]:
        return []
    out = []
    for frac in (0.5, 0.7, 0.85):
        cap = low + int((old.params["max"] - low) * frac)
        if low <= cap < old.params["max"]:
            out.append(Constraint("total_budget", "total_budget", {"max": cap, "costs": costs(p)}))
    return list({k.params["max"]: k for k in out}.values())



def prefix(units, params, ctx, n, p):
    cap = _scaled(params["max"])
    return sum(_scaled(u[s][c] or 0) for u in units for s, c in params["costs"].items()) <= cap


SCHEMA = {"required": ["max", "costs"], "properties": {
    "max": {"type": "number"}, "costs": {"type": "object", "minProperties": 1, "additionalProperties": {"type": "string"}}}}

register("total_budget", check=check, encode=encode, describe=describe, needs=needs, propose=propose, prefix=prefix,
         schema=SCHEMA)
