"""The agent's first decision: which of the seed's tables an environment loads, and which
columns its tasks may use.

A seed's catalog is every table its sources declare. Some are required by the plan and
cannot be left out: the slots' tables, the tables a link goes through, the partition's
table, the tools' tables, and (closing over foreign keys) every table those reference. The
rest are optional: the sandbox loads one only if the agent chooses it (the trip seed's
`airports`). Columns are chosen per table for the constraints: a constraint that reads a
column the agent left out is refused before counting (`Need`s from the kind). The
specialist takes everything; a model agent is shown the catalog (kind, real or synthetic,
columns and types, row counts where the seed's catalog has them, and why a table is
required) and answers with JSON, checked here before use.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["DataChoice", "CatalogTable", "data_catalog", "required_tables", "check_choice", "seed_for",
           "choice_schema", "describe_catalog", "everything"]


@dataclass(frozen=True)
class CatalogTable:
    table: str
    kind: str                        # the source's kind: package, file, inline, html, api, js
    synthetic: bool
    key: str
    columns: dict[str, str]
    rows: int | None                 # whole-table sources only (web sources are fetched per environment)
    required: str | None             # why the plan needs it; None: optional


@dataclass(frozen=True)
class DataChoice:
    tables: tuple[str, ...]
    columns: dict[str, tuple[str, ...]] = field(default_factory=dict)  # table -> usable columns; absent: all
    why: str = ""

    def allows(self, table: str, column: str | None) -> bool:
        return column is None or table not in self.columns or column in self.columns[table]

    def to_json(self) -> dict:
        return {"tables": list(self.tables), "columns": {t: list(c) for t, c in sorted(self.columns.items())},
                **({"why": self.why} if self.why else {})}


def required_tables(seed) -> dict[str, str]:
    """Table -> why the plan cannot do without it."""
    need: dict[str, str] = {}
    for s in seed.plan.slots:
        need.setdefault(s.table, f"the {s.name} slot's table")
        for lk in seed.slot_links(s):
            if lk.via is not None:
                need.setdefault(lk.via.table, f"the {s.name} slot's link goes through it")
    need.setdefault(seed.partition.table, "the partition's table")
    for t in seed.tools:
        need.setdefault(t.table, f"the {t.name} tool's table")
    todo = list(need)
    while todo:  # foreign keys: a loaded table's references must be loaded too
        table = todo.pop()
        for target in seed.table_references(table).values():
            ref = target.split(".", 1)[0]
            if ref not in need:
                need[ref] = f"{table} references it"
                todo.append(ref)
    return need


def data_catalog(seed, cat=None) -> list[CatalogTable]:
    need = required_tables(seed)
    out = []
    for src in seed.sources:
        rows = None
        if cat is not None and cat.has(src.table):
            rows = int(cat.query(f'SELECT count(*) FROM "{src.table}"')[0][0])
        out.append(CatalogTable(src.table, src.kind, bool(src.synthetic), seed.table_key(src.table),
                                seed.table_columns(src.table), rows, need.get(src.table)))
    return out


def describe_catalog(tables: list[CatalogTable]) -> str:
    lines = []
    for t in tables:
        origin = "synthetic listings" if t.synthetic else f"real data ({t.kind})"
        size = f", {t.rows} rows" if t.rows is not None else ", fetched per environment"
        need = f"required: {t.required}" if t.required else "optional"
        cols = ", ".join(f"{c} {ty}" for c, ty in t.columns.items())
        lines.append(f"- table {t.table} ({origin}{size}; {need}); key {t.key}; columns: {cols}")
    return "\n".join(lines)


def choice_schema(tables: list[CatalogTable]) -> dict:
    names = [t.table for t in tables]
    return {"type": "object", "additionalProperties": False, "required": ["tables", "columns"],
            "properties": {
                "tables": {"type": "array", "items": {"enum": names}, "minItems": 1, "maxItems": len(names)},
                "columns": {"type": "object", "additionalProperties": False,
                            "properties": {t.table: {"type": "array", "items": {"enum": list(t.columns)},
                                                     "maxItems": len(t.columns)} for t in tables}},
                "why": {"type": "string", "maxLength": 400}}}


def check_choice(tables: list[CatalogTable], value: dict) -> tuple[DataChoice | None, str]:
    """The choice a reply states, or None and the reason it cannot be used."""
    by = {t.table: t for t in tables}
    chosen = [str(x) for x in value.get("tables") or []]
    unknown = [x for x in chosen if x not in by]
    if unknown:
        return None, f"unknown tables {unknown} (the catalog has {sorted(by)})"
    missing = [f"{t.table} ({t.required})" for t in tables if t.required and t.table not in chosen]
    if missing:
        return None, f"required tables left out: {', '.join(missing)}"
    columns: dict[str, tuple[str, ...]] = {}
    for table, cols in (value.get("columns") or {}).items():
        if table not in by:
            return None, f"columns for an unknown table {table!r}"
        if table not in chosen:
            return None, f"columns for {table}, which is not chosen"
        bad = [c for c in cols if c not in by[table].columns]
        if bad:
            return None, f"{table} has no columns {bad} (it has {list(by[table].columns)})"
        keep = tuple(dict.fromkeys(str(c) for c in cols))
        if not [c for c in keep if c != by[table].key]:
            return None, f"no usable column of {table} besides its key: choose some, or leave {table} out of columns"
        columns[table] = keep
    order = [t.table for t in tables if t.table in chosen]
    return DataChoice(tuple(order), columns, str(value.get("why") or "")[:400]), ""


def everything(tables: list[CatalogTable]) -> DataChoice:
    return DataChoice(tuple(t.table for t in tables))


def seed_for(seed, choice: DataChoice):
    """The seed with only the chosen tables' sources (what one environment's sandbox loads)."""
    if len(choice.tables) == len(seed.sources):
        return seed
    keep = set(choice.tables)
    return seed.model_copy(update={"sources": [s for s in seed.sources if s.table in keep]})
