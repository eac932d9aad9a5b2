"""The difficulty ladder: level 0, then measured escalation steps.

A step is accepted only if the task stays solvable and gets measurably harder: strictly
fewer feasible plans (counted exactly: the enumeration cap is the previous level's count,
so reaching it means "not fewer"). A preferred move wins as soon as it bites; otherwise,
of the moves that keep at most a set share of the previous level's plans, the one that
keeps the most wins (room for the levels above), else the hardest of the moves tried. Every proposed
constraint is validated (`verifiers.constraints.validate`) before it is counted. When a level's constraints need data no current tool
exposes, the toolset is extended (a details tool, or the distance tool). Each level records
the tool calls a solver needs to gather its facts for the reference plan.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from envfactory.factory.agent import Agent, AgentError
from envfactory.toolgen import ToolDef, covers, details_tool, distance_tool
from envfactory.verifiers.constraints import Constraint, ConstraintError, get_kind, validate
from envfactory.verifiers.problem import Plan, Problem
from envfactory.verifiers.count import CountResult, count_plans
from envfactory.verifiers.solver import confirm, pick_reference

__all__ = ["Level", "build_ladder", "LadderError", "reference_calls"]

MAX_TRIES_PER_STEP = 16  # candidate moves counted per step, the best of them taken
MAX_MOVES_PER_STEP = 200  # moves looked at before a step gives up, when none of the first bite
SHRINK_TARGET = 0.05     # the top level keeps at most ~5% of level 0's plans


class LadderError(RuntimeError):
    pass


@dataclass
class Level:
    level: int
    constraints: list[Constraint]
    count: int
    capped: bool
    reference: Plan
    move: str
    tools: list[str]                  # tool names available at this level
    tools_added: list[str] = field(default_factory=list)
    calls: list[tuple[str, dict]] = field(default_factory=list)
    plans: list[Plan] | None = field(default=None, repr=False)  # every feasible plan, when not capped


def _extend_tools(p: Problem, tools: list[ToolDef], constraints: list[Constraint], seed) -> tuple[list[ToolDef], list[str]]:
    tools, added = list(tools), []
    for c in constraints:
        for need in get_kind(c.kind).needs(c, p):
            if covers(tools, need.table, need.column):
                continue
            if need.column is None:
                tools.append(distance_tool(p.anchor.name))
                added.append("get_distance")
                continue
            slot = next((s.name for s in p.slots if s.table == need.table), None)
            old = next((t for t in tools if t.table == need.table and t.shape == "details"), None)
            if old is None:
                tools.append(details_tool(seed, need.table, [need.column], slot))
                added.append(tools[-1].name)
            else:
                tools[tools.index(old)] = old.with_returns([need.column])
                added.append(f"{old.name}+{need.column}")
    return tools, added


def _finder(tools: list[ToolDef], s) -> ToolDef | None:
    """The tool that lists a slot's candidates: a search on its table filtered by exactly the
    slot's link columns (known from the linked slot), else one filtered by some of them,
    else an unfiltered list of the table."""
    links = {lk.column for lk in s.links}
    mine = [t for t in tools if t.table == s.table and t.shape == "search"]
    for ok in (lambda t: set(t.filters) == links and links, lambda t: t.filters and set(t.filters) <= links,
               lambda t: not t.filters):
        hit = next((t for t in mine if ok(t)), None)
        if hit:
            return hit
    return None


def _revealing(tools: list[ToolDef], s, column: str, row: dict, eid: str) -> tuple[str, dict]:
    """A call that shows `column` of this row: the table's details tool, else any tool that
    returns the column and whose filters the row's own values fill."""
    det = next((t for t in tools if t.table == s.table and t.shape == "details"), None)
    if det is not None and column in det.returns:
        return det.name, {det.filters[0]: eid}
    other = next(t for t in tools if t.table == s.table and column in t.returns and set(t.filters) <= set(row))
    return other.name, {f: row[f] for f in other.filters}


def _relation_call(tools: list[ToolDef], lk, value) -> tuple[str, dict]:
    """The call that lists a link's relation rows for a known linked value: a search on the
    relation table filtered by its `that` column, else an unfiltered list of it (the seed
    checker makes sure one exists)."""
    table, _, that = lk.via
    mine = [t for t in tools if t.table == table and t.shape == "search"]
    hit = next((t for t in mine if tuple(t.filters) == (that,)), None)
    if hit:
        return hit.name, {that: value}
    hit = next(t for t in mine if not t.filters)
    return hit.name, {}


def reference_calls(p: Problem, tools: list[ToolDef], constraints: list[Constraint], plan: Plan) -> list[tuple[str, dict]]:
    """The distinct tool calls that reveal every fact the reference plan's checks use."""
    calls: list[tuple[str, dict]] = []

    def add(name, args):
        if (name, args) not in calls:
            calls.append((name, args))

    needs = [n for c in constraints for n in get_kind(c.kind).needs(c, p)]
    every = p.plan_rows(plan)
    for u, rows in enumerate(every):
        for i, s in enumerate(p.slots):
            row = rows[s.name]
            search = _finder(tools, s)
            if search:
                add(search.name, {f: row[f] for f in search.filters})
            for n in needs:
                if n.table == s.table and n.column and not (search and n.column in search.returns):
                    add(*_revealing(tools, s, n.column, row, plan[u][i]))
            for lk in (lk for lk in s.links if lk.via):  # the relation rows pairing it with the linked value
                if not lk.previous:
                    add(*_relation_call(tools, lk, rows[lk.slot][lk.target]))
                elif u:
                    add(*_relation_call(tools, lk, every[u - 1][lk.slot][lk.target]))
                elif p.origin_id is not None:
                    add(*_relation_call(tools, lk, p.origin_id))
    if any(n.column is None for n in needs):
        dist = next(t for t in tools if t.shape == "relation")
        stops = [ids[0] for ids in plan]
        legs = list(zip(stops, stops[1:]))
        if p.origin_id is not None:
            legs.insert(0, (p.origin_id, stops[0]))
        for a, b in legs:
            if a != b:
                add(dist.name, {"from_id": a, "to_id": b})
    return calls


def _narrow(p: Problem, constraints: list[Constraint], prev: "Level") -> CountResult:
    """Count a candidate's plans. Every move only adds or tightens constraints, so its plans
    are the previous level's plans that pass the new set: filtering the previous (complete)
    list is exact and needs no search. tests/test_ladder.py checks this against a full count."""
    if prev.capped or prev.plans is None:
        return count_plans(p, constraints, prev.count)
    ctx = p.ctx()
    # prev's plans already pass every unchanged constraint; check only the new or tightened
    checks = [(get_kind(c.kind).check, c.params) for c in constraints if c not in prev.constraints]
    keep = []
    for plan in prev.plans:
        rows = p.plan_rows(plan)
        if all(fn(rows, prm, ctx)[0] for fn, prm in checks):
            keep.append(plan)
    return CountResult(len(keep), len(keep) >= prev.count, keep)


def _confirmed(p: Problem, constraints: list[Constraint], plan: Plan) -> Plan:
    if not confirm(p, constraints, plan):
        raise LadderError(f"CP-SAT rejects the counted reference plan {plan}: the encodings disagree")
    return plan


def _usable(p: Problem, cand: list[Constraint], prev: list[Constraint]) -> list[Constraint] | None:
    """The candidate with its new or changed constraints validated (values cast to their
    column types), or None if one cannot be used."""
    out = []
    for c in cand:
        if c in prev:
            out.append(c)
            continue
        try:
            out.append(validate(c, p))
        except (ConstraintError, KeyError, TypeError, ValueError):
            return None
    return out


def build_ladder(p: Problem, agent: Agent, seed, tools: list[ToolDef], rng: random.Random,
                 levels: int) -> tuple[list[Level], list[ToolDef]]:
    try:
        cons, res = agent.base_task(p, rng)
    except (AgentError, ConstraintError) as e:
        raise LadderError(str(e)) from None
    ref = _confirmed(p, cons, pick_reference(res, rng))
    tools, added = _extend_tools(p, tools, cons, seed)
    out = [Level(0, cons, res.count, res.capped, ref, "base task", [t.name for t in tools], added,
                 reference_calls(p, tools, cons, ref), None if res.capped else res.plans)]
    # each step should keep at most this share of the previous level's plans, so the top
    # level keeps about SHRINK_TARGET of level 0's
    per_step = SHRINK_TARGET ** (1 / max(1, levels - 1))
    while len(out) < levels:
        prev = out[-1]
        remaining = levels - len(out) - 1  # levels still to build after this one
        step, hit, best = None, None, None
        for tries, (move, cand) in enumerate(agent.moves(p, prev.constraints, prev.reference, rng, len(out))):
            if tries >= MAX_TRIES_PER_STEP and (hit or best):
                break  # enough moves counted to choose among; with none usable yet, go on
            if tries >= MAX_MOVES_PER_STEP:
                break
            cand = _usable(p, cand, prev.constraints)
            if cand is None:
                continue  # a malformed proposal is skipped, never trusted
            r = _narrow(p, cand, prev)
            # strictly fewer plans, and room left for the remaining levels to shrink further
            if r.capped or r.count <= remaining:
                continue
            if move.split(" ", 1)[-1] in seed.ladder.prefer:
                step = (move, cand, r)  # the seed's preferred moves only need to bite
                break
            if r.count <= prev.count * per_step:
                # cuts enough: keep the one that cuts least, leaving room for the levels above
                if hit is None or r.count > hit[2].count:
                    hit = (move, cand, r)
            elif best is None or r.count < best[2].count:
                best = (move, cand, r)
        step = step or hit or best
        if step is None:
            raise LadderError(f"no harder solvable task found after level {prev.level}")
        move, cand, r = step
        ref = _confirmed(p, cand, pick_reference(r, rng))
        tools, added = _extend_tools(p, tools, cand, seed)
        out.append(Level(len(out), cand, r.count, False, ref, move, [t.name for t in tools], added,
                         reference_calls(p, tools, cand, ref), r.plans))
    return out, tools
