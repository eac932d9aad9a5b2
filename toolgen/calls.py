"""What a level's tools must be, and which calls reveal a plan's facts.

- `extend_tools(p, tools, constraints, seed)`: the toolset a level needs. A constraint that
  reads a column no tool returns gets a details tool on that table (or the existing one
  returns one more column); a distance constraint gets the distance tool.
- `reference_calls(p, tools, constraints, plan)`: the distinct calls that reveal every fact
  the plan's checks use: each slot's finder (the search filtered by its link columns), a
  details call for each needed column the finder does not return, a relation table's rows
  for each link through one, and the distances between consecutive stops. The ladder sets
  a level's minimum tool calls from it.
"""

from __future__ import annotations

from envfactory.toolgen.spec import ToolDef, covers, details_tool, distance_tool
from envfactory.verifiers.constraints import Constraint, get_kind
from envfactory.verifiers.problem import Plan, Problem

__all__ = ["extend_tools", "reference_calls"]


def extend_tools(p: Problem, tools: list[ToolDef], constraints: list[Constraint], seed) -> tuple[list[ToolDef], list[str]]:
    tools, added = list(tools), []
    for c in constraints:
        for need in get_kind(c.kind).needs(c, p):
            if covers(tools, need.table, need.column):
                continue
            if need.column is None:
                tools.append(distance_tool(p.anchor.name))
                added.append("get_distance")
                continue
            slot = next((s.name for s in p.slots if s.table == need.table), None)
            old = next((t for t in tools if t.table == need.table and t.shape == "details"), None)
            if old is None:
                tools.append(details_tool(seed, need.table, [need.column], slot))
                added.append(tools[-1].name)
            else:
                tools[tools.index(old)] = old.with_returns([need.column])
                added.append(f"{old.name}+{need.column}")
    return tools, added


def _finder(tools: list[ToolDef], s) -> ToolDef | None:
    """The tool that lists a slot's candidates: a search on its table filtered by exactly the
    slot's link columns (known from the linked slot), else one filtered by some of them,
    else an unfiltered list of the table."""
    links = {lk.column for lk in s.links}
    mine = [t for t in tools if t.table == s.table and t.shape == "search"]
    for ok in (lambda t: set(t.filters) == links and links, lambda t: t.filters and set(t.filters) <= links,
               lambda t: not t.filters):
        hit = next((t for t in mine if ok(t)), None)
        if hit:
            return hit
    return None


def _revealing(tools: list[ToolDef], s, column: str, row: dict, eid: str) -> tuple[str, dict]:
    """A call that shows `column` of this row: the table's details tool, else any tool that
    returns the column and whose filters the row's own values fill."""
    det = next((t for t in tools if t.table == s.table and t.shape == "details"), None)
    if det is not None and column in det.returns:
        return det.name, {det.filters[0]: eid}
    other = next(t for t in tools if t.table == s.table and column in t.returns and set(t.filters) <= set(row))
    return other.name, {f: row[f] for f in other.filters}


def _relation_call(tools: list[ToolDef], lk, value) -> tuple[str, dict]:
    """The call that lists a link's relation rows for a known linked value: a search on the
    relation table filtered by its `that` column, else an unfiltered list of it (the seed
    checker makes sure one exists)."""
    table, _, that = lk.via
    mine = [t for t in tools if t.table == table and t.shape == "search"]
    hit = next((t for t in mine if tuple(t.filters) == (that,)), None)
    if hit:
        return hit.name, {that: value}
    hit = next(t for t in mine if not t.filters)
    return hit.name, {}


def reference_calls(p: Problem, tools: list[ToolDef], constraints: list[Constraint], plan: Plan) -> list[tuple[str, dict]]:
    """The distinct tool calls that reveal every fact the reference plan's checks use."""
    calls: list[tuple[str, dict]] = []

    def add(name, args):
        if (name, args) not in calls:
            calls.append((name, args))

    needs = [n for c in constraints for n in get_kind(c.kind).needs(c, p)]
    every = p.plan_rows(plan)
    for u, rows in enumerate(every):
        for i, s in enumerate(p.slots):
            row = rows[s.name]
            search = _finder(tools, s)
            if search:
                add(search.name, {f: row[f] for f in search.filters})
            for n in needs:
                if n.table == s.table and n.column and not (search and n.column in search.returns):
                    add(*_revealing(tools, s, n.column, row, plan[u][i]))
            for lk in (lk for lk in s.links if lk.via):  # the relation rows pairing it with the linked value
                if not lk.previous:
                    add(*_relation_call(tools, lk, rows[lk.slot][lk.target]))
                elif u:
                    add(*_relation_call(tools, lk, every[u - 1][lk.slot][lk.target]))
                elif p.origin_id is not None:
                    add(*_relation_call(tools, lk, p.origin_id))
    if any(n.column is None for n in needs):
        dist = next(t for t in tools if t.shape == "relation")
        stops = [ids[0] for ids in plan]
        legs = list(zip(stops, stops[1:]))
        if p.origin_id is not None:
            legs.insert(0, (p.origin_id, stops[0]))
        for a, b in legs:
            if a != b:
                add(dist.name, {"from_id": a, "to_id": b})
    return calls
