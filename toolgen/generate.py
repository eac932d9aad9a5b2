"""Tool generation: ToolDefs -> `tools/tools.py` (jinja2) + `tools/tool_schemas.json`.

Generated tools are then executed (`check_tools`): a tool is rejected if it raises, returns
something that is not JSON, returns an error on a call that should succeed, or returns more
than the size cap.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import jinja2

from envfactory.toolgen.schema import openai_tool
from envfactory.toolgen.spec import DUCK_TO_PY, ToolDef, singular

__all__ = ["render_tools", "load_tools", "tool_schemas", "check_tools", "ToolCheckError", "MAX_RESULT_CHARS"]

MAX_RESULT_CHARS = 4000
QUERY_TIMEOUT_S = 2.0


class ToolCheckError(RuntimeError):
    pass


@lru_cache(maxsize=1)
def _template() -> jinja2.Template:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"),
                             keep_trailing_newline=True, undefined=jinja2.StrictUndefined)
    return env.get_template("tools.py.j2")


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lit(v: str) -> str:
    return "'" + v.replace("'", "''") + "'"


def _sql(t: ToolDef) -> str:
    cols = ", ".join(_q(c) for c in t.returns)
    where = [f"{_q(f)} = ?" for f in t.filters]
    if t.exclude_ids:
        where.append(f"{_q(t.key)} NOT IN ({', '.join(_lit(i) for i in t.exclude_ids)})")
    sql = f"SELECT {cols} FROM {_q(t.table)}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    order = [c for c in (t.order_by, t.key) if c]
    if order:
        sql += " ORDER BY " + ", ".join(_q(c) for c in dict.fromkeys(order))
    return sql


def render_tools(tools: list[ToolDef], env_id: str, seed_name: str) -> str:
    views = []
    for t in tools:
        views.append({"name": t.name, "description": t.description, "filters": t.filters, "returns": t.returns,
                      "types": t.types, "param_docs": t.param_docs, "shape": t.shape, "sql": _sql(t),
                      "noun": singular(t.table), "table": t.table,
                      "written": t.written.replace(f"def {t.name}(", f"def _written_{t.name}(", 1) if t.written else None})
    return _template().render(tools=views, env_id=env_id, seed_name=seed_name, py=DUCK_TO_PY,
                              any_written=any(v["written"] for v in views),
                              timeout_s=QUERY_TIMEOUT_S, max_chars=MAX_RESULT_CHARS)


def load_tools(path: str | Path, db_path: str | Path):
    """Import a generated tools module bound to `db_path` (trusted, in-process)."""
    from envfactory.sandboxes.loader import import_file

    mod = import_file(path, "_tools")
    mod.DB_PATH = str(db_path)
    return mod


def tool_schemas(mod) -> list[dict]:
    return [openai_tool(fn) for fn in mod.TOOLS.values()]


def check_tools(mod, calls: list[tuple[str, dict]], checked: frozenset[str] = frozenset()) -> dict[str, int]:
    """Run every call; each must return JSON results under the cap. Returns calls per tool.
    Tools in `checked` (model-written bodies, run on their calls in the sandbox already) are
    not called here, on the host."""
    used = {name: 0 for name in mod.TOOLS if name not in checked}
    for name, args in calls:
        if name in checked:
            continue
        out = mod.call(name, args)
        if not isinstance(out, str):
            raise ToolCheckError(f"tool {name} returned {type(out).__name__}, not a JSON string")
        if len(out) > MAX_RESULT_CHARS:
            raise ToolCheckError(f"tool {name}({args}) returned {len(out)} characters, over {MAX_RESULT_CHARS}")
        try:
            data = json.loads(out)
        except ValueError:
            raise ToolCheckError(f"tool {name}({args}) returned non-JSON text") from None
        if "error" in data or not data.get("results"):
            raise ToolCheckError(f"tool {name}({args}) failed: {data.get('error', 'no results')}")
        used[name] += 1
    unused = [n for n, k in used.items() if k == 0]
    if unused:
        raise ToolCheckError(f"tools never exercised: {', '.join(unused)}")
    return used
