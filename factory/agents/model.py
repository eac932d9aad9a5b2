"""A model agent: an OpenAI-compatible chat model proposes the level-0 task and each
escalation, as JSON constraints from the constraint library.

What the model sees: the plan's shape (units, slots, links), every slot's columns with their
types and the range or a sample of their values in this environment, the constraint kinds
with their JSON Schemas, the current constraints in words, how many plans they admit, and
the ladder's verdict on its earlier proposals. What it answers: a JSON object, asked for
with the server's structured-output mode and then checked here: the shape against the
schema, each constraint with `verifiers.constraints.validate` (columns exist, values cast to
their column types), and for level 0 the plan count (solvable, and countable under the
seed's cap). An unusable reply goes back with the reason, a bounded number of times. The
model never decides whether a move is accepted: the ladder counts and judges.
"""

from __future__ import annotations

import json
import random
import sys
from typing import Iterator

from envfactory.factory.agents.base import AgentError, AgentSpec
from envfactory.factory.ladder import CHECK_ERRORS
from envfactory.factory.agents.chat import ChatClient, ChatConfig, ChatError, Conversation, Usage, decide
from envfactory.verifiers.constraints import KINDS, Constraint, ConstraintError, get_kind, validate
from envfactory.verifiers.count import CountResult, count_plans
from envfactory.verifiers.problem import Plan, Problem
from envfactory.verifiers.solver import pick_reference

__all__ = ["ModelAgent", "constraint_schema", "describe_problem", "usable_kinds", "data_prompt", "base_prompt",
           "moves_prompt", "SYSTEM"]

DECISION_ATTEMPTS = 4    # replies per decision before it counts as failed
BASE_ATTEMPTS = 6        # level 0 gets more: the count feedback (loosen, tighten) usually needs a few rounds
ROUNDS_PER_STEP = 3      # proposal rounds per ladder step (each after the ladder's verdicts)
MOVES_PER_ROUND = 8
SAMPLE_VALUES = 6

SYSTEM = ("You design tasks for planning agents: a task is a set of constraints over a plan, and a harder task "
          "admits fewer plans. You answer with JSON only, meeting the schema you are given.")


def _kind_doc(name: str) -> str:
    mod = sys.modules.get(KINDS[name].check.__module__)
    doc = (mod.__doc__ or name).strip().split("\n\n")[0]
    return " ".join(doc.split())


def constraint_schema(kinds: list[str], min_items: int = 1, max_items: int = MOVES_PER_ROUND,
                      key: str = "constraints", problem: Problem | None = None, data=None) -> dict:
    """{key: [constraint, ...]}: each item one kind's `kind` and its own parameter schema;
    with a problem, that schema grounded in it (`grounded`), so a constrained decoder can
    only name slots and columns that exist. Kinds with nothing to name are left out."""
    items = []
    for k in kinds:
        params = KINDS[k].schema if problem is None else grounded(KINDS[k].schema, problem, data)
        if params is not None:
            items.append({"type": "object", "additionalProperties": False, "required": ["kind", "params"],
                          "properties": {"kind": {"const": k}, "params": params, "replaces": {"type": "string"}}})
    return {"type": "object", "additionalProperties": False, "required": [key],
            "properties": {key: {"type": "array", "minItems": min_items, "maxItems": max_items,
                                 "items": {"anyOf": items}}}}


_NUMERIC = ("INTEGER", "BIGINT", "DOUBLE", "FLOAT", "DECIMAL", "REAL", "SMALLINT", "HUGEINT")


def grounded(schema: dict, p: Problem, data=None) -> dict | None:
    """A kind's parameter schema with its names restricted to this problem's: `slot` and
    `if_slot` to the slots, `column` to the columns of the slot it names (and `if_cost`,
    and the values of cost maps, to its numeric ones), `slots` items to the slots, maps
    keyed by slot to the slots with their columns, `unit` to the plan's units. One anyOf
    branch per slot where a column depends on it. Columns the data choice left out are not
    offered. The property order is the kind's. None when no slot has a column to offer."""
    props = schema.get("properties") or {}
    slots = list(p.slots)

    def cols(sl, numeric: bool = False) -> list[str]:
        return [c for c, t in sl.columns.items() if c != sl.key
                and (data is None or data.allows(sl.table, c))
                and (not numeric or t.split("(")[0].upper() in _NUMERIC)]

    def keyed(sub: dict, numeric: bool) -> dict:
        by = {sl.name: {"enum": c} for sl in slots if (c := cols(sl, numeric))}
        out = {k: v for k, v in sub.items() if k != "additionalProperties"}
        return out | {"type": "object", "properties": by, "additionalProperties": False}

    base = dict(props)
    for k, sub in props.items():
        if k in ("costs", "then_costs", "duration", "opens", "closes") and sub.get("type") == "object":
            base[k] = keyed(sub, numeric=k in ("costs", "then_costs", "duration"))
        elif k == "slots" and sub.get("type") == "array":
            base[k] = dict(sub, items={"enum": [sl.name for sl in slots]})
        elif k == "unit" and sub.get("type") == "integer":
            base[k] = dict(sub, maximum=p.units)
    branches = [base]
    for sk, ck in (("slot", "column"), ("if_slot", "if_cost")):
        if sk not in props:
            continue
        nxt = []
        for b in branches:
            for sl in slots:
                nb = dict(b)
                nb[sk] = {"const": sl.name}
                if ck in props:
                    c = cols(sl, numeric=ck == "if_cost")
                    if not c:
                        continue
                    nullable = "null" in (props[ck].get("type") or [])
                    nb[ck] = {"anyOf": [{"enum": c}, {"type": "null"}]} if nullable else {"enum": c}
                nxt.append(nb)
        branches = nxt
    if not branches:
        return None
    out = [dict(schema, properties=b) for b in branches]
    return out[0] if len(out) == 1 else {"anyOf": out}


def _values(p: Problem, slot: str, col: str, ctype: str) -> str:
    vals = [r[col] for r in p.rows[slot].values() if r.get(col) is not None]
    if not vals:
        return "no values"
    if ctype in ("INTEGER", "DOUBLE"):
        return f"{min(vals)} to {max(vals)}"
    distinct = sorted({str(v) for v in vals})
    more = f", ... ({len(distinct)} distinct)" if len(distinct) > SAMPLE_VALUES else ""
    return ", ".join(json.dumps(v) for v in distinct[:SAMPLE_VALUES]) + more


def describe_problem(p: Problem, data=None) -> str:
    """The plan's structure and data in words and numbers, for the model; with a data choice
    (`agents.data.DataChoice`), only the columns it keeps."""
    shape = (f"a set of {p.units} distinct {p.anchor.name} choices (order does not matter)" if p.unordered
             else f"{p.units} {p.unit}s in order")
    lines = [f"The plan is {shape}; each {p.unit} picks one row per slot."]
    if p.origin_id is not None:
        lines.append(f"The plan starts from the origin {p.origin_id}.")
    if p.cost_slots:
        from envfactory.verifiers.solver import extreme_sum

        costs = {s.name: s.cost for s in p.cost_slots}
        low = extreme_sum(p, [], costs)
        lines.append(f"Priced slots (cost columns, INTEGER): {', '.join(f'{k}.{v}' for k, v in costs.items())}; "
                     f"the cheapest plan costs {low} in total." if low is not None else "No plan exists.")
    for s in p.slots:
        links = "; ".join(
            f"{lk.column} {'pairs through ' + lk.via[0] + ' with' if lk.via else '='} "
            f"{'the previous unit' + chr(39) + 's ' if lk.previous else ''}{lk.slot}.{lk.target}" for lk in s.links)
        lines.append(f"- slot {s.name!r} (table {s.table}, {len(p.rows[s.name])} candidates"
                     + (f"; links: {links}" if links else "") + ")")
        for col, ctype in s.columns.items():
            if col == s.key or (data is not None and not data.allows(s.table, col)):
                continue
            lines.append(f"    {col} ({ctype}): {_values(p, s.name, col, ctype)}")
    return "\n".join(lines)


def _catalog(kinds: list[str]) -> str:
    return "\n".join(f"- {k}: {_kind_doc(k)} Parameters: {json.dumps(KINDS[k].schema['properties'])}" for k in kinds)


def _describe(cons: list[Constraint], p: Problem) -> str:
    if not cons:
        return "(none)"
    return "\n".join(f"- [{c.name}] {get_kind(c.kind).describe(c, p)}" for c in cons)


def usable_kinds(p: Problem, seed) -> list[str]:
    """The constraint kinds that make sense for this problem and seed."""
    out = []
    for k, kind in sorted(KINDS.items()):
        if p.unordered and kind.ordered:
            continue
        if k in ("total_budget", "unit_budget", "conditional_budget") and not p.cost_slots:
            continue
        if k == "schedule" and not seed.ladder.schedule:
            continue
        if k == "distance" and not p.km:
            continue
        out.append(k)
    return out


def data_prompt(seed, tables) -> str:
    from envfactory.factory.agents.data import describe_catalog

    return (f"Task type: {seed.seed.description}\n\nThe data catalog:\n{describe_catalog(tables)}\n\n"
            "Choose the data this environment's tasks will use: the tables to load (every required one, and any "
            "optional one worth having) and, per table, the columns constraints may read (leave a table out of "
            "\"columns\" to allow all of its columns). Prefer columns with many distinct values that a traveller or "
            "planner would care about. Answer as {\"tables\": [...], \"columns\": {\"table\": [...]}, \"why\": \"...\"}.")


def base_prompt(problem: str, kinds: list[str], cap: int) -> str:
    return (f"{problem}\n\nConstraint kinds:\n{_catalog(kinds)}\n\n"
            f"Propose the level-0 task: 1 to 5 constraints that some plans meet (at least 1 and fewer than "
            f"{cap} plans). Answer as {{\"constraints\": [{{\"kind\": ..., \"params\": {{...}}}}]}}.")


def moves_prompt(problem: str, kinds: list[str], p: Problem, current: list[Constraint], reference: Plan,
                 level: int, verdicts: list[str]) -> str:
    heard = ("\n\nThe ladder's verdicts on your earlier proposals for this level:\n"
             + "\n".join(f"- {v}" for v in verdicts[-12:])) if verdicts else ""
    return (f"{problem}\n\nConstraint kinds:\n{_catalog(kinds)}\n\n"
            f"Level {level - 1} has these constraints:\n{_describe(current, p)}\n"
            f"One plan that meets them: {json.dumps(p.plan_dict(reference))}\n{heard}\n\n"
            f"Propose up to {MOVES_PER_ROUND} alternative ways to make level {level}: each one new constraint, "
            f"or a tighter version of an existing one (set \"replaces\" to its [name]). A good move removes "
            f"many plans but not all of them.")


class ModelAgent:
    """Proposals from a chat model; every one checked before the ladder counts it."""

    def __init__(self, seed, spec: AgentSpec):
        opts = dict(spec.options)
        self.seed = seed
        self.cap = seed.ladder.count_cap
        # the agent's own settings; the rest are the chat client's (timeout_s, max_tokens, stream, ...)
        self.attempts = int(opts.pop("attempts", DECISION_ATTEMPTS))
        self.base_attempts = int(opts.pop("base_attempts", BASE_ATTEMPTS))
        self.rounds = int(opts.pop("rounds", ROUNDS_PER_STEP))
        self.tool_attempts = int(opts.pop("tool_attempts", 2))
        self.write_tools = bool(opts.pop("write_tools", True))   # the model writes the tools the ladder adds
        self.tools_written = self.tools_rejected = 0
        try:
            self.client = ChatClient(ChatConfig(spec.base_url, spec.model, spec.api_key, **opts))
        except TypeError as e:
            raise AgentError(f"unknown agent option: {e}") from None
        self.proposals = 0
        self.malformed = 0                # replies that did not parse or meet the decision's schema
        self.rejected: list[str] = []
        self.verdicts: list[str] = []     # the ladder's words on this step's proposals, for the next prompt
        self.usage = Usage()
        self._names = 0
        self._described: dict[int, str] = {}
        self.fallbacks = 0                # decisions the specialist made because the model could not
        self.data = None                  # this environment's data choice (choose_data)
        self.gate = None                  # the validation harness for written checks (`factory.checkgate`)
        self.data_defaults = 0            # data choices the model could not make usably: the whole catalog
        self._fallback = None
        if spec.fallback == "specialist":
            from envfactory.factory.agents.specialist import SpecialistAgent

            self._fallback = SpecialistAgent(seed)

    def _problem(self, p: Problem) -> str:
        if id(p) not in self._described:  # one environment's problem, described once
            self._described = {id(p): describe_problem(p, self.data)}
        return self._described[id(p)]

    # -------------------------------------------------------------- what the model may use

    def _kinds(self, p: Problem) -> list[str]:
        return usable_kinds(p, self.seed)

    def _constraints(self, p: Problem, items: list[dict], current: list[Constraint]) -> tuple[list, list[str]]:
        """Validated constraints from the model's items, and a reason for each refused one."""
        names = {c.name for c in current}
        ok, bad = [], []
        for it in items:
            kind, params = it.get("kind"), it.get("params")
            name = it.get("replaces") if it.get("replaces") in names else None
            if name is None:
                self._names += 1
                name = f"{kind}_{self._names}"
            try:
                c = validate(Constraint(str(kind), name, dict(params or {})), p)
                left = [str(n) for n in get_kind(c.kind).needs(c, p)
                        if self.data is not None and not self.data.allows(n.table, n.column)]
            except (ConstraintError, KeyError, TypeError, ValueError) as e:
                bad.append(f"{kind} {json.dumps(params)[:200]}: {e}")
                continue
            if left:
                bad.append(f"{kind} {json.dumps(params)[:200]}: it reads {', '.join(left)}, which the data choice "
                           "left out")
            else:
                ok.append(c)
        return ok, bad

    def _ask(self, conv: Conversation, schema: dict, check, attempts: int | None = None,
             grammar: dict | None = None) -> object | None:
        try:
            d = decide(self.client, conv, schema, check, attempts=attempts or self.attempts, grammar=grammar)
        except ChatError as e:
            raise AgentError(f"model server: {e}") from None
        self.usage.add(d.usage)
        self.rejected.extend(d.errors)
        self.proposals += len(d.errors)  # each unusable reply was a proposal, refused
        self.malformed += d.malformed    # of those, the ones that were not JSON meeting the schema
        return d.value

    # ---------------------------------------------------------------------------- the data

    def choose_data(self, tables: list, rng: random.Random):
        """The model picks the optional tables to load and the columns tasks may use; an
        unusable choice (after the bounded retries) leaves the whole catalog, counted."""
        from envfactory.factory.agents.data import check_choice, choice_schema, everything

        conv = Conversation().system(SYSTEM).user(data_prompt(self.seed, tables))
        found = {}

        def check(value) -> str | None:
            choice, why = check_choice(tables, value)
            if choice is None:
                return why
            found["choice"] = choice
            return None

        try:
            self._ask(conv, choice_schema(tables), check)
        except AgentError:  # the server, not the reply: the run's problem unless a fallback decides
            if self._fallback is None:
                raise
            self.fallbacks += 1
        self.proposals += 1
        self.data = found.get("choice")
        if self.data is None:
            self.data_defaults += 1
            self.rejected.append("data choice: none usable; the whole catalog is loaded")
            self.data = everything(tables)
        self._described = {}
        return self.data

    # ---------------------------------------------------------------------------- level 0

    def base_task(self, p: Problem, rng: random.Random) -> tuple[list[Constraint], CountResult]:
        try:
            return self._model_base_task(p, rng)
        except AgentError:
            if self._fallback is None:
                raise
            self.fallbacks += 1
            return self._fallback.base_task(p, rng)

    def _model_base_task(self, p: Problem, rng: random.Random) -> tuple[list[Constraint], CountResult]:
        kinds = self._kinds(p)
        conv = Conversation().system(SYSTEM).user(base_prompt(self._problem(p), kinds, self.cap))
        found: dict = {}

        def check(value) -> str | None:
            cons, bad = self._constraints(p, value["constraints"], [])
            if bad:
                return "refused: " + "; ".join(bad)
            try:
                res = count_plans(p, cons, self.cap)
            except CHECK_ERRORS as e:
                return f"these constraints fail on this environment's plans: {type(e).__name__}: {e}"
            if not res.solvable:
                return "no plan meets these constraints together: loosen them"
            if res.capped:
                return f"at least {self.cap} plans meet them: the level-0 task must admit fewer; tighten them"
            checks = [c for c in cons if c.kind == "check"]
            if checks and self.gate is not None:  # the validation harness, before the model hears "accepted"
                why = self.gate(cons, checks, pick_reference(res, random.Random(0)), 0)
                if why:
                    return f"a check fails the validation harness: {why}"
            found["task"] = (cons, res)
            return None

        self._ask(conv, constraint_schema(kinds, 1, 5), check, self.base_attempts,
                  grammar=constraint_schema(kinds, 1, 5, problem=p, data=self.data))
        if "task" in found:
            self.proposals += 1
        else:
            raise AgentError(f"the model proposed no usable level-0 task in {self.base_attempts} replies "
                             f"(last: {self.rejected[-1] if self.rejected else 'none'})")
        return found["task"]

    # -------------------------------------------------------------------------- escalation

    def moves(self, p: Problem, current: list[Constraint], reference: Plan, rng: random.Random,
              level: int) -> Iterator[tuple[str, list[Constraint]]]:
        """The model's moves; with a fallback, the specialist's after them (when the ladder is
        still asking, none of the model's was good enough)."""
        try:
            yield from self._model_moves(p, current, reference, rng, level)
        except AgentError:
            if self._fallback is None:
                raise
        if self._fallback is not None:
            self.fallbacks += 1
            yield from self._fallback.moves(p, current, reference, rng, level)

    def _model_moves(self, p: Problem, current: list[Constraint], reference: Plan, rng: random.Random,
                     level: int) -> Iterator[tuple[str, list[Constraint]]]:
        kinds = self._kinds(p)
        # the server decodes under the grounded schema; replies are judged item by item
        structural = constraint_schema(kinds, 1, MOVES_PER_ROUND, "moves")
        grounded_moves = constraint_schema(kinds, 1, MOVES_PER_ROUND, "moves", p, self.data)
        self.verdicts = []
        offered = 0
        for _ in range(self.rounds):
            conv = Conversation().system(SYSTEM).user(
                moves_prompt(self._problem(p), kinds, p, current, reference, level, self.verdicts))
            value = self._ask(conv, structural, None, grammar=grounded_moves)
            if value is None:
                continue
            self.proposals += len(value["moves"])
            cons, bad = self._constraints(p, value["moves"], current)
            self.rejected.extend(bad)
            self.verdicts.extend(f"refused before counting: {b}" for b in bad)
            for c in cons:
                offered += 1
                replaced = [k for k in current if k.name != c.name]
                verb = "tighten" if len(replaced) < len(current) else "add"
                yield f"{verb} model:{c.kind} {c.name}", replaced + [c]
        if not offered:
            raise AgentError(f"the model proposed no usable move for level {level} in {self.rounds} rounds "
                             f"({len(self.rejected)} proposals rejected; last: "
                             f"{self.rejected[-1] if self.rejected else 'none'})")

    # ------------------------------------------------------------------------ written tools

    def write_tool(self, tool, p: Problem, db_path, calls: list[dict]):
        """The model's code for a tool the ladder needs (a details tool: one row by key with
        the columns a constraint reads), accepted only once it runs in the sandbox on the
        reference's arguments (`toolgen.written`). None if it never passes; the reasons are
        counted as rejections and the generated tool stays."""
        from envfactory.toolgen.written import WrittenTool, check_written_tool, static_problem

        cols = ", ".join(f"{c} ({tool.types.get(c, '?')})" for c in tool.types)
        params = ", ".join(f"{f}: str" if tool.types.get(f) == "VARCHAR" else f"{f}" for f in tool.filters)
        conv = Conversation().system(SYSTEM).user(
            f"Write a Python tool function over a DuckDB table.\nTable {tool.table}: {cols}.\n"
            f"Signature: def {tool.name}({params}) -> str\nPurpose: {tool.description} It must return the row "
            f"whose {tool.key} equals the argument, with the columns {', '.join(tool.returns)}.\n"
            "Use only these helpers: query(sql, args) runs read-only SQL with ? placeholders and returns a list of "
            "dicts; respond(rows) returns the JSON text; error(message) returns an error as JSON text. The code "
            "must be exactly one function definition. Answer as {\"code\": \"def ...\"}.")
        verdict = {}

        def check(value) -> str | None:
            wt = WrittenTool(tool.name, tool.table, tuple(tool.filters), str(value["code"]), tool.description)
            why = static_problem(wt)
            if why:
                return f"refused before running: {why}"
            v = check_written_tool(wt, db_path, calls, list(tool.returns))
            if not v.ok:
                return f"rejected after running in the sandbox: {v.reason}"
            verdict["tool"] = wt
            return None

        schema = {"type": "object", "required": ["code"], "additionalProperties": False,
                  "properties": {"code": {"type": "string", "maxLength": 4000}}}
        self._ask(conv, schema, check, self.tool_attempts)
        wt = verdict.get("tool")
        self.tools_written += wt is not None
        self.proposals += wt is not None
        self.tools_rejected += wt is None
        return wt

    def feedback(self, move: str, accepted: bool, reason: str) -> None:
        # the ladder also judges the fallback's moves; only the model's own count as its rejections
        if not accepted and " model:" in move:
            self.verdicts.append(f"{move}: {reason}")
            if not reason.startswith("counted"):
                self.rejected.append(f"{move}: {reason}")

    def close(self) -> None:
        self.client.close()

    def stats(self) -> dict:
        return {"proposals": self.proposals, "rejected": len(self.rejected), "reasons": self.rejected[:5],
                "fallbacks": self.fallbacks, "malformed": self.malformed,
                "data_defaults": self.data_defaults,
                "tools_written": self.tools_written,
                "tools_rejected": self.tools_rejected,
                "prompt_tokens": self.usage.prompt_tokens, "completion_tokens": self.usage.completion_tokens,
                "requests": self.usage.requests}
