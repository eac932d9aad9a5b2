"""Answers to test a verifier with, each labelled by a trusted oracle.

`cases(...)` derives, for one task, the answers its verifier must score:
  - the reference answer, several times (it must score 1 every time, with the same checks);
  - mutants from the task's constraints and the sandbox schema: for every constraint an
    entity swapped so that exactly that constraint breaks where possible (for budgets, the
    violating swap with the smallest excess); a repeated entity; an entity from another
    unit's anchor; the origin as a stop; ids that do not exist; wrong types; missing and
    extra fields; a missing or an extra unit; empty answers;
  - junk: null, empty, non-JSON text, and random plans of real ids;
  - up to 20 other feasible plans, enumerated by the exact counter and each confirmed by
    CP-SAT (completeness: a correct plan that differs from the reference must pass).

The oracle (`judge`) is written from the answer contract and the constraint language,
not from the generated verifier: shape and ids are checked here, constraints by the
library's checks *and* by CP-SAT's independent encoding. A plan the two disagree on is
reported (`Case.disagree`), never silently labelled. Every case carries the score the
verifier must give: 1 if the oracle finds the answer feasible, else 0.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass

from envfactory.verifiers import structure
from envfactory.verifiers.constraints import Constraint, get_kind
from envfactory.verifiers.count import count_plans
from envfactory.verifiers.problem import Plan, Problem, scaled
from envfactory.verifiers.solver import confirm

__all__ = ["Case", "Verdict", "judge", "cases", "plan_of", "random_plan"]

REFERENCE_RERUNS = 5
MAX_ALTERNATIVES = 20
RANDOM_PLANS = 3
ALT_ENUMERATION_CAP = 50_000


@dataclass(frozen=True)
class Verdict:
    feasible: bool
    reason: str
    disagree: bool = False   # the library's checks and CP-SAT disagree on this plan


@dataclass
class Case:
    name: str                # e.g. "violate:total_budget", "missing_field:hotel"
    group: str               # reference | mutant | junk | alternative
    answer: object
    expect: float            # the score the verifier must give
    target: str | None = None  # the constraint this case was built to break
    note: str = ""
    disagree: bool = False


def plan_of(p: Problem, answer) -> Plan | None:
    """The plan tuple of a well-formed answer, else None."""
    try:
        return tuple(tuple(u[s.name] for s in p.slots) for u in answer[p.key])
    except (KeyError, TypeError, IndexError):
        return None


def _shape(p: Problem, answer) -> tuple[Plan | None, str]:
    """Independent reading of the answer contract (docs/seeds.md): an object with exactly
    the unit key, a list of exactly `units` objects, each with exactly the slot keys, each
    a non-empty id string. A JSON text of such an object is accepted too."""
    if isinstance(answer, str):
        try:
            answer = json.loads(answer)
        except ValueError:
            return None, "not JSON"
    if not isinstance(answer, dict) or set(answer) != {p.key}:
        return None, f"not an object with exactly the key {p.key!r}"
    units = answer[p.key]
    if not isinstance(units, list) or len(units) != p.units:
        return None, f"{p.key!r} is not a list of {p.units}"
    names = {s.name for s in p.slots}
    for u in units:
        if not isinstance(u, dict) or set(u) != names:
            return None, "a unit does not have exactly the slot keys"
        if not all(isinstance(v, str) and v for v in u.values()):
            return None, "an id is not a non-empty string"
    return tuple(tuple(u[s.name] for s in p.slots) for u in units), "well-formed"


def judge(p: Problem, constraints: list[Constraint], answer, use_cpsat: bool = True) -> Verdict:
    plan, why = _shape(p, answer)
    if plan is None:
        return Verdict(False, why)
    broken = structure.problems(p, plan)
    if broken:
        return Verdict(False, broken[0])
    rows, ctx = p.plan_rows(plan), p.ctx()
    failed = [c.name for c in constraints if not get_kind(c.kind).check(rows, c.params, ctx)[0]]
    lib = not failed
    if not use_cpsat:
        return Verdict(lib, "feasible" if lib else f"breaks {', '.join(failed)}")
    # CP-SAT sees a selection in one canonical order; a set's other orders are the same plan
    sat = confirm(p, constraints, tuple(sorted(plan)) if p.unordered else plan)
    if sat != lib:
        return Verdict(lib, f"library checks say {lib}, CP-SAT says {sat}", disagree=True)
    return Verdict(lib, "feasible" if lib else f"breaks {', '.join(failed)}")


def _plan_cost(p: Problem, plan: Plan) -> int:
    return sum(p.cost(s.name, ids[i]) for ids in plan for i, s in enumerate(p.slots) if s.cost)


def _with(plan: Plan, u: int, i: int, eid: str) -> Plan:
    return tuple(tuple(eid if (uu == u and ii == i) else x for ii, x in enumerate(ids)) for uu, ids in enumerate(plan))


MAX_NEIGHBOURS = 600  # unit options tried per unit (a seeded sample beyond that)


def _neighbours(p: Problem, plan: Plan, rng: random.Random):
    """Plans one unit away from `plan` that keep the structure (links and chain): options
    differing in one slot first (the nearest mutants), then a sample of the rest."""
    options = structure.unit_options(p)
    for u, ids in enumerate(plan):
        near = [o for o in options if sum(a != b for a, b in zip(o[0], ids)) == 1]
        far = [o for o in options if sum(a != b for a, b in zip(o[0], ids)) > 1]
        if len(far) > MAX_NEIGHBOURS:
            far = rng.sample(far, MAX_NEIGHBOURS)
        for o in near + far:
            if o[0] != ids:
                new = tuple(o[0] if uu == u else x for uu, x in enumerate(plan))
                if not structure.problems(p, new):
                    yield new


def random_plan(p: Problem, rng: random.Random) -> Plan | None:
    """A random plan that keeps the structure: each unit drawn among those that may follow."""
    after = structure.Successors(p, structure.unit_options(p)).after
    plan, prev = [], None
    for _ in range(p.units):
        cands = after(prev)
        if not cands:
            return None
        prev = rng.choice(cands)
        plan.append(prev[0])
    return tuple(plan)


def _breaking(p: Problem, ref: Plan, u: int, i: int, rng: random.Random) -> Plan | None:
    """`ref` with unit u's slot-i entity swapped for one that breaks a link, if any does."""
    s = p.slots[i]
    bad = [e for e in p.rows[s.name] if e != ref[u][i] and structure.problems(p, _with(ref, u, i, e))]
    return _with(ref, u, i, rng.choice(bad)) if bad else None


def _violators(p: Problem, constraints: list[Constraint], ref: Plan, rng: random.Random) -> dict[str, tuple[Plan, bool]]:
    """Per constraint: a plan that breaks it (isolated: breaking nothing else, if one
    exists), preferring the smallest change in total cost (a budget exceeded by the least)."""
    ctx = p.ctx()
    best: dict[str, tuple[tuple, Plan, bool]] = {}
    base = _plan_cost(p, ref)

    def consider(plan: Plan):
        rows = p.plan_rows(plan)
        broken = [c.name for c in constraints if not get_kind(c.kind).check(rows, c.params, ctx)[0]]
        for name in broken:
            key = (len(broken) > 1, abs(_plan_cost(p, plan) - base))
            if name not in best or key < best[name][0]:
                best[name] = (key, plan, len(broken) == 1)

    for plan in _neighbours(p, ref, rng):
        consider(plan)
    tries = 0
    while len(best) < len(constraints) and tries < 3000:  # some constraints need more than one swap
        tries += 1
        plan = random_plan(p, rng)
        if plan is not None:
            consider(plan)
    return {name: (plan, isolated) for name, (_, plan, isolated) in best.items()}


def _alternatives(p: Problem, constraints: list[Constraint], ref: Plan, rng: random.Random) -> list[Plan]:
    found = count_plans(p, constraints, ALT_ENUMERATION_CAP).plans
    others = [pl for pl in found if pl != ref]
    rng.shuffle(others)
    return others[:MAX_ALTERNATIVES]


def cases(p: Problem, constraints: list[Constraint], reference: dict, rng: random.Random,
          origin_id: str | None = None) -> list[Case]:
    ref = plan_of(p, reference)
    if ref is None:
        raise ValueError("the reference answer is not a well-formed plan")
    out: list[Case] = [Case(f"reference#{i + 1}", "reference", reference, 1.0) for i in range(REFERENCE_RERUNS)]
    key, names = p.key, [s.name for s in p.slots]

    def add_plan(name, group, plan, target=None, note=""):
        out.append(Case(name, group, p.plan_dict(plan), -1.0, target, note))

    def add_raw(name, group, answer, note=""):
        out.append(Case(name, group, answer, -1.0, None, note))

    # one mutant per constraint
    viol = _violators(p, constraints, ref, rng)
    for c in constraints:
        if c.name in viol:
            plan, isolated = viol[c.name]
            note = "breaks only this constraint" if isolated else "breaks this and others"
            if c.kind == "total_budget":
                total = sum(scaled(row[col]) for unit in p.plan_rows(plan) for s, col in c.params["costs"].items()
                            for row in [unit[s]])
                note += f"; over the budget by {total - scaled(c.params['max'])} (scaled units)"
            add_plan(f"violate:{c.name}", "mutant", plan, c.name, note)

    # schema-derived mutants
    first = [dict(u) for u in reference[key]]
    if p.units > 1:
        add_plan("repeat:unit", "mutant", (ref[0],) + ref[:-1], note="the first unit repeated")
        for i, s in enumerate(p.slots[1:], start=1):
            twin = [u for u in range(1, p.units) if ref[u][0] == ref[0][0]]
            if twin:
                add_plan(f"repeat:{s.name}", "mutant", _with(ref, twin[0], i, ref[0][i]), note="same anchor, entity reused")
    for i, s in enumerate(p.slots):
        if s.same_unit_links:
            plan = _breaking(p, ref, 0, i, rng)
            if plan is not None:
                add_plan(f"unlinked:{s.name}", "mutant", plan, note=f"a {s.name} that breaks its link")
        if s.previous_links:
            u = 1 if p.units > 1 else 0
            plan = _breaking(p, ref, u, i, rng)
            if plan is not None:
                add_plan(f"broken_chain:{s.name}", "mutant", plan, note=f"unit {u + 1} does not continue the chain")
    if origin_id is not None and p.origin_table is not None:
        for i, s in enumerate(p.slots):
            if s.table == p.origin_table:
                add_plan("origin_as_stop", "mutant", _with(ref, 0, i, origin_id))
    if p.unordered and p.units > 1:
        add_plan("reordered", "alternative", tuple(reversed(ref)), note="the same selection in another order")
    for i, s in enumerate(p.slots):
        add_plan(f"unknown_id:{s.name}", "mutant", _with(ref, p.units - 1, i, ref[-1][i] + "-404"))
    for s in names:
        for label, bad in (("int", 404), ("null", None), ("list", ["x"]), ("empty", "")):
            units = [dict(u) for u in first]
            units[0][s] = bad
            add_raw(f"wrong_type:{s}:{label}", "mutant", {key: units})
    for s in names:
        units = [dict(u) for u in first]
        del units[-1][s]
        add_raw(f"missing_field:{s}", "mutant", {key: units})
    units = [dict(u) for u in first]
    units[0]["note"] = "extra"
    add_raw("extra_field:unit", "mutant", {key: units})
    add_raw("extra_field:top", "mutant", {key: first, "comment": "extra"})
    add_raw(f"missing_{p.unit}", "mutant", {key: first[:-1]})
    add_raw(f"extra_{p.unit}", "mutant", {key: first + [dict(first[-1])]})
    add_raw(f"empty_{key}", "mutant", {key: []})
    add_raw(f"{key}_not_list", "mutant", {key: first[0]})
    add_raw("unit_not_object", "mutant", {key: [list(u.values()) for u in first]})
    # the mistakes a model makes with ids: bare ids instead of objects, padded or re-cased
    # ids, the list without its key, a unit left null
    add_raw("bare_ids", "mutant", {key: [u[names[0]] for u in first]})
    add_raw("no_key", "mutant", [dict(u) for u in first])
    add_raw("null_unit", "mutant", {key: first[:-1] + [None]})
    for s in names:
        units = [dict(u) for u in first]
        units[0][s] = " " + units[0][s] + " "
        add_raw(f"padded_id:{s}", "mutant", {key: units})
        other = first[0][s].swapcase()
        if other != first[0][s]:
            units = [dict(u) for u in first]
            units[0][s] = other
            add_raw(f"recased_id:{s}", "mutant", {key: units})

    # junk
    for name, ans in (("null", None), ("empty_object", {}), ("empty_list", []), ("empty_string", ""),
                      ("not_json", "the plan is below"), ("number", 1), ("other_key", {"plan": first})):
        add_raw(f"junk:{name}", "junk", ans)
    for i in range(RANDOM_PLANS):
        plan = random_plan(p, rng)
        if plan is not None:
            add_plan(f"junk:random_plan#{i + 1}", "junk", plan)

    # completeness
    for i, plan in enumerate(_alternatives(p, constraints, ref, rng)):
        add_plan(f"alternative#{i + 1}", "alternative", plan, note="another feasible plan")

    for case in out:
        if case.expect < 0:
            v = judge(p, constraints, case.answer)
            case.expect, case.disagree = (1.0 if v.feasible else 0.0), v.disagree
            if v.disagree or case.group in ("mutant", "junk") and v.feasible:
                case.note = (case.note + "; " if case.note else "") + v.reason
    return out
