"""A plan's structure, apart from its constraints: which units are possible and how units
follow each other. Shared by the counter, the mutant generator and the oracle, so the three
read links, chains and selections the same way (CP-SAT encodes them on its own, in
`verifiers.solver`, and tests compare the two).

- `unit_options(p)`: every way to fill one unit: one candidate per slot, every same-unit
  link holding; with its cost (the sum of the priced slots), cheapest first.
- `need(p, o)` / `offer(p, o)`: the values a unit's previous-unit links ask for, and the
  values an option gives the next unit; `compatible(p, offered, needed)` says whether they
  meet (equal, or a pair of the link's relation table). `follows(p, prev, o)`: o may come
  after prev (prev None: o may open the plan, its previous links meeting the origin's id).
- `Successors(p, options).after(prev)`: the options that may follow `prev`, cheapest first.
- `problems(p, plan)`: why a plan of well-formed ids breaks the structure (empty if not).
"""

from __future__ import annotations

from envfactory.verifiers.problem import Plan, Problem

__all__ = ["Option", "unit_options", "need", "offer", "start_need", "compatible", "follows", "problems",
           "Successors"]

Option = tuple[tuple[str, ...], dict, int]  # ids per slot, rows per slot (with _id), cost


def _equal_links(s) -> tuple:
    return tuple(lk for lk in s.same_unit_links if lk.via is None)


def _index(p: Problem, i: int) -> dict[tuple, list[str]]:
    """A slot's candidates by the values of its same-unit equality links."""
    s = p.slots[i]
    out: dict[tuple, list[str]] = {}
    for eid, row in p.rows[s.name].items():
        out.setdefault(tuple(str(row[lk.column]) for lk in _equal_links(s)), []).append(eid)
    return out


def unit_options(p: Problem) -> list[Option]:
    cached = getattr(p, "_unit_options", None)
    if cached is not None:
        return cached
    partial: list[tuple[tuple[str, ...], dict]] = [((), {})]
    for i, s in enumerate(p.slots):
        links, via = _equal_links(s), [lk for lk in s.same_unit_links if lk.via is not None]
        index = _index(p, i) if links else None
        nxt = []
        for ids, rows in partial:
            eids = index.get(tuple(str(rows[lk.slot][lk.target]) for lk in links), []) if links else list(p.rows[s.name])
            for e in eids:
                row = p.rows[s.name][e]
                if all(lk.holds(p, row[lk.column], rows[lk.slot][lk.target]) for lk in via):
                    nxt.append(((*ids, e), {**rows, s.name: dict(row, _id=e)}))
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


def _chain_links(p: Problem) -> list:
    return [lk for s in p.slots for lk in s.previous_links]


def compatible(p: Problem, offered: tuple, needed: tuple) -> bool:
    """A unit needing `needed` may follow one offering `offered` (link by link)."""
    return all(lk.holds(p, n, o) for lk, o, n in zip(_chain_links(p), offered, needed))


def follows(p: Problem, prev: Option | None, o: Option) -> bool:
    if not p.chained:
        return True
    want = start_need(p) if prev is None else offer(p, prev)
    return want is None or compatible(p, want, need(p, o))


class Successors:
    """The options (of one unit) that may follow a given previous unit, cheapest first:
    grouped by what they need, and for links through a relation table, the groups whose
    needs pair with the offer merged once per offer."""

    def __init__(self, p: Problem, options: list[Option]):
        self.p, self.options = p, options
        self.groups: dict[tuple, list[Option]] = {}
        for o in options:
            self.groups.setdefault(need(p, o), []).append(o)
        self.via = any(lk.via for lk in _chain_links(p))
        self.cache: dict[tuple, list[Option]] = {}

    def after(self, prev: Option | None) -> list[Option]:
        p = self.p
        if not p.chained:
            return self.options
        want = start_need(p) if prev is None else offer(p, prev)
        if want is None:
            return self.options
        if not self.via:
            return self.groups.get(want, [])
        got = self.cache.get(want)
        if got is None:
            got = [o for key, group in self.groups.items() if compatible(p, want, key) for o in group]
            got.sort(key=lambda o: (o[2], o[0]))
            self.cache[want] = got
        return got


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
                if not lk.holds(p, rows[s.name][lk.column], rows[lk.slot][lk.target]):
                    rel = f"no {lk.via[0]} row pairing it with" if lk.via else "not"
                    out.append(f"unit {u + 1}: {s.name} {ids[p.slots.index(s)]} has {lk.column} "
                               f"{rows[s.name][lk.column]}, {rel} its {lk.slot}'s {lk.target}")
        o = (ids, rows, 0)
        if not follows(p, prev, o):
            out.append(f"unit {u + 1} does not continue from " + ("the origin" if prev is None else f"unit {u}"))
        prev = o
    return out
