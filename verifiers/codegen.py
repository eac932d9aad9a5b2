"""Verifier code generation: a self-contained `verify(answer, db)` module per task.

The module embeds the task's constraints as data and inlines the check function of each
constraint kind it uses (`verifiers.constraints.base.check_source`), so the generated code
and the library mean the same thing, and a bundle needs no factory install to score.
"""

from __future__ import annotations

import inspect
import json
from functools import lru_cache
from pathlib import Path

import jinja2

from envfactory.verifiers.constraints import Constraint, check_source
from envfactory.verifiers.problem import Problem, scaled

__all__ = ["render_verifier", "load_verifier"]

TEMPLATES = Path(__file__).parent / "templates"


@lru_cache(maxsize=1)
def _template() -> jinja2.Template:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(TEMPLATES), keep_trailing_newline=True,
                             undefined=jinja2.StrictUndefined)
    env.filters["pyrepr"] = repr
    return env.get_template("verifier.py.j2")


def render_verifier(task_id: str, seed_name: str, level: int, p: Problem, constraints: list[Constraint]) -> str:
    kinds = sorted({c.kind for c in constraints})
    slots = [{"name": s.name, "table": s.table, "key": s.key, "columns": list(s.columns),
              "links": [{"column": lk.column, "slot": lk.slot, "target": lk.target, "previous": lk.previous,
                         "via": list(lk.via) if lk.via else None}
                        for lk in s.links]}
             for s in p.slots]
    scaled_src = inspect.getsource(scaled).replace("def scaled(", "def _scaled(", 1)
    return _template().render(
        task_id=task_id, seed_name=seed_name, level=level, unit_key=p.key, units=p.units, slots=slots,
        anchor=p.anchor.name, origin=p.origin_id, origin_table=p.origin_table,
        constraints_json=json.dumps([c.to_json() for c in constraints], sort_keys=True),
        scaled_source=scaled_src, check_sources=[check_source(k) for k in kinds], kinds=kinds)


def load_verifier(path: str | Path):
    """Import a generated verifier module from its file (trusted, in-process)."""
    from envfactory.sandboxes.loader import import_file

    return import_file(path, "_verifier")
