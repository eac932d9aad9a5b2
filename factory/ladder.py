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

from envfactory.factory.agents.base import Agent, AgentError
from envfactory.toolgen import ToolDef
from envfactory.toolgen.calls import extend_tools, reference_calls
from envfactory.verifiers.constraints import Constraint, ConstraintError, get_kind, validate
from envfactory.verifiers.problem import Plan, Problem
from envfactory.verifiers.count import CountResult, count_plans
from envfactory.verifiers.solver import confirm, pick_reference

__all__ = ["Level", "build_ladder", "LadderError"]

MAX_TRIES_PER_STEP = 16  # candidate moves counted per step, the best of them taken
MAX_MOVES_PER_STEP = 200  # moves looked at before a step gives up, when none of the first bite
SHRINK_TARGET = 0.05     # the top level keeps at most ~5% of level 0's plans


# what a proposed constraint's check may raise on real rows when its parameters passed
# validation but still do not fit the data (a model's proposal, a seed's stated value)
CHECK_ERRORS = (KeyError, TypeError, ValueError, ZeroDivisionError, IndexError, AttributeError, ArithmeticError)


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
    greedy_solves: bool | None = None  # whether the greedy baseline, given every row, solves it


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


def _usable(p: Problem, cand: list[Constraint], prev: list[Constraint]) -> tuple[list[Constraint] | None, str]:
    """The candidate with its new or changed constraints validated (values cast to their
    column types), or None and the reason one cannot be used."""
    out = []
    for c in cand:
        if c in prev:
            out.append(c)
            continue
        try:
            out.append(validate(c, p))
        except (ConstraintError, KeyError, TypeError, ValueError) as e:
            return None, f"{getattr(c, 'name', c)}: {e}"
    return out, ""


def greedy_solves(p: Problem, constraints: list[Constraint], plans: list[Plan] | None, rng: random.Random) -> bool:
    """Whether the greedy baseline (`agents.solvers.GreedySolver`: cheapest first, then local
    repair), given every row, finds a feasible plan; its plan is checked against the counted
    feasible set (a few milliseconds on the built-in seeds)."""
    from envfactory.factory.agents.solvers import GreedySolver
    from envfactory.verifiers.structure import unit_options

    try:
        plan = GreedySolver().plan(p, constraints, unit_options(p), random.Random(rng.random()))
    except CHECK_ERRORS:
        return False
    if plan is None:
        return False
    if plans is not None:
        key = tuple(sorted(plan)) if p.unordered else plan
        return key in {tuple(sorted(x)) if p.unordered else x for x in plans}
    return False


def _guarded(moves):
    """An agent's moves; an agent that fails mid-step (a model server down, nothing usable
    proposed) ends the environment with its reason, not the run."""
    try:
        yield from moves
    except AgentError as e:
        raise LadderError(str(e)) from None


def build_ladder(p: Problem, agent: Agent, seed, tools: list[ToolDef], rng: random.Random,
                 levels: int, gate=None) -> tuple[list[Level], list[ToolDef]]:
    """The ladder, preferring at each step a move the greedy baseline fails on; if that ends
    in a dead end (a greedy-hard move can leave no room to escalate further), the ladder is
    built again from the same random state choosing by plan counts alone.

    `gate(constraints, new_checks, reference, level) -> reason | None` judges a task that
    adds a model-written `check` (`factory.checkgate.CheckGate`: the validation harness);
    without one, such a check is judged by counting alone."""
    state = rng.getstate()
    try:
        return _build(p, agent, seed, tools, rng, levels, True, gate)
    except LadderError:
        rng.setstate(state)
        return _build(p, agent, seed, tools, rng, levels, False, gate)


def _new_checks(cand: list[Constraint], prev: list[Constraint]) -> list[Constraint]:
    return [c for c in cand if c.kind == "check" and c not in prev]


def _build(p: Problem, agent: Agent, seed, tools: list[ToolDef], rng: random.Random,
           levels: int, greedy_aware: bool, gate=None) -> tuple[list[Level], list[ToolDef]]:
    def tell(move: str, accepted: bool, reason: str) -> None:
        if hasattr(agent, "feedback"):
            agent.feedback(move, accepted, reason)

    try:
        cons, res = agent.base_task(p, rng)
    except (AgentError, ConstraintError) as e:
        raise LadderError(str(e)) from None
    ref = _confirmed(p, cons, pick_reference(res, rng))
    if gate is not None and _new_checks(cons, []):
        why = gate(cons, _new_checks(cons, []), ref, 0)
        if why:
            raise LadderError(f"the level-0 task's check fails the validation harness: {why}")
    tools, added = extend_tools(p, tools, cons, seed)
    out = [Level(0, cons, res.count, res.capped, ref, "base task", [t.name for t in tools], added,
                 reference_calls(p, tools, cons, ref), None if res.capped else res.plans,
                 None if res.capped else greedy_solves(p, cons, res.plans, rng))]
    # each step should keep at most this share of the previous level's plans, so the top
    # level keeps about SHRINK_TARGET of level 0's
    per_step = SHRINK_TARGET ** (1 / max(1, levels - 1))
    while len(out) < levels:
        prev = out[-1]
        remaining = levels - len(out) - 1  # levels still to build after this one
        step, hit, best = None, None, None
        for tries, (move, cand) in enumerate(_guarded(agent.moves(p, prev.constraints, prev.reference, rng,
                                                                  len(out)))):
            if tries >= MAX_TRIES_PER_STEP and (hit or best):
                break  # enough moves counted to choose among; with none usable yet, go on
            if tries >= MAX_MOVES_PER_STEP:
                break
            cand, why = _usable(p, cand, prev.constraints)
            if cand is None:
                tell(move, False, f"malformed: {why}")  # skipped, never trusted
                continue
            try:
                r = _narrow(p, cand, prev)
            except CHECK_ERRORS as e:  # validated, yet its check fails on real plans: refused, never fatal
                tell(move, False, f"its check fails on this environment's plans: {type(e).__name__}: {e}")
                continue
            # strictly fewer plans, and room left for the remaining levels to shrink further
            if r.capped:
                tell(move, False, f"not harder: it keeps all {prev.count} plans of level {prev.level}")
                continue
            if r.count <= remaining:
                tell(move, False, f"too hard: it leaves {r.count} plans, and {remaining} more levels must each "
                                  "remove some")
                continue
            checks = _new_checks(cand, prev.constraints)
            if checks and gate is not None:  # a model-written check: the validation harness first
                why = gate(cand, checks, pick_reference(r, random.Random(move)), len(out))
                if why:
                    tell(move, False, f"its check fails the validation harness: {why}")
                    continue
            if move.split(" ", 1)[-1] in seed.ladder.prefer:
                step = (move, cand, r)  # the seed's preferred moves only need to bite
                break
            # hard to solve, not only fewer plans: a move the greedy baseline fails on ranks first
            beats = greedy_aware and not greedy_solves(p, cand, r.plans, rng)
            if r.count <= prev.count * per_step:
                # cuts enough: keep the one that cuts least, leaving room for the levels above
                if hit is None or (beats, r.count) > (hit[3], hit[2].count):
                    hit = (move, cand, r, beats)
            elif best is None or (beats, -r.count) > (best[3], -best[2].count):
                best = (move, cand, r, beats)
            tell(move, False, f"counted: {r.count} of {prev.count} plans remain (a step should keep at most "
                              f"{int(prev.count * per_step)})")
        step = step or hit or best
        if step is None:
            raise LadderError(f"no harder solvable task found after level {prev.level}")
        move, cand, r = step[:3]
        easy = not step[3] if greedy_aware and len(step) > 3 else greedy_solves(p, cand, r.plans, rng)
        tell(move, True, f"accepted as level {len(out)}: {r.count} of {prev.count} plans remain")
        ref = _confirmed(p, cand, pick_reference(r, rng))
        tools, added = extend_tools(p, tools, cand, seed)
        out.append(Level(len(out), cand, r.count, False, ref, move, [t.name for t in tools], added,
                         reference_calls(p, tools, cand, ref), r.plans, easy))
    return out, tools
