"""Distillation records: the specialist's decisions, written as the model agent is asked for them.

`DistillingAgent` is the specialist (same decisions, same rng, so the same environments)
that also writes down, for every decision, the conversation a `ModelAgent` would have been
sent at that point (`agents.model`'s prompts: the same problem description, kind catalog,
current constraints and the ladder's verdicts so far) and the answer in the JSON the model
is asked for, with the ladder's verdict when it comes:

    {"decision": "data" | "base" | "move", "level": 0.., "messages": [system, user],
     "schema": {...}, "answer": {...}, "accepted": true | false, "reason": "..."}

Data and level-0 decisions are accepted by construction (the specialist's own counts
passed); a move is accepted when the ladder took it. `python -m envfactory.model.train
distill` fine-tunes on the accepted ones. Turn it on with
`factory generate SEED --agent-option record=DIR` (one `ENV_ID.jsonl` per environment).
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

from envfactory.factory.agents.specialist import SpecialistAgent
from envfactory.verifiers.constraints import Constraint

__all__ = ["DistillingAgent", "read_records"]


def _item(c: Constraint, replaces: bool = False) -> dict:
    out = {"kind": c.kind, "params": c.params}
    if replaces:
        out["replaces"] = c.name
    return out


class DistillingAgent(SpecialistAgent):
    def __init__(self, seed, out_dir: str | Path):
        super().__init__(seed)
        self.out_dir = Path(out_dir)
        self.records: list[dict] = []
        self._pending: list[dict] = []     # moves yielded, waiting for the ladder's verdict
        self._judged: list[dict] = []      # this level's moves with a verdict
        self._verdicts: list[str] = []
        self.data = None
        self._problem = None

    def _record(self, decision: str, level: int, prompt: str, schema: dict, answer: dict,
                accepted: bool | None, reason: str = "") -> dict:
        from envfactory.factory.agents.model import SYSTEM

        rec = {"decision": decision, "level": level,
               "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}],
               "schema": schema, "answer": answer, "accepted": accepted, "reason": reason}
        self.records.append(rec)
        return rec

    def _describe(self, p) -> str:
        from envfactory.factory.agents.model import describe_problem

        if self._problem is None or self._problem[0] is not p:
            self._problem = (p, describe_problem(p, self.data))
        return self._problem[1]

    def choose_data(self, tables: list, rng: random.Random):
        from envfactory.factory.agents.data import choice_schema
        from envfactory.factory.agents.model import data_prompt

        self.data = super().choose_data(tables, rng)
        answer = {"tables": list(self.data.tables), "columns": {},
                  "why": "every table; the seed's constraint pool says which columns its tasks read"}
        self._record("data", 0, data_prompt(self.seed, tables), choice_schema(tables), answer, True)
        return self.data

    def base_task(self, p, rng: random.Random):
        from envfactory.factory.agents.model import base_prompt, constraint_schema, usable_kinds

        cons, res = super().base_task(p, rng)
        kinds = usable_kinds(p, self.seed)
        self._record("base", 0, base_prompt(self._describe(p), kinds, self.cap),
                     constraint_schema(kinds, 1, 5, problem=p, data=self.data),
                     {"constraints": [_item(c) for c in cons]}, True, f"{res.count} plans")
        return cons, res

    def moves(self, p, current, reference, rng: random.Random, level: int):
        from envfactory.factory.agents.model import MOVES_PER_ROUND, constraint_schema, moves_prompt, usable_kinds

        kinds = usable_kinds(p, self.seed)
        schema = constraint_schema(kinds, 1, MOVES_PER_ROUND, "moves", p, self.data)
        self._verdicts, self._judged, self._pending = [], [], []  # verdicts are per level
        have = {c.name: c for c in current}
        for label, new in super().moves(p, current, reference, rng, level):
            changed = [c for c in new if have.get(c.name) != c]
            if len(changed) == 1:  # one constraint added or tightened: what a model move is
                c = changed[0]
                rec = self._record("move", level,
                                   moves_prompt(self._describe(p), kinds, p, current, reference, level,
                                                self._verdicts),
                                   schema, {"moves": [_item(c, c.name in have)]}, None)
                rec["label"] = f"{'tighten' if c.name in have else 'add'} model:{c.kind} {c.name}"
                rec["_move"] = label
                self._pending.append(rec)
            yield label, new

    def feedback(self, move: str, accepted: bool, reason: str) -> None:
        if accepted:
            # the ladder first counts every move ("counted: N of M ...") and then accepts the one
            # it chose ("accepted as level L: N of M ..."): the record counted at that N
            n = re.search(r": (\d+) of \d+ plans remain", reason)
            for rec in reversed(self._judged):
                if rec["_move"] == move and n and rec["reason"].startswith(f"counted: {n[1]} of "):
                    rec["accepted"], rec["reason"] = True, reason
                    return
            for rec in self._pending:  # a seed's preferred move is taken as soon as it bites, uncounted
                if rec["_move"] == move:
                    rec["accepted"], rec["reason"] = True, reason
                    return
            return
        for i, rec in enumerate(self._pending):
            if rec["_move"] == move:
                rec["accepted"], rec["reason"] = False, reason
                self._judged.append(self._pending.pop(i))
                self._verdicts.append(f"{rec['label']}: {reason}")  # what a model would hear next
                return

    def dump(self, env_id: str) -> Path:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        path = self.out_dir / f"{env_id}.jsonl"
        with path.open("w", encoding="utf-8") as f:
            for rec in self.records:
                if rec["accepted"] is None:  # yielded, never judged (the ladder had already moved on)
                    continue
                f.write(json.dumps({k: v for k, v in rec.items() if not k.startswith("_")}, default=str) + "\n")
        return path


def read_records(paths, accepted_only: bool = True) -> list[dict]:
    """Records from `.jsonl` files or directories of them."""
    out = []
    for p in paths:
        p = Path(p)
        for f in sorted(p.glob("*.jsonl")) if p.is_dir() else [p]:
            for line in f.read_text(encoding="utf-8").splitlines():
                rec = json.loads(line)
                if rec.get("accepted") or not accepted_only:
                    out.append(rec)
    return out


# ----------------------------------------------------------------- tool-use trajectories


def solve_records(env_dir: str | Path) -> list[dict]:
    """One tool-use trajectory per task of a built environment, for a model that solves:

        {"decision": "solve", "level": L, "task_id": ..., "tools": [...], "messages": [
            the task's system and user messages,
            one assistant turn per reference tool call, each followed by its tool result,
            the assistant's final answer (the reference answer as compact JSON)],
         "accepted": true}

    The calls are the task's `reference_tool_calls` (what the ladder's reference needed:
    each unit's search, then the distances a route requirement reads), replayed on the
    export runtime a solver talks to, so every result is the text a solver would get. The
    greedy baseline's own episodes are not used: it explores with up to 400 calls before
    it answers, which is neither a trajectory to imitate nor one that fits a small window.
    """
    from envfactory.factory.export.runtime.envfactory_runtime import Runtime

    rt = Runtime(str(env_dir))
    env = rt.env()
    out = []
    for task_id, task in sorted(env.tasks.items(), key=lambda t: t[1]["level"]):
        ep = rt.start(f"distill:{task_id}", task_id)
        try:
            msgs = [dict(m) for m in task["messages"]]
            for i, call in enumerate(task["reference_tool_calls"]):
                result = ep.call(call["name"], call["arguments"])
                cid = f"call_{i}"
                msgs.append({"role": "assistant", "content": "", "tool_calls": [
                    {"id": cid, "type": "function",
                     "function": {"name": call["name"], "arguments": json.dumps(call["arguments"])}}]})
                msgs.append({"role": "tool", "tool_call_id": cid,
                             "content": result if isinstance(result, str) else json.dumps(result)})
            msgs.append({"role": "assistant",
                         "content": json.dumps(task["reference_answer"], separators=(",", ":"))})
        finally:
            rt.release(f"distill:{task_id}")
        tools = [env.schemas[n] for n in (task.get("tools") or ep.tool_names) if n in env.schemas]
        out.append({"decision": "solve", "level": task["level"], "task_id": task_id, "tools": tools,
                    "messages": msgs, "accepted": True})
    return out

