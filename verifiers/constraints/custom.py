"""check: a requirement the other kinds cannot express, written as one Python expression.

`{scope, expr, text}`: with scope "unit", `expr` must hold for every unit, with `unit` bound
to that unit's chosen rows (`unit["hotel"]["rating"]`); with scope "plan", it must hold once,
with `units` bound to the list of every unit's rows. `text` states the requirement in words
(the prompt shows it). A model agent may propose one; it is accepted only as an expression
of a small safe subset, checked before any evaluation: literals, names bound here, `[...]`
subscripts, arithmetic without powers, comparisons, `and`/`or`/`not`, conditional
expressions, comprehensions, and the functions len, sum, min, max, abs, all, any, round,
sorted and set. No attribute access, no other calls, no lambdas: it reads the rows and
nothing else. Evaluation catches nothing: a check that raises on real plans makes the
ladder refuse the move (`factory.ladder.CHECK_ERRORS`).

The DFS counter evaluates it like any kind (`local` for unit scope). CP-SAT encodes a unit
scope check as a nogood per failing unit option; a plan scope check has no CP-SAT encoding,
so for it the counter (exact) is the only judge and `confirm` proves the rest.
"""

from __future__ import annotations

import ast

from envfactory.verifiers.constraints.base import Need, register

SCHEMA = {"required": ["scope", "expr", "text"], "properties": {
    "scope": {"enum": ["unit", "plan"]}, "expr": {"type": "string", "minLength": 1, "maxLength": 600},
    "text": {"type": "string", "minLength": 8, "maxLength": 300}}}


def check(units, params, ctx, _compiled={}):
    """The expression over each unit (scope "unit") or over all units (scope "plan"); the
    expression is re-checked against the safe subset before its first evaluation (`units`
    None: only that)."""
    expr = params["expr"]
    code = _compiled.get(expr)
    if code is None:
        import ast as _ast

        calls = {"len": len, "sum": sum, "min": min, "max": max, "abs": abs, "all": all, "any": any,
                 "round": round, "sorted": sorted, "set": set}
        ok = (_ast.Expression, _ast.BoolOp, _ast.And, _ast.Or, _ast.UnaryOp, _ast.Not, _ast.USub, _ast.UAdd,
              _ast.BinOp, _ast.Add, _ast.Sub, _ast.Mult, _ast.Div, _ast.FloorDiv, _ast.Mod, _ast.Compare, _ast.Eq,
              _ast.NotEq, _ast.Lt, _ast.LtE, _ast.Gt, _ast.GtE, _ast.In, _ast.NotIn, _ast.Name, _ast.Load,
              _ast.Store, _ast.Constant, _ast.Subscript, _ast.List, _ast.Tuple, _ast.Set, _ast.Call,
              _ast.IfExp, _ast.GeneratorExp, _ast.ListComp, _ast.SetComp, _ast.comprehension)
        tree = _ast.parse(expr, mode="eval")
        nodes = list(_ast.walk(tree))
        if len(nodes) > 300:
            raise ValueError("check expression too long")
        bound = {"unit", "units"} | set(calls)
        bound |= {n.id for n in nodes if isinstance(n, _ast.Name) and isinstance(n.ctx, _ast.Store)}
        for n in nodes:
            if not isinstance(n, ok):
                raise ValueError(f"check expression: {type(n).__name__} is not allowed")
            if isinstance(n, _ast.Name) and n.id not in bound:
                raise ValueError(f"check expression: unknown name {n.id!r}")
            if isinstance(n, _ast.Call) and (not isinstance(n.func, _ast.Name) or n.func.id not in calls
                                             or n.keywords):
                raise ValueError("check expression: only len, sum, min, max, abs, all, any, round, sorted, set")
            if isinstance(n, _ast.BinOp) and isinstance(n.op, _ast.Mult) and any(
                    isinstance(x, _ast.BinOp) and isinstance(x.op, _ast.Mult) for x in (n.left, n.right)):
                raise ValueError("check expression: no products of products")
            if isinstance(n, _ast.Constant) and isinstance(n.value, (int, float)) and abs(n.value) > 10 ** 9:
                raise ValueError("check expression: a number too large")
            if isinstance(n, _ast.comprehension) and not (isinstance(n.iter, _ast.Name) and n.iter.id == "units"):
                raise ValueError("check expression: comprehensions iterate over units only")
        if sum(isinstance(n, _ast.comprehension) for n in nodes) > 2:
            raise ValueError("check expression: at most two comprehension loops")
        code = _compiled[expr] = (compile(tree, "<check>", "eval"), calls)
    if units is None:
        return True, "compiled"
    fn, calls = code
    env = {"__builtins__": {}, **calls}
    rows = list(units)
    if params["scope"] == "plan":
        passed = bool(eval(fn, env, {"units": rows}))  # noqa: S307  (a checked expression, no builtins)
        return passed, ("holds" if passed else "fails") + f": {params['text']}"
    for i, u in enumerate(rows):
        if not eval(fn, env, {"unit": u}):  # noqa: S307
            return False, f"unit {i + 1} fails: {params['text']}"
    return True, f"every unit: {params['text']}"


def local(u, unit_rows, params):
    return params["scope"] != "unit" or check([unit_rows], params, None)[0]


def encode(m, x, c, p):
    """Unit scope: forbid, in every unit, each unit option the expression rejects."""
    if c.params["scope"] != "unit":
        return
    from envfactory.verifiers.structure import unit_options

    for ids, rows, _cost in unit_options(p):
        if not check([rows], c.params, None)[0]:
            for u in range(p.units):
                m.add_bool_or([x.x[u][s.name][e].Not() for s, e in zip(p.slots, ids)])


def describe(c, p):
    return c.params["text"].rstrip(".") + "."


def _reads(expr: str) -> set[tuple[str, str]]:
    """(slot, column) pairs the expression reads as `...["slot"]["column"]`."""
    out = set()
    for n in ast.walk(ast.parse(expr, mode="eval")):
        if (isinstance(n, ast.Subscript) and isinstance(n.slice, ast.Constant) and isinstance(n.value, ast.Subscript)
                and isinstance(n.value.slice, ast.Constant)):
            out.add((str(n.value.slice.value), str(n.slice.value)))
    return out


def needs(c, p):
    names = {s.name: s for s in p.slots}
    return [Need(names[s].table, col) for s, col in sorted(_reads(c.params["expr"])) if s in names and col != "_id"]


def _numeric(n, p) -> bool:
    """Whether an expression is surely a number (from the columns' types): products take only
    numbers, so no expression can build a huge string or list."""
    if isinstance(n, ast.Constant):
        return isinstance(n.value, (int, float)) and not isinstance(n.value, bool)
    if isinstance(n, ast.Subscript) and isinstance(n.slice, ast.Constant) and isinstance(n.value, ast.Subscript) \
            and isinstance(n.value.slice, ast.Constant):
        slot = next((s for s in p.slots if s.name == n.value.slice.value), None)
        return slot is not None and slot.columns.get(n.slice.value) in ("INTEGER", "DOUBLE")
    if isinstance(n, ast.Call) and isinstance(n.func, ast.Name):
        return n.func.id in ("len", "sum", "abs", "round") or (n.func.id in ("min", "max")
                                                              and all(_numeric(a, p) for a in n.args))
    if isinstance(n, ast.BinOp):
        return _numeric(n.left, p) and _numeric(n.right, p)
    if isinstance(n, ast.UnaryOp):
        return not isinstance(n.op, ast.Not) and _numeric(n.operand, p)
    return False


def refine(params, p):
    """Safe to evaluate, and reading only real slots and columns."""
    try:
        check(None, params, None)  # validates and compiles, evaluates nothing
    except SyntaxError as e:
        return f"expr is not a Python expression: {e.msg}"
    except ValueError as e:
        return str(e)
    for n in ast.walk(ast.parse(params["expr"], mode="eval")):
        if isinstance(n, ast.BinOp) and isinstance(n.op, ast.Mult) and not (_numeric(n.left, p)
                                                                          and _numeric(n.right, p)):
            return "expr multiplies something that is not a number"
    names = {s.name: s for s in p.slots}
    reads = _reads(params["expr"])
    if not reads:
        return 'expr reads no column: write unit["slot"]["column"]'
    for s, col in sorted(reads):
        if s not in names:
            return f"expr reads slot {s!r}; the slots are {', '.join(names)}"
        if col != "_id" and col not in names[s].columns:
            return f"expr reads {s}.{col}, not a column of {names[s].table}"
    return None


def propose(item, p, current, reference, rng, opts):
    return []  # written by a model agent, never by the specialist


register("check", check=check, encode=encode, describe=describe, needs=needs, propose=propose, local=local,
         schema=SCHEMA, refine=refine)
