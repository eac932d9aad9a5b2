"""Task prompts: the seed's introduction, the plan's structure, every constraint, the answer shape."""

from __future__ import annotations

import json

from envfactory.verifiers.constraints import Constraint, get_kind
from envfactory.verifiers.constraints.base import article, plural
from envfactory.verifiers.problem import Problem

__all__ = ["task_prompt", "SYSTEM_PROMPT", "intro_fields"]

SYSTEM_PROMPT = ("You are a planning agent. Use the tools to look up entities and their facts; "
                 "cite entities only by the ids the tools return. Reply with the final plan as JSON only.")


def _shape(p: Problem) -> str:
    unit = {s.name: f"<{s.name} id>" for s in p.slots}
    return json.dumps({p.key: [unit, "..."]})


def intro_fields(part, p: Problem) -> dict:
    """What `answer_intro` may name: {units}, {origin}, {country}, {group}, {members}."""
    return {"units": p.units, "origin": part.center_name, "country": part.group_name, "group": part.group_name,
            "members": len(part.members)}


def _via_rule(p: Problem, s, lk, other: str, theirs: str) -> str:
    table, this, that = (x.replace("_", " ") for x in lk.via)
    return (f"Each {p.unit}'s {s.name} must be paired with {other} by a row of {table}: a row whose {this} is "
            f"the {s.name}'s {lk.column.replace('_', ' ')} and whose {that} is {theirs} {lk.target.replace('_', ' ')}.")


def _structure(p: Problem) -> list[str]:
    """The plan's structure in words: links, the chain, a selection's rules."""
    rules = []
    anchor = p.anchor
    for s in p.slots:
        for lk in s.same_unit_links:
            if lk.via:
                rules.append(_via_rule(p, s, lk, f"that {p.unit}'s {lk.slot}", f"the {lk.slot}'s"))
            elif lk.slot == anchor.name and lk.target == anchor.key:
                rules.append(f"Every {s.name} chosen for a {p.unit} must be in that {p.unit}'s {anchor.name}.")
            else:
                col = lk.column.replace('_', ' ')
                rules.append(f"Each {p.unit}'s {s.name} must have {article(col)} {col} equal to the "
                             f"{lk.target.replace('_', ' ')} of that {p.unit}'s {lk.slot}.")
        for lk in s.previous_links:
            start = f" (for the first {p.unit}: {p.origin_id}, the origin)" if p.origin_id is not None else ""
            col = lk.column.replace('_', ' ')
            if lk.via:
                rules.append(_via_rule(p, s, lk, f"the previous {p.unit}'s {lk.slot}{start}",
                                       f"the previous {lk.slot}'s"))
                continue
            rules.append(f"Each {p.unit}'s {s.name} must have {article(col)} {col} equal to the "
                         f"{lk.target.replace('_', ' ')} of the previous {p.unit}'s {lk.slot}{start}.")
    if p.unordered:
        rules.append(f"Choose {p.units} different {plural(anchor.name)}; their order does not matter.")
    return rules


def task_prompt(intro: str, part, p: Problem, constraints: list[Constraint]) -> str:
    head = intro.format(**intro_fields(part, p))
    rules = _structure(p) + [get_kind(c.kind).describe(c, p) for c in constraints]
    body = "\n".join(f"{i}. {r}" for i, r in enumerate(rules, 1))
    order = "in any order" if p.unordered else "in order"
    money = "Prices are in US dollars. " if p.cost_slots else ""
    return (f"{head}\n\nRequirements:\n{body}\n\n"
            f"{money}Answer with JSON only, exactly {p.units} entries {order}:\n{_shape(p)}")
