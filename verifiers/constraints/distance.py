"""distance: consecutive stops (from the origin, then unit to unit) lie within a distance.

Distances are great-circle kilometres between the anchors' real coordinates, stored in the
sandbox's `distances` table and exposed to agents through a tool.
"""

from __future__ import annotations

from envfactory.verifiers.constraints.base import Constraint, Need, register


def check(units, params, ctx):
    slot, limit = params["slot"], params["max_km"]
    stops = [u[slot]["_id"] for u in units]
    legs = list(zip(stops, stops[1:]))
    if params["from_origin"] and ctx["origin"] is not None and stops:
        legs.insert(0, (ctx["origin"], stops[0]))
    for a, b in legs:
        if a == b:
            continue
        km = ctx["km"].get((a, b))
        if km is None:
            return False, f"no known distance from {a} to {b}"
        if km > limit:
            return False, f"{a} to {b} is {km} km, more than {limit} km"
    return True, f"every leg is at most {limit} km"


def encode(model, x, c, p):
    slot, limit = c.params["slot"], c.params["max_km"]
    ids = list(p.rows[slot])
    near = {a: [b for b in ids if a == b or p.km.get((a, b), float("inf")) <= limit] for a in ids}
    for u in range(p.units - 1):
        for a in ids:
            # picking a on unit u forces unit u+1 into a's neighbourhood
            model.add(sum(x.x[u + 1][slot][b] for b in near[a]) >= 1).only_enforce_if(x.x[u][slot][a])
    if c.params["from_origin"] and p.origin_id is not None:
        o = p.origin_id
        for a in ids:
            if p.km.get((o, a), float("inf")) > limit:
                model.add(x.x[0][slot][a] == 0)


def describe(c, p):
    # the origin's id, so a solver can ask the distance tool about the first leg
    first = f"the origin (id {p.origin_id}) to the first stop and " if c.params["from_origin"] and p.origin_id else ""
    return (f"Each leg of the route ({first}every {p.unit}'s {c.params['slot']} to the next) "
            f"must be at most {c.params['max_km']} km.")


def needs(c, p):
    return [Need("distances")]


def propose(item, p, current, reference, rng, opts):
    slot = item.slot or p.anchor.name
    old = next((k.params["max_km"] for k in current if k.kind == "distance"), None)
    ids = list(p.rows[slot])
    dists = sorted(p.km[(a, b)] for a in ids for b in ids if a != b and (a, b) in p.km)
    if not dists:
        return []
    out = []
    for q in (0.6, 0.45, 0.3):
        lim = int(dists[int(q * (len(dists) - 1))] // 10 * 10 + 10)
        if old is None or lim < old:
            out.append(Constraint("distance", "distance", {"slot": slot, "max_km": lim, "from_origin": True}))
    return list({k.params["max_km"]: k for k in out}.values())



def prefix(units, params, ctx, n, p):
    """The leg into the newest unit is short enough (earlier legs were checked)."""
    slot = params["slot"]
    b = units[-1][slot]["_id"]
    if len(units) > 1:
        a = units[-2][slot]["_id"]
    elif params["from_origin"] and ctx["origin"] is not None:
        a = ctx["origin"]
    else:
        return True
    return a == b or ctx["km"].get((a, b), float("inf")) <= params["max_km"]


SCHEMA = {"required": ["slot", "max_km", "from_origin"], "properties": {
    "slot": {"type": "string"}, "max_km": {"type": "number", "exclusiveMinimum": 0}, "from_origin": {"type": "boolean"}}}

register("distance", check=check, encode=encode, describe=describe, needs=needs, propose=propose, prefix=prefix,
         target="slot", schema=SCHEMA, ordered=True)
