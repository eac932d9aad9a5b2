"""A plan's structure, apart from its constraints: which units are possible and how units
follow each other. Shared by the counter, the mutant generator and the oracle, so the three
read links, chains and selections the same way (CP-SAT encodes them on its own, in
`verifiers.solver`, and tests compare the two).

- `unit_options(p)`: every way to fill one unit: one candidate per slot, every same-unit
  link holding; with its cost (the sum of the priced slots), cheapest first.
- `need(p, o)` / `offer(p, o)`: the values a unit's previous-unit links ask for, and the
  values an option gives the next unit. `follows(p, prev, o)`: o may come after prev
  (prev None: o may open the plan, its previous links meeting the origin's id).
- `problems(p, plan)`: why a plan of well-formed ids breaks the structure (empty if not).
"""

from __future__ import annotations

from envfactory.verifiers.problem import Plan, Problem

__all__ = ["Option", "unit_options", "need", "offer", "start_need", "follows", "problems", "options_by_need"]

Option = tuple[tuple[str, ...], dict, int]  # ids per slot, rows per slot (with _id), cost


def _index(p: Problem, i: int) -> dict[tuple, list[str]]:
    s = p.slots[i]
    out: dict[tuple, list[str]] = {}
    for eid, row in p.rows[s.name].items():
        out.setdefault(tuple(str(row[lk.column]) for lk in s.same_unit_links), []).append(eid)
    return out


def unit_options(p: Problem) -> list[Option]:
    cached = getattr(p, "_unit_options", None)
    if cached is not None:
        return cached
    partial: list[tuple[tuple[str, ...], dict]] = [((), {})]
    for i, s in enumerate(p.slots):
        links = s.same_unit_links
        index = _index(p, i) if links else None
        nxt = []
        for ids, rows in partial:
            eids = index.get(tuple(str(rows[lk.slot][lk.target]) for lk in links), []) if links else list(p.rows[s.name])
            for e in eids:
                nxt.append(((*ids, e), {**rows, s.name: dict(p.rows[s.name][e], _id=e)}))
        partial = nxt
    out = [(ids, rows, sum(p.cost(s.name, e) for s, e in zip(p.slots, ids) if s.cost)) for ids, rows in partial]
    out.sort(key=lambda t: (t[2], t[0]))
    p._unit_options = out
    return out


def need(p: Problem, o: Option) -> tuple:
    return tuple(str(o[1][s.name][lk.column]) for s in p.slots for lk in s.previous_links)


def offer(p: Problem, o: Option) -> tuple:
    return tuple(str(o[1][lk.slot][lk.target]) for s in p.slots for lk in s.previous_links)


def start_need(p: Problem) -> tuple | None:
    """What the first unit's previous links must meet: the origin's id, or nothing."""
    n = sum(len(s.previous_links) for s in p.slots)
    return (p.origin_id,) * n if n and p.origin_id is not None else None


def follows(p: Problem, prev: Option | None, o: Option) -> bool:
    if not p.chained:
        return True
    want = start_need(p) if prev is None else offer(p, prev)
    return want is None or need(p, o) == want


def options_by_need(p: Problem, options: list[Option]) -> dict[tuple, list[Option]]:
    """Options grouped by what they need from the previous unit, each group in input order."""
    out: dict[tuple, list[Option]] = {}
    for o in options:
        out.setdefault(need(p, o), []).append(o)
    return out


def problems(p: Problem, plan: Plan) -> list[str]:
    """Candidates, same-unit links and the chain, for a plan of units x slot ids."""
    out = []
    prev = None
    for u, ids in enumerate(plan):
        for s, eid in zip(p.slots, ids):
            if eid not in p.rows[s.name]:
                out.append(f"unit {u + 1}: {s.name} {eid} is not a candidate of this environment")
        if out:
            return out
        rows = {s.name: dict(p.rows[s.name][e], _id=e) for s, e in zip(p.slots, ids)}
        for s in p.slots:
            for lk in s.same_unit_links:
                if str(rows[s.name][lk.column]) != str(rows[lk.slot][lk.target]):
                    out.append(f"unit {u + 1}: {s.name} {ids[p.slots.index(s)]} has {lk.column} "
                               f"{rows[s.name][lk.column]}, not its {lk.slot}'s {lk.target}")
        o = (ids, rows, 0)
        if not follows(p, prev, o):
            out.append(f"unit {u + 1} does not continue from " + ("the origin" if prev is None else f"unit {u}"))
        prev = o
    return out
