"""unit_budget: each unit's priced slots together cost at most a per-unit budget."""

from __future__ import annotations

from envfactory.verifiers.constraints.base import Constraint, Need, register
from envfactory.verifiers.problem import scaled as _scaled


def check(units, params, ctx):
    cap = _scaled(params["max"])
    for i, unit in enumerate(units):
        spent = sum(_scaled(unit[slot][col] or 0) for slot, col in params["costs"].items())
        if spent > cap:
            return False, f"unit {i + 1} costs {spent}, above the per-unit budget {cap}"
    return True, f"every unit costs at most {cap}"


def encode(model, x, c, p):
    for u in range(p.units):
        model.add(sum(x.value(u, s, lambda e, s=s: p.cost(s, e)) for s in c.params["costs"])
                  <= _scaled(c.params["max"]))


def describe(c, p):
    what = ", ".join(c.params["costs"])
    return f"On every {p.unit} the {what} together must cost at most ${c.params['max']}."


def needs(c, p):
    return [Need(p.slot(s).table, col) for s, col in c.params["costs"].items()]


def propose(item, p, current, reference, rng, opts):
    """Cap each unit just under the dearest unit of the current reference plan."""
    costs = {s.name: s.cost for s in p.cost_slots}
    per_unit = [sum(p.cost(s.name, ids[i]) for i, s in enumerate(p.slots) if s.cost) for ids in reference]
    old = next((k.params["max"] for k in current if k.kind == "unit_budget"), None)
    top = max(per_unit) if old is None else min(old, max(per_unit))
    out = []
    for frac in (0.95, 0.85, 0.75):
        cap = int(top * frac)
        if cap > 0 and (old is None or cap < old):
            out.append(Constraint("unit_budget", "unit_budget", {"max": cap, "costs": costs}))
    return out



def local(u, unit, params):
    return check([unit], params, {})[0]


SCHEMA = {"required": ["max", "costs"], "properties": {
    "max": {"type": "number"}, "costs": {"type": "object", "minProperties": 1, "additionalProperties": {"type": "string"}}}}

register("unit_budget", check=check, encode=encode, describe=describe, needs=needs, propose=propose, local=local,
         schema=SCHEMA)
