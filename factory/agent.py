"""The agent interface, and the deterministic specialist that implements it.

The flow asks an agent for decisions: the level-0 task, and candidate moves that make a
task harder. The specialist answers from rules plus solver feedback (it tunes the level-0
budget by counting plans, and proposes moves from the seed's constraint pool using each
kind's `propose`). A model agent (a chat backend with tool calls) implements the same
interface; whatever any agent proposes is re-solved and checked, never trusted.
"""

from __future__ import annotations

import random
from typing import Iterator, Protocol

from envfactory.factory.seed import Seed, parse_pool_item
from envfactory.verifiers.constraints import Constraint, get_kind
from envfactory.verifiers.problem import Plan, Problem
from envfactory.verifiers.count import CountResult, count_plans
from envfactory.verifiers.solver import min_total_cost

__all__ = ["Agent", "SpecialistAgent", "AgentError"]


class AgentError(RuntimeError):
    pass


class Agent(Protocol):
    def base_task(self, p: Problem, rng: random.Random) -> tuple[list[Constraint], CountResult]:
        """Level 0: few constraints, solvable, with its plans counted."""

    def moves(self, p: Problem, current: list[Constraint], reference: Plan, rng: random.Random,
              level: int) -> Iterator[tuple[str, list[Constraint]]]:
        """Candidate harder constraint sets, best first, each with a short description."""


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
        self.opts = {"conditional_unit": seed.ladder.conditional_unit}

    def _propose(self, text: str, p: Problem, current: list[Constraint], reference, rng) -> list[Constraint]:
        item = parse_pool_item(text)
        return get_kind(item.kind).propose(item, p, current, reference, rng, self.opts)

    def base_task(self, p: Problem, rng: random.Random) -> tuple[list[Constraint], CountResult]:
        cons: list[Constraint] = []
        for text in self.seed.ladder.base:
            if parse_pool_item(text).kind == "total_budget":
                continue
            got = self._propose(text, p, cons, None, rng)
            if got:
                cons = _replace(cons, got[0])
        if "total_budget" not in [parse_pool_item(t).kind for t in self.seed.ladder.base]:
            res = count_plans(p, cons, self.cap)
            if not res.solvable:
                raise AgentError("the base constraints admit no plan")
            return cons, res
        return self._tune_budget(p, cons)

    def _tune_budget(self, p: Problem, cons: list[Constraint]) -> tuple[list[Constraint], CountResult]:
        """A total budget just above the cheapest plan, widened or narrowed until the number
        of feasible plans lands in [cap/8, cap): countable exactly, yet with room to tighten."""
        costs = {s.name: s.cost for s in p.cost_slots}
        low = min_total_cost(p, cons, costs)
        if low is None:
            raise AgentError("the base constraints admit no plan")
        lo, hi = 0, None  # slack bounds: lo gives too few plans, hi too many
        slack = max(1, low // 10)
        best = None
        for _ in range(12):
            trial = _replace(cons, Constraint("total_budget", "total_budget", {"max": low + slack, "costs": costs}))
            res = count_plans(p, trial, self.cap)
            if res.capped:
                hi = slack
            else:
                best = (trial, res)
                if res.count >= self.cap // 8:
                    return best
                lo = slack
            if hi is not None and hi - lo <= 1:
                break
            slack = (lo + hi) // 2 if hi is not None else slack * 2
        if best is None:
            raise AgentError("could not find a budget with a countable number of plans")
        return best

    def moves(self, p: Problem, current: list[Constraint], reference: Plan, rng: random.Random,
              level: int) -> Iterator[tuple[str, list[Constraint]]]:
        have = {c.name for c in current}
        prefer = list(self.seed.ladder.prefer)
        pool = list(self.seed.ladder.pool)
        rng.shuffle(pool)
        for text in prefer + pool:
            for cand in self._propose(text, p, current, reference, rng):
                verb = "tighten" if cand.name in have else "add"
                yield f"{verb} {text}", _replace(current, cand)
