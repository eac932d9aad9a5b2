"""Tools written by a model, accepted only after they run in the sandbox on real arguments.

A written tool is one Python function (`def NAME(PARAM: str, ...) -> str`) that may use the
helpers `query(sql, args)` (a read-only DuckDB connection to the environment, each query
interrupted after QUERY_TIMEOUT_S), `respond(rows)` and `error(message)`, and returns JSON
text. Before use it must:

1. parse, and be exactly one top-level function of the agreed name and parameters, with no
   decorators or default values (importing the module then runs nothing but `def`);
2. run in the sandbox (`sandboxes.isolate`: in Docker no network, a read-only root and
   database, memory, process and time limits) on every given argument set, each call
   returning JSON text of at most MAX_RESULT_CHARS characters: {"results": [...]} (at least
   one call with rows, each row carrying the columns the tool must expose) or {"error"};
3. never raise, time out or run out of memory on those calls.

A tool that makes a network call, writes a file, loops forever or answers too much fails
step 2 or 3, and the reason says which. Passing these checks does not prove the code safe on
every input; the sandbox is what contains it when it runs later (validation), and exports
run it like any generated tool.
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from envfactory.toolgen.generate import MAX_RESULT_CHARS

SIMPLE = {"str", "int", "float", "bool"}

__all__ = ["WrittenTool", "Verdict", "static_problem", "check_written_tool", "module_source", "PRELUDE"]

PRELUDE = '''"""A model-written tool, checked in the sandbox before use (toolgen.written)."""
import json
import os
import threading
from pathlib import Path

import duckdb

DB_PATH = None
QUERY_TIMEOUT_S = 2.0
MAX_RESULT_CHARS = {max_chars}
_local = threading.local()


def _db_path():
    return DB_PATH or os.environ.get("FACTORY_DB") or str(Path(__file__).resolve().parent.parent / "db" / "sandbox.duckdb")


def query(sql, args=()):
    con = getattr(_local, "con", None)
    if con is None:
        con = _local.con = duckdb.connect(_db_path(), read_only=True)
    timer = threading.Timer(QUERY_TIMEOUT_S, con.interrupt)
    timer.start()
    try:
        cur = con.execute(sql, list(args))
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, row)) for row in cur.fetchall()]
    finally:
        timer.cancel()


def respond(rows):
    return json.dumps({{"results": rows}}, sort_keys=True, default=str)


def error(message):
    return json.dumps({{"error": str(message)}})


'''

CHECKED = '''

def _checked(fn):
    def run(**kwargs):
        out = fn(**kwargs)
        if not isinstance(out, str):
            raise TypeError(f"the tool returned {{type(out).__name__}}, not JSON text")
        if len(out) > MAX_RESULT_CHARS:
            raise ValueError(f"result too large ({{len(out)}} characters, limit {{MAX_RESULT_CHARS}})")
        json.loads(out)
        return out
    return run


TOOLS = {{{name!r}: _checked({name})}}
TABLES = {{{name!r}: {table!r}}}
'''


@dataclass(frozen=True)
class WrittenTool:
    name: str
    table: str
    params: tuple[str, ...]
    code: str
    description: str = ""


@dataclass
class Verdict:
    ok: bool
    reason: str
    outputs: list = field(default_factory=list)


def static_problem(tool: WrittenTool) -> str | None:
    """Why the code cannot even be loaded safely, or None."""
    try:
        tree = ast.parse(tool.code)
    except SyntaxError as e:
        return f"not valid Python: {e.msg} (line {e.lineno})"
    top = tree.body
    if len(top) != 1 or not isinstance(top[0], ast.FunctionDef):
        return f"the code must be exactly one top-level function `def {tool.name}(...)`, nothing else"
    fn = top[0]
    if fn.name != tool.name:
        return f"the function is named {fn.name!r}, not {tool.name!r}"
    if fn.decorator_list:
        return "no decorators"
    a = fn.args
    if a.defaults or a.kw_defaults and any(d is not None for d in a.kw_defaults) or a.vararg or a.kwarg:
        return "parameters take no defaults, *args or **kwargs"
    for x in a.posonlyargs + a.args + a.kwonlyargs:  # annotations run at `def` time: plain type names only
        if x.annotation is not None and not (isinstance(x.annotation, ast.Name) and x.annotation.id in SIMPLE):
            return f"parameter {x.arg}: annotate with one of {', '.join(sorted(SIMPLE))} or nothing"
    names = tuple(x.arg for x in a.posonlyargs + a.args + a.kwonlyargs)
    if names != tuple(tool.params):
        return f"parameters are ({', '.join(names)}), expected ({', '.join(tool.params)})"
    if fn.returns is not None and not (isinstance(fn.returns, ast.Name) and fn.returns.id == "str"):
        return "the function must return str (JSON text): annotate it `-> str` or not at all"
    return None


def module_source(tool: WrittenTool, max_chars: int = MAX_RESULT_CHARS) -> str:
    return PRELUDE.format(max_chars=max_chars) + tool.code.rstrip() + "\n" + CHECKED.format(name=tool.name,
                                                                                            table=tool.table)


def check_written_tool(tool: WrittenTool, db_path: str | Path, calls: list[dict], columns: list[str],
                       backend: str = "auto", timeout_s: float = 2.0, memory_mb: int = 256) -> Verdict:
    """Run the tool in the sandbox on each `calls` argument set; accept it only if every call
    answers JSON text under the cap, none fails, and some call returns rows carrying `columns`."""
    from envfactory.sandboxes.isolate import Limits, SandboxError, SandboxPool

    why = static_problem(tool)
    if why:
        return Verdict(False, why)
    if not calls:
        return Verdict(False, "no argument sets to try the tool on")
    stage = Path(tempfile.mkdtemp(prefix="envfactory-written-"))
    try:
        root = stage / "root"
        (root / "db").mkdir(parents=True)
        (root / "tools").mkdir()
        shutil.copyfile(db_path, root / "db" / "sandbox.duckdb")
        (root / "tools" / "written.py").write_text(module_source(tool), encoding="utf-8")
        for d, _dirs, files in os.walk(stage):  # readable by the sandbox's user, writable by nobody
            os.chmod(d, 0o755)
            for f in files:
                os.chmod(os.path.join(d, f), 0o444)
        limits = Limits(call_timeout_s=timeout_s, memory_mb=memory_mb, batch_slack_s=5.0)
        try:
            with SandboxPool(root, size=1, backend=backend, limits=limits) as pool:
                resp = pool.run([{"op": "tools", "tools": "tools/written.py", "db": "db/sandbox.duckdb",
                                  "calls": [{"name": tool.name, "arguments": c} for c in calls]}])[0]
        except SandboxError as e:
            return Verdict(False, f"the sandbox could not run it: {e}")
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    outputs, with_rows = [], False
    for c, r in zip(calls, resp.get("results") or []):
        if "error" in r:
            return Verdict(False, f"call {json.dumps(c)} failed in the sandbox: {r['error']}", outputs)
        try:
            out = json.loads(r["ok"])
        except (TypeError, ValueError, KeyError):
            return Verdict(False, f"call {json.dumps(c)} did not answer JSON text", outputs)
        outputs.append(out)
        if not isinstance(out, dict) or not ({"results"} == set(out) or {"error"} == set(out)):
            return Verdict(False, f"call {json.dumps(c)} answered {str(out)[:120]}: expected "
                                  '{"results": [...]} or {"error": "..."}', outputs)
        rows = out.get("results") or []
        if rows and isinstance(rows, list) and all(isinstance(x, dict) and set(columns) <= set(x) for x in rows):
            with_rows = True
    if not with_rows:
        return Verdict(False, f"no call returned rows with {', '.join(columns)}", outputs)
    return Verdict(True, f"ran on {len(calls)} argument sets in the {pool.backend} sandbox", outputs)
