"""Agents that solve tasks, measuring how hard the ladder made them.

Every solver works through one episode of the export runtime (the same tool runtime the MCP
server and the trainer exports use): it calls the task's tools, and its answer is scored by
the task's own verifier. Kinds:

- `random`: explores the environment with its tools, then answers with a random plan that
  keeps the plan's structure (links, chain, distinct picks of a selection), ignoring every
  other requirement. Its pass rate is about the share of structural plans that are feasible.
- `greedy`: explores the same way, builds a plan unit by unit, cheapest option first among
  those that pass the requirements checkable on one unit, then repairs it locally (replace
  one unit at a time by the option that breaks the fewest requirements) until nothing
  improves. No search beyond that: a task it fails needs combinatorial reasoning.
- `openai` (and the other model agents): the task's own messages and tools, through the chat
  runtime's tool loop (`agents.chat.run_tools`); the final reply is the answer.

The no-model baselines read what the prompt says in its structured form: the task's
constraints (`tasks.jsonl`), the plan structure of the environment's seed, and the origin's
id as the prompt states it. Every fact about entities (prices, ratings, hours, distances,
which rows exist) comes through tool calls, which count.
"""

from __future__ import annotations

import itertools
import json
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Attempt", "SOLVERS", "make_solver", "RandomSolver", "GreedySolver", "ModelSolver", "Explorer"]

SOLVERS = ("random", "greedy", "openai", "dsa")
MAX_EXPLORE_CALLS = 400   # tool calls a baseline spends discovering rows before it answers
REPAIR_ROUNDS = 30
REPAIR_OPTIONS = 400      # options tried per unit in one repair round


@dataclass
class Attempt:
    answer: object               # what is submitted (a plan object, or the model's final text)
    tool_calls: int = 0
    tokens: int = 0
    note: str = ""
    errors: list[str] = field(default_factory=list)


_ORIGIN = re.compile(r"the origin \(id ([^)]+)\)|: ([^,()]+), the origin\)")


def origin_from_prompt(prompt: str) -> str | None:
    m = _ORIGIN.search(prompt)
    return (m[1] or m[2]).strip() if m else None


class Explorer:
    """Discovers an environment's rows through its tools: every tool with no parameters once,
    then each tool with the values its parameters can take from what earlier calls returned
    (a parameter named like a column gets that column's values, and a link's column gets the
    values of the column it links to; the origin's id where a plan starts from it). Rows are
    merged by table (the tools module's TABLES) and key; distances come from the distance tool."""

    def __init__(self, task: dict, episode, max_calls: int = MAX_EXPLORE_CALLS):
        from envfactory.factory.seed import load_seed
        from envfactory.verifiers.problem import slot_views

        self.task, self.ep, self.max_calls = task, episode, max_calls
        self.seed = load_seed(Path(episode.env.root) / "seed.toml", check_data=False)
        self.slots = slot_views(self.seed)
        self.origin = origin_from_prompt(task.get("prompt", ""))
        mod = episode.env.tools()
        self.tables: dict[str, str] = dict(getattr(mod, "TABLES", {}))
        self.rows: dict[str, dict[str, dict]] = {}
        self.km: dict[tuple[str, str], float] = {}
        self.calls = 0
        self._done: set[str] = set()

    def _key(self, table: str) -> str | None:
        for s in self.slots:
            if s.table == table:
                return s.key
        try:
            return self.seed.table_key(table)
        except (KeyError, StopIteration):
            return None

    def _params(self, name: str) -> list[str]:
        schema = self.ep.env.schemas.get(name, {}).get("function", {}).get("parameters", {})
        return list(schema.get("properties", {}))

    def _values(self, param: str, table: str | None) -> set[str]:
        """Values a tool parameter may take, from what has been seen so far."""
        out: set[str] = set()
        for rows in self.rows.values():
            for r in rows.values():
                if r.get(param) is not None:
                    out.add(str(r[param]))
        for s in self.slots:
            for lk in s.links:
                # the finder of a linked slot (filtered by the link column), or a relation's tool
                # (filtered by its `that` column): both take the linked slot's column values
                direct = lk.via is None and s.table == table and lk.column == param
                relation = lk.via is not None and lk.via[0] == table and lk.via[2] == param
                if not (direct or relation):
                    continue
                target = next(x.table for x in self.slots if x.name == lk.slot)
                out.update(str(r[lk.target]) for r in self.rows.get(target, {}).values()
                           if r.get(lk.target) is not None)
                if lk.previous and self.origin:
                    out.add(self.origin)
        return out

    def _call(self, name: str, args: dict) -> None:
        sig = name + json.dumps(args, sort_keys=True)
        if sig in self._done or self.calls >= self.max_calls:
            return
        self._done.add(sig)
        self.calls += 1
        try:
            out = json.loads(self.ep.call(name, args))
        except ValueError:
            return
        results = out.get("results") if isinstance(out, dict) else None
        if not isinstance(results, list):
            return
        table = self.tables.get(name)
        if table == "distances":
            for r in results:
                self.km[(str(r.get("from_id")), str(r.get("to_id")))] = r.get("km")
            return
        key = self._key(table) if table else None
        if key is None:
            return
        bucket = self.rows.setdefault(table, {})
        for r in results:
            if isinstance(r, dict) and r.get(key) is not None:
                # a search's filters are equality filters on its table's columns: the rows it
                # returns have those values even when they do not repeat them
                bucket.setdefault(str(r[key]), {}).update({**args, **r})

    def explore(self, want_distances: bool) -> None:
        tools = list(self.task.get("tools") or self.ep.tool_names)
        for _ in range(6):  # rounds: each may reveal values that open more calls
            before = self.calls
            for name in tools:
                if self.tables.get(name) == "distances":
                    continue
                params = self._params(name)
                if not params:
                    self._call(name, {})
                    continue
                choices = [sorted(self._values(p, self.tables.get(name))) for p in params]
                for combo in itertools.product(*choices):
                    self._call(name, dict(zip(params, combo)))
            if self.calls == before:
                break
        if want_distances:
            dist = next((n for n in tools if self.tables.get(n) == "distances"), None)
            if dist:
                anchor = self.slots[0]
                stops = sorted(self.rows.get(anchor.table, {})) + ([self.origin] if self.origin else [])
                for a, b in itertools.permutations(stops, 2):
                    self._call(dist, {"from_id": a, "to_id": b})

    def problem(self):
        """A Problem over the discovered rows (each slot's candidates: its table's rows seen)."""
        from envfactory.verifiers.problem import Problem

        rows, pairs = {}, {}
        for s in self.slots:
            got = {}
            for eid, r in self.rows.get(s.table, {}).items():
                if eid != self.origin or s.table != self.seed.partition.table:
                    got[eid] = {c: r.get(c) for c in set(s.columns) | set(r)}
            rows[s.name] = got
            for lk in s.links:
                if lk.via:
                    table, this, that = lk.via
                    pairs[lk.via] = frozenset((str(r.get(this)), str(r.get(that)))
                                              for r in self.rows.get(table, {}).values())
        plan = self.seed.plan
        return Problem(plan.unit, plan.units, self.slots, rows, self.origin if plan.origin else None, self.km,
                       plan.shape == "selection", self.seed.partition.table if plan.origin else None, pairs)


def _constraints(task: dict):
    from envfactory.verifiers.constraints import Constraint

    return [Constraint.from_json(c) for c in task.get("constraints", [])]


def _failures(p, constraints, plan, bound: int | None = None) -> int:
    """Requirements a plan breaks (a check that cannot run on the discovered rows counts as broken).
    With `bound`, counting stops once it reaches `bound`: the answer is exact below it and some
    number >= bound otherwise (all a search that keeps the best so far needs)."""
    from envfactory.verifiers import structure
    from envfactory.verifiers.constraints import get_kind

    bad = len(structure.problems(p, plan))
    if p.unordered and len({ids[0] for ids in plan}) < len(plan):
        bad += 1
    rows = p.plan_rows(plan)
    for c in constraints:
        if bound is not None and bad >= bound:
            return bad
        try:
            ok = get_kind(c.kind).check(rows, c.params, p.ctx())[0]
        except Exception:  # noqa: BLE001  (missing columns, odd values: broken, never fatal)
            ok = False
        bad += not ok
    return bad


class _Baseline:
    name = "baseline"

    def __init__(self, max_calls: int = MAX_EXPLORE_CALLS):
        self.max_calls = max_calls

    def solve(self, task: dict, episode, rng: random.Random) -> Attempt:
        from envfactory.verifiers import structure

        ex = Explorer(task, episode, self.max_calls)
        constraints = _constraints(task)
        ex.explore(any(c.kind == "distance" for c in constraints))
        p = ex.problem()
        options = structure.unit_options(p)
        if not options:
            return Attempt({p.key: []}, ex.calls, note="no structural option discovered")
        plan = self.plan(p, constraints, options, rng)
        if plan is None:
            return Attempt({p.key: []}, ex.calls, note="no structural plan discovered")
        return Attempt(p.plan_dict(plan), ex.calls)


def _random_plan(p, options, rng: random.Random, tries: int = 50):
    from envfactory.verifiers import structure

    after = structure.Successors(p, options).after
    for _ in range(tries):
        plan, prev, ok = [], None, True
        for _u in range(p.units):
            cands = after(prev)
            if p.unordered:
                cands = [o for o in cands if o[0][0] not in {ids[0] for ids in plan}]
            if not cands:
                ok = False
                break
            prev = rng.choice(cands)
            plan.append(prev[0])
        if ok:
            return tuple(plan)
    return None


class RandomSolver(_Baseline):
    name = "random"

    def plan(self, p, constraints, options, rng):
        return _random_plan(p, options, rng)


class GreedySolver(_Baseline):
    """Cheapest-first construction with per-unit checks, then one-unit local repair."""
    name = "greedy"

    def plan(self, p, constraints, options, rng):
        from envfactory.verifiers import structure
        from envfactory.verifiers.constraints import get_kind

        succ = structure.Successors(p, options)
        locals_ = [(get_kind(c.kind).local, c.params) for c in constraints if get_kind(c.kind).local]

        def fits(u, o):
            try:
                return all(fn(u, o[1], prm) for fn, prm in locals_)
            except Exception:  # noqa: BLE001
                return False

        plan, prev = [], None
        for u in range(p.units):
            cands = succ.after(prev)
            if p.unordered:
                cands = [o for o in cands if o[0][0] not in {ids[0] for ids in plan}]
            if not cands:
                return _random_plan(p, options, rng)
            good = [o for o in cands if fits(u, o)] or cands
            used = {x for ids in plan for x in ids}
            fresh = [o for o in good if not used & set(o[0])] or good  # prefer unused entities
            prev = fresh[0]
            plan.append(prev[0])
        return self._repair(p, constraints, tuple(plan), succ, rng)

    def _repair(self, p, constraints, plan, succ, rng):
        from envfactory.verifiers import structure

        by_ids = {o[0]: o for o in succ.options}
        score = _failures(p, constraints, plan)
        for _ in range(REPAIR_ROUNDS):
            if score == 0:
                break
            best = (score, None)
            units = list(range(p.units))
            rng.shuffle(units)
            for u in units:
                prev = by_ids.get(plan[u - 1]) if u else None
                cands = succ.after(prev)[:REPAIR_OPTIONS]
                for o in cands:
                    if o[0] == plan[u]:
                        continue
                    new = plan[:u] + (o[0],) + plan[u + 1:]
                    if u + 1 < p.units and not structure.follows(p, o, by_ids.get(plan[u + 1], (plan[u + 1], {}, 0))):
                        continue
                    s = _failures(p, constraints, new, best[0])
                    if s < best[0]:
                        best = (s, new)
            if best[1] is None:
                break  # a local optimum
            score, plan = best
        return plan


class ModelSolver:
    """A chat model with the task's messages and tools; its final reply is the answer."""
    name = "openai"

    def __init__(self, spec, max_steps: int = 24):
        from envfactory.factory.agents.chat import ChatClient, ChatConfig

        opts = dict(spec.options)
        self.max_steps = int(opts.pop("max_steps", max_steps))
        for key in ("rounds", "attempts", "base_attempts", "tool_attempts"):  # the proposing agent's, not chat's
            opts.pop(key, None)
        self.client = ChatClient(ChatConfig(spec.base_url, spec.model, spec.api_key, **opts))

    def solve(self, task: dict, episode, rng: random.Random) -> Attempt:
        from envfactory.factory.agents.chat import ChatError, Conversation, run_tools

        tools = [episode.env.schemas[n] for n in (task.get("tools") or episode.tool_names) if n in episode.env.schemas]

        def conversation():
            conv = Conversation()
            for m in task["messages"]:
                conv.messages.append(dict(m))
            return conv

        try:
            run = run_tools(self.client, conversation, tools, episode.call, self.max_steps)
        except ChatError as e:
            return Attempt("", len(episode.calls), note=f"model server: {e}")
        return Attempt(run.final, run.tool_calls, run.usage.total, note="" if run.finished else "step limit",
                       errors=run.errors[:5])

    def close(self) -> None:
        self.client.close()


def make_solver(kind: str, spec=None):
    if kind == "random":
        return RandomSolver()
    if kind == "greedy":
        return GreedySolver()
    if kind in ("openai", "dsa"):  # dsa: the local model behind the same chat runtime
        return ModelSolver(spec)
    raise ValueError(f"unknown solver {kind!r} (solvers: {', '.join(SOLVERS)})")
