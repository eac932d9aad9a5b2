"""CP-SAT over a task's constraints: proves solvability, counts plans, picks the reference.

The model has one Boolean per (unit, slot, candidate entity); each unit picks exactly one
entity per slot and linked slots must sit in the unit's anchor (a hotel in the day's city).
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
from envfactory.verifiers.problem import Plan, Problem

__all__ = ["SolveResult", "count_solutions", "min_total_cost", "build_model", "pick_reference", "confirm"]

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
    anchor = p.anchor
    for u in range(p.units):
        xu = {}
        for s in p.slots:
            xu[s.name] = {eid: m.new_bool_var(f"x{u}_{s.name}_{eid}") for eid in p.rows[s.name]}
            m.add_exactly_one(xu[s.name].values())
            if s.link:
                for eid, row in p.rows[s.name].items():
                    m.add_implication(xu[s.name][eid], xu[anchor.name][row[s.link]])
            ids = list(xu[s.name])
            idx = m.new_int_var(0, max(len(ids) - 1, 0), f"i{u}_{s.name}")
            m.add(idx == sum(i * v for i, v in enumerate(xu[s.name].values())))
            picks.append((ids, idx))
        x.append(xu)
    vars_ = Vars(x)
    for c in constraints:
        get_kind(c.kind).encode(m, vars_, c, p)
    return m, vars_, picks


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


def min_total_cost(p: Problem, constraints: list[Constraint], costs: dict[str, str]) -> int | None:
    """The cheapest plan's total cost under `constraints`, or None if there is no plan."""
    m, x, _ = build_model(p, constraints)
    m.minimize(sum(x.value(u, s, lambda e, s=s: p.cost(s, e)) for u in range(p.units) for s in costs))
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
