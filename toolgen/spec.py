"""Tool definitions: what a generated tool reads and returns, before it becomes code.

Three shapes, all read-only over the sandbox:
- `list`/`search`: rows of a table filtered by equality on zero or more columns;
- `details`: one row by key, exposing columns no list/search tool shows (added by the
  difficulty ladder when a constraint needs them);
- `relation`: one row of a pair relation (the `distances` table) by its two ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from envfactory.verifiers.constraints.base import plural

__all__ = ["ToolDef", "from_seed", "details_tool", "distance_tool", "singular", "covers"]

DUCK_TO_PY = {"VARCHAR": "str", "INTEGER": "int", "DOUBLE": "float", "BOOLEAN": "bool"}


@dataclass(frozen=True)
class ToolDef:
    name: str
    table: str
    description: str
    filters: tuple[str, ...] = ()
    returns: tuple[str, ...] = ()
    order_by: str | None = None
    shape: str = "search"           # search | details | relation
    exclude_ids: tuple[str, ...] = ()  # ids hidden from list results (the origin)
    types: dict[str, str] = field(default_factory=dict)  # column -> DuckDB type
    key: str = ""
    param_docs: dict[str, str] = field(default_factory=dict)
    written: str | None = None      # a model-written body (toolgen.written), checked in the sandbox before use

    def with_returns(self, extra: list[str]) -> "ToolDef":
        cols = tuple(dict.fromkeys([*self.returns, *extra]))
        return replace(self, returns=cols)


def singular(table: str) -> str:
    if table.endswith("ies"):
        return table[:-3] + "y"
    return table[:-1] if table.endswith("s") else table


def from_seed(seed, origin_id: str | None) -> list[ToolDef]:
    out = []
    anchor = seed.partition.table  # the origin is a row of the partition table: never listed
    for t in seed.tools:
        types = seed.table_columns(t.table)
        key = seed.table_key(t.table)
        docs = {f: _param_doc(f, seed) for f in t.filters}
        out.append(ToolDef(t.name, t.table, t.description, tuple(t.filters), tuple(t.returns), t.order_by, "search",
                           (origin_id,) if (t.table == anchor and origin_id) else (), types, key, docs))
    return out


def _param_doc(col: str, seed) -> str:
    for s in seed.plan.slots:
        for lk in seed.slot_links(s):
            if lk.column != col:
                continue
            slot, target = lk.target
            if lk.previous:
                return (f"The previous {seed.plan.unit}'s {slot} {target.replace('_', ' ')}"
                        + (" (for the first, the origin's id)." if seed.plan.origin else "."))
            if target == seed.table_key(seed.plan.slot(slot).table):
                return f"Id of the {slot} (from the {slot} list)."
            return f"The {slot}'s {target.replace('_', ' ')}."
    return f"Value of {col.replace('_', ' ')} to match exactly."


def details_tool(seed, table: str, columns: list[str], slot_name: str | None = None) -> ToolDef:
    noun = slot_name or singular(table)
    key = seed.table_key(table)
    types = seed.table_columns(table)
    base = [key] + (["name"] if "name" in types else [])
    return ToolDef(f"get_{noun}_details", table, f"Get the details of one {noun} by its id.", (key,),
                   tuple(dict.fromkeys(base + list(columns))), None, "details", (), types, key,
                   {key: f"The {noun}'s id."})


def distance_tool(anchor_name: str) -> ToolDef:
    types = {"from_id": "VARCHAR", "to_id": "VARCHAR", "km": "DOUBLE"}
    return ToolDef("get_distance", "distances", f"Great-circle distance in km between two {plural(anchor_name)}.",
                   ("from_id", "to_id"), ("from_id", "to_id", "km"), None, "relation", (), types, "",
                   {"from_id": f"Id of the first {anchor_name}.", "to_id": f"Id of the second {anchor_name}."})


def covers(tools: list[ToolDef], table: str, column: str | None) -> bool:
    """Whether some tool exposes `table.column` (or the relation `table`)."""
    return any(t.table == table and (column is None or column in t.returns) for t in tools)
