"""all_different: no entity repeats in a slot across units ("no repeated hotel")."""

from __future__ import annotations

from envfactory.verifiers.constraints.base import Constraint, register


def check(units, params, ctx):
    slot = params["slot"]
    seen = {}
    for i, unit in enumerate(units):
        eid = unit[slot]["_id"]
        if eid in seen:
            return False, f"{slot} {eid} is used in units {seen[eid] + 1} and {i + 1}"
        seen[eid] = i
    return True, f"all {len(units)} {slot} choices differ"


def encode(model, x, c, p):
    slot = c.params["slot"]
    for eid in p.rows[slot]:
        model.add(sum(x.x[u][slot][eid] for u in range(p.units)) <= 1)


def describe(c, p):
    return f"No {c.params['slot']} may be used on more than one {p.unit}."


def needs(c, p):
    return []


def propose(item, p, current, reference, rng, opts):
    if any(k.kind == "all_different" and k.params["slot"] == item.slot for k in current):
        return []
    return [Constraint("all_different", f"all_different_{item.slot}", {"slot": item.slot})]



def prefix(units, params, ctx, n, p):
    """The newest unit's entity is not used by an earlier unit (earlier ones were checked)."""
    slot = params["slot"]
    last = units[-1][slot]["_id"]
    return all(u[slot]["_id"] != last for u in units[:-1])


register("all_different", check=check, encode=encode, describe=describe, needs=needs, propose=propose, prefix=prefix)
