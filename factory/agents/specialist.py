"""The agent interface, and the deterministic specialist that implements it.

The flow asks an agent for decisions: the level-0 task, and candidate moves that make a
task harder. The specialist answers from rules plus solver feedback (it tunes the level-0
budget by counting plans, and proposes moves from the seed's constraint pool using each
kind's `propose`). A model agent (a chat backend with tool calls) implements the same
interface; whatever any agent proposes is re-solved and checked, never trusted.
"""

from __future__ import annotations

import random
from typing import Iterator

from envfactory.factory.agents.base import AgentError
from envfactory.factory.seed import Seed
from envfactory.verifiers.constraints.entry import parse_pool_item
from envfactory.verifiers.constraints import Constraint, get_kind, validate
from envfactory.verifiers.constraints.sums import name_of
from envfactory.verifiers.problem import Plan, Problem
from envfactory.verifiers.count import CountResult, count_plans
from envfactory.verifiers.solver import extreme_sum

__all__ = ["SpecialistAgent"]


def _replace(current: list[Constraint], new: Constraint) -> list[Constraint]:
    """`new` replaces a constraint of the same name (a tightening) or joins the set."""
    out = [c for c in current if c.name != new.name]
    out.append(new)
    return out


class SpecialistAgent:
    """Rules plus solver feedback; deterministic for a given rng."""

    def __init__(self, seed: Seed):
        self.seed = seed
        self.cap = seed.ladder.count_cap
        self.opts = {"conditional_unit": seed.ladder.conditional_unit, "schedule": seed.ladder.schedule,
                     "optimum": extreme_sum}
        self.rejected: list[str] = []  # proposals that failed, with the reason (never fatal)

    def choose_data(self, tables: list, rng: random.Random):
        """Every table and every column: the seed's pool says what the tasks use."""
        from envfactory.factory.agents.data import everything

        return everything(tables)

    def _propose(self, text: str, p: Problem, current: list[Constraint], reference, rng) -> list[Constraint]:
        item = parse_pool_item(text)
        return get_kind(item.kind).propose(item, p, current, reference, rng, self.opts)

    def base_task(self, p: Problem, rng: random.Random) -> tuple[list[Constraint], CountResult]:
        cons: list[Constraint] = []
        tune = None
        for text in self.seed.ladder.base:
            item = parse_pool_item(text)
            if item.kind == "total_budget" or (item.kind == "sum" and not item.has_value):
                tune = item  # a bound tuned below, once the other constraints are in
                continue
            got = self._propose(text, p, cons, None, rng)
            if got:
                cons = _replace(cons, validate(got[0], p))
        if p.unordered and not any(c.kind == "all_different" and c.params["slot"] == p.anchor.name
                                   and not c.params.get("column") for c in cons):
            # a selection is of distinct rows
            cons.append(Constraint("all_different", f"all_different_{p.anchor.name}", {"slot": p.anchor.name}))
        if tune is None:
            res = count_plans(p, cons, self.cap)
            if not res.solvable:
                raise AgentError("the base constraints admit no plan")
            return cons, res
        return self._tune(p, cons, tune)

    def _bound(self, p: Problem, item):
        """(terms summed, minimise?, bound -> constraint) for a tunable base entry."""
        if item.kind == "total_budget":
            costs = {s.name: s.cost for s in p.cost_slots}
            return costs, True, lambda v: Constraint("total_budget", "total_budget", {"max": v, "costs": costs})
        slot, col, op = item.slot, item.column, item.op or "<="
        as_float = p.slot(slot).columns[col] == "DOUBLE"
        return ({slot: col}, op == "<=", lambda v: Constraint("sum", name_of(slot, col), {
            "slot": slot, "column": col, "op": op, "value": v / 10 if as_float else v, "scope": "total"}))

    def _tune(self, p: Problem, cons: list[Constraint], item) -> tuple[list[Constraint], CountResult]:
        """A bound just past the best plan's (a budget just above the cheapest plan), widened
        or narrowed until the number of feasible plans lands in [cap/8, cap): countable
        exactly, yet with room to tighten."""
        terms, minimize, make = self._bound(p, item)
        best_v = extreme_sum(p, cons, terms, minimize)
        if best_v is None:
            raise AgentError("the base constraints admit no plan")
        free = count_plans(p, cons, self.cap)
        # too few plans overall to reach cap/8: aim at about half of them, so the bound binds
        target = self.cap // 8 if free.capped else max(1, free.count // 2)
        sign = 1 if minimize else -1
        lo, hi = 0, None  # slack bounds: lo gives too few plans, hi too many (or every plan)
        slack = max(1, abs(best_v) // 10)
        best = None
        for _ in range(16):
            trial = _replace(cons, validate(make(best_v + sign * slack), p))
            res = count_plans(p, trial, self.cap)
            if res.capped or (not free.capped and res.count >= free.count):
                hi = slack
            else:
                best = (trial, res)
                if res.count >= target:
                    return best
                lo = slack
            if hi is not None and hi - lo <= 1:
                break
            slack = (lo + hi) // 2 if hi is not None else slack * 2
        if best is None:
            raise AgentError("could not find a bound with a countable number of plans")
        return best

    def moves(self, p: Problem, current: list[Constraint], reference: Plan, rng: random.Random,
              level: int) -> Iterator[tuple[str, list[Constraint]]]:
        have = {c.name for c in current}
        prefer = list(self.seed.ladder.prefer)
        pool = list(self.seed.ladder.pool)
        rng.shuffle(pool)
        for text in prefer + pool:
            try:
                cands = self._propose(text, p, current, reference, rng)
            except (KeyError, TypeError, ValueError, ZeroDivisionError) as e:  # ConstraintError is a ValueError
                self.rejected.append(f"{text}: {type(e).__name__}: {e}")
                continue
            for cand in cands:
                verb = "tighten" if cand.name in have else "add"
                yield f"{verb} {text}", _replace(current, cand)

    def feedback(self, move: str, accepted: bool, reason: str) -> None:
        """The specialist's moves follow from the pool and the counts; verdicts change nothing."""
