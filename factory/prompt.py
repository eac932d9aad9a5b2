"""Task prompts: the seed's introduction, the plan's structure, every constraint, the answer shape."""

from __future__ import annotations

import json

from envfactory.factory.region import Region
from envfactory.verifiers.constraints import Constraint, get_kind
from envfactory.verifiers.problem import Problem

__all__ = ["task_prompt", "SYSTEM_PROMPT"]

SYSTEM_PROMPT = ("You are a planning agent. Use the tools to look up entities and their facts; "
                 "cite entities only by the ids the tools return. Reply with the final plan as JSON only.")


def _shape(p: Problem) -> str:
    unit = {s.name: f"<{s.name} id>" for s in p.slots}
    return json.dumps({p.key: [unit, "..."]})


def task_prompt(intro: str, region: Region, p: Problem, constraints: list[Constraint]) -> str:
    head = intro.format(units=p.units, origin=region.origin_name, country=region.country_name)
    linked = [s.name for s in p.slots if s.link]
    rules = []
    if linked:
        rules.append(f"Every {', '.join(linked)} chosen for a {p.unit} must be in that {p.unit}'s {p.anchor.name}.")
    rules += [get_kind(c.kind).describe(c, p) for c in constraints]
    body = "\n".join(f"{i}. {r}" for i, r in enumerate(rules, 1))
    return (f"{head}\n\nRequirements:\n{body}\n\n"
            f"Prices are in US dollars. Answer with JSON only, exactly {p.units} entries in order:\n{_shape(p)}")
