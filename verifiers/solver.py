"""CP-SAT over a task's constraints: proves solvability, counts plans, picks the reference.

The model has one Boolean per (unit, slot, candidate entity); each unit picks exactly one
entity per slot; links are implications between a slot's entities and the matching entities
of the linked slot (same unit, or previous unit for a chain); a selection's units are
ordered by their first slot's id so each set is one solution.
Every constraint kind adds its own encoding (`verifiers.constraints`). Counting enumerates
plans with one worker and a fixed seed, so counts and the chosen reference are
deterministic; helper variables are fully reified, and plans are de-duplicated anyway.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from ortools.sat.python import cp_model

from envfactory.verifiers.constraints import Constraint, get_kind
from envfactory.verifiers.constraints.base import Vars
from envfactory.verifiers.problem import Plan, Problem, scaled

__all__ = ["SolveResult", "count_solutions", "extreme_sum", "build_model", "pick_reference", "confirm"]

# A safety net, in CP-SAT's deterministic time units (roughly seconds), so a pathological
# task cannot stall generation; hitting it is reported, never silently trusted.
DETERMINISTIC_LIMIT = 60.0


@dataclass(frozen=True)
class SolveResult:
    count: int            # plans found (exact unless `capped`)
    capped: bool          # enumeration stopped at the cap: the true count is >= `count`
    plans: list[Plan]     # every plan found, in enumeration order
    complete: bool        # the search finished (proved the count or the cap)

    @property
    def solvable(self) -> bool:
        return self.count > 0


def build_model(p: Problem, constraints: list[Constraint]) -> tuple[cp_model.CpModel, Vars, list]:
    m = cp_model.CpModel()
    x: list[dict[str, dict]] = []
    picks = []  # per (unit, slot): index variable of the chosen entity, read by the callback
    for u in range(p.units):
        xu = {}
        for s in p.slots:
            xu[s.name] = {eid: m.new_bool_var(f"x{u}_{s.name}_{eid}") for eid in p.rows[s.name]}
            m.add_exactly_one(xu[s.name].values())
            ids = list(xu[s.name])
            idx = m.new_int_var(0, max(len(ids) - 1, 0), f"i{u}_{s.name}")
            m.add(idx == sum(i * v for i, v in enumerate(xu[s.name].values())))
            picks.append((ids, idx))
        x.append(xu)
    _links(m, p, x)
    if p.unordered:
        # a selection is a set: one ordering counts, increasing in the first slot's id
        a = p.anchor.name
        rank = {eid: r for r, eid in enumerate(sorted(p.rows[a]))}
        ranks = [sum(rank[e] * v for e, v in x[u][a].items()) for u in range(p.units)]
        for u in range(p.units - 1):
            m.add(ranks[u] < ranks[u + 1])
    vars_ = Vars(x)
    for c in constraints:
        get_kind(c.kind).encode(m, vars_, c, p)
    return m, vars_, picks


def _links(m: cp_model.CpModel, p: Problem, x: list[dict[str, dict]]) -> None:
    """Each link as implications: picking an entity forces the linked slot (this unit's, or
    the previous unit's) into the entities whose target column matches; a first unit's
    previous links must meet the origin."""
    for s in p.slots:
        for lk in s.links:
            by_val: dict[str, list[str]] = {}
            for eid, row in p.rows[lk.slot].items():
                by_val.setdefault(str(row[lk.target]), []).append(eid)
            thats: dict[str, set[str]] = {}  # this value -> the linked values it pairs with
            for this, that in p.pairs.get(lk.via, ()) if lk.via else ():
                thats.setdefault(this, set()).add(that)
            for u in range(p.units):
                if lk.previous and u == 0:
                    if p.origin_id is not None:
                        for eid, row in p.rows[s.name].items():
                            if not lk.holds(p, row[lk.column], p.origin_id):
                                m.add(x[0][s.name][eid] == 0)
                    continue
                other = x[u - 1 if lk.previous else u][lk.slot]
                for eid, row in p.rows[s.name].items():
                    v = str(row[lk.column])
                    values = sorted(thats.get(v, ())) if lk.via else [v]
                    match = [other[e] for t in values for e in by_val.get(t, [])]
                    if match:
                        m.add_bool_or(match).only_enforce_if(x[u][s.name][eid])
                    else:
                        m.add(x[u][s.name][eid] == 0)


class _Collector(cp_model.CpSolverSolutionCallback):
    def __init__(self, picks, n_slots: int, cap: int):
        super().__init__()
        self.picks, self.n_slots, self.cap = picks, n_slots, cap
        self.plans: list[Plan] = []
        self.seen: set[Plan] = set()

    def on_solution_callback(self):
        flat = [ids[self.value(idx)] for ids, idx in self.picks]
        plan = tuple(tuple(flat[i:i + self.n_slots]) for i in range(0, len(flat), self.n_slots))
        if plan not in self.seen:
            self.seen.add(plan)
            self.plans.append(plan)
        if len(self.plans) >= self.cap:
            self.stop_search()


def _solver() -> cp_model.CpSolver:
    s = cp_model.CpSolver()
    s.parameters.num_workers = 1
    s.parameters.random_seed = 0
    s.parameters.max_deterministic_time = DETERMINISTIC_LIMIT
    return s


def count_solutions(p: Problem, constraints: list[Constraint], cap: int) -> SolveResult:
    """Enumerate up to `cap` distinct plans."""
    m, _, picks = build_model(p, constraints)
    s = _solver()
    s.parameters.enumerate_all_solutions = True
    cb = _Collector(picks, len(p.slots), cap)
    status = s.solve(m, cb)
    capped = len(cb.plans) >= cap
    complete = capped or status in (cp_model.OPTIMAL, cp_model.INFEASIBLE)
    return SolveResult(len(cb.plans), capped, cb.plans, complete)


def extreme_sum(p: Problem, constraints: list[Constraint], terms: dict[str, str], minimize: bool = True) -> int | None:
    """The least (or greatest) scaled sum of `terms` (slot -> column) over a plan's units
    under `constraints`, or None if there is no plan."""
    m, x, _ = build_model(p, constraints)
    total = sum(x.value(u, s, lambda e, s=s, col=col: scaled(p.rows[s][e][col] or 0))
                for u in range(p.units) for s, col in terms.items())
    m.minimize(total) if minimize else m.maximize(total)
    s = _solver()
    status = s.solve(m)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return None
    return int(round(s.objective_value))


def pick_reference(result, rng: random.Random) -> Plan:
    return result.plans[rng.randrange(len(result.plans))]


def confirm(p: Problem, constraints: list[Constraint], plan: Plan) -> bool:
    """CP-SAT's own encoding accepts `plan` (all plan variables fixed): the two
    implementations of the constraint language agree on the reference."""
    m, x, _ = build_model(p, constraints)
    for u, ids in enumerate(plan):
        for s, eid in zip(p.slots, ids):
            m.add(x.x[u][s.name][eid] == 1)
    return _solver().solve(m) in (cp_model.OPTIMAL, cp_model.FEASIBLE)
