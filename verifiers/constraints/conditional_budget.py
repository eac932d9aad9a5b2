"""conditional_budget: if one slot of a unit is dear, the unit's other costs are capped.

The report's example: "if the day-2 hotel costs more than X, day-2 meals cost at most Y".
`{unit, if_slot, threshold, then_costs, max}`: when unit's `if_slot` cost exceeds
`threshold`, the summed costs of `then_costs` on that unit must be at most `max`.
"""

from __future__ import annotations

from envfactory.verifiers.constraints.base import Constraint, Need, register
from envfactory.verifiers.problem import scaled as _scaled


def check(units, params, ctx):
    i = params["unit"] - 1
    if i >= len(units):
        return False, f"unit {i + 1} is missing"
    unit = units[i]
    lead = _scaled(unit[params["if_slot"]][params["if_cost"]] or 0)
    if lead <= _scaled(params["threshold"]):
        return True, f"unit {i + 1}: {params['if_slot']} costs {lead}, not above {params['threshold']}; no cap applies"
    rest = sum(_scaled(unit[s][col] or 0) for s, col in params["then_costs"].items())
    if rest > _scaled(params["max"]):
        return False, (f"unit {i + 1}: {params['if_slot']} costs {lead} > {params['threshold']}, so the rest "
                       f"may cost at most {params['max']}, but costs {rest}")
    return True, f"unit {i + 1}: {params['if_slot']} costs {lead} and the rest {rest} <= {params['max']}"


def encode(model, x, c, p):
    u, prm = c.params["unit"] - 1, c.params
    lead = x.value(u, prm["if_slot"], lambda e: p.cost(prm["if_slot"], e))
    rest = sum(x.value(u, s, lambda e, s=s: p.cost(s, e)) for s in prm["then_costs"])
    dear = model.new_bool_var(f"dear_{c.name}")
    # fully reified so each plan has exactly one assignment of `dear` (exact counting)
    model.add(lead > _scaled(prm["threshold"])).only_enforce_if(dear)
    model.add(lead <= _scaled(prm["threshold"])).only_enforce_if(~dear)
    model.add(rest <= _scaled(prm["max"])).only_enforce_if(dear)


def describe(c, p):
    prm = c.params
    rest = " and ".join(prm["then_costs"])
    return (f"On {p.unit} {prm['unit']}, if the {prm['if_slot']} costs more than ${prm['threshold']}, "
            f"the {rest} that {p.unit} must together cost at most ${prm['max']}.")


def needs(c, p):
    prm = c.params
    return [Need(p.slot(prm["if_slot"]).table, prm["if_cost"])] + [
        Need(p.slot(s).table, col) for s, col in prm["then_costs"].items()]


def propose(item, p, current, reference, rng, opts):
    if any(k.kind == "conditional_budget" for k in current) or len(p.cost_slots) < 2:
        return []
    lead, rest = p.cost_slots[0], p.cost_slots[1:]
    u = min(opts.get("conditional_unit", 1), p.units)
    ids = reference[u - 1]
    # threshold just under the reference's own lead cost, so the rule binds near the
    # current feasible plans (a threshold above every affordable hotel would never fire)
    threshold = max(0, p.cost(lead.name, ids[p.slots.index(lead)]) - 1)
    ref_rest = sum(p.cost(s.name, ids[i]) for i, s in enumerate(p.slots) if s in rest)
    out = []
    for frac in (1.0, 0.85, 0.7):
        cap = int(ref_rest * frac)
        out.append(Constraint("conditional_budget", "conditional_budget", {
            "unit": u, "if_slot": lead.name, "if_cost": lead.cost, "threshold": threshold,
            "then_costs": {s.name: s.cost for s in rest}, "max": cap}))
    return list({k.params["max"]: k for k in out}.values())



def local(u, unit, params):
    if u != params["unit"] - 1:
        return True
    return check([unit], dict(params, unit=1), {})[0]


SCHEMA = {"required": ["unit", "if_slot", "if_cost", "threshold", "then_costs", "max"], "properties": {
    "unit": {"type": "integer", "minimum": 1}, "if_slot": {"type": "string"}, "if_cost": {"type": "string"},
    "threshold": {"type": "number"}, "max": {"type": "number"},
    "then_costs": {"type": "object", "minProperties": 1, "additionalProperties": {"type": "string"}}}}

register("conditional_budget", check=check, encode=encode, describe=describe, needs=needs, propose=propose, local=local,
         schema=SCHEMA, ordered=True)
