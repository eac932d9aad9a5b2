"""Cross-field checks of a seed, after its shape has validated.

Each returns the path of the offending field and one message; `load_seed` turns that into
`file:line: field: message`.
"""

from __future__ import annotations

from envfactory.factory.seed import Seed, parse_pool_item

__all__ = ["check_seed"]

COLUMN_KINDS = {"attribute", "aggregate", "distinct_count"}  # entries that name slot.column
SLOT_KINDS = {"all_different", "distance"}


def _sources(seed: Seed):
    from envfactory.sandboxes.package import PACKAGE_TABLES

    for i, s in enumerate(seed.sources):
        if s.kind == "package":
            if s.dataset not in PACKAGE_TABLES:
                return ("sources", i, "dataset"), f"unknown dataset {s.dataset!r} (known: {', '.join(PACKAGE_TABLES)})"
            if s.path:
                return ("sources", i, "path"), "a package source takes no path"
        else:
            if not s.path or "{city_id}" not in s.path or not s.path.startswith("/"):
                return ("sources", i, "path"), "a web source needs a path starting with / and containing {city_id}"
            if s.table not in seed.tables:
                return ("sources", i, "table"), f"no [tables.{s.table}] declares this source's columns"
    return None


def _tables(seed: Seed, known: set[str]):
    for name, t in seed.tables.items():
        if name not in known:
            return ("tables", name), f"table {name!r} has no source"
        if t.key not in t.columns:
            return ("tables", name, "key"), f"key {t.key!r} is not a column"
        for col, target in t.references.items():
            if col not in t.columns:
                return ("tables", name, "references", col), f"{col!r} is not a column of {name}"
            tt, _, tc = target.partition(".")
            if tt not in known or tc not in seed.table_columns(tt):
                return ("tables", name, "references", col), f"reference {target!r} is not a known table.column"
    return None


def _plan(seed: Seed, known: set[str]):
    names = [s.name for s in seed.plan.slots]
    if len(set(names)) != len(names):
        return ("plan", "slots"), "slot names must be unique"
    for i, s in enumerate(seed.plan.slots):
        if s.table not in known:
            return ("plan", "slots", i, "table"), f"unknown table {s.table!r} (tables: {', '.join(sorted(known))})"
        cols = seed.table_columns(s.table)
        if i == 0 and s.link:
            return ("plan", "slots", i, "link"), "the first slot is the anchor and takes no link"
        if i > 0 and (not s.link or s.link not in cols):
            return ("plan", "slots", i, "link"), f"slot {s.name!r} needs a link column of {s.table}"
        if s.cost and cols.get(s.cost) != "INTEGER":
            return ("plan", "slots", i, "cost"), f"cost column {s.cost!r} must be an INTEGER column of {s.table}"
    return None


def _tools(seed: Seed, known: set[str]):
    seen = set()
    for i, t in enumerate(seed.tools):
        if t.name in seen:
            return ("tools", i, "name"), f"duplicate tool name {t.name!r}"
        seen.add(t.name)
        if t.table not in known:
            return ("tools", i, "table"), f"unknown table {t.table!r}"
        cols = seed.table_columns(t.table)
        for field in ("filters", "returns"):
            for c in getattr(t, field):
                if c not in cols:
                    return ("tools", i, field), f"{c!r} is not a column of {t.table}"
        if t.order_by and t.order_by not in cols:
            return ("tools", i, "order_by"), f"{t.order_by!r} is not a column of {t.table}"
    return None


def _ladder(seed: Seed):
    from envfactory.verifiers.constraints import KINDS

    slots = {s.name: s for s in seed.plan.slots}
    for field in ("base", "prefer", "pool"):
        for i, text in enumerate(getattr(seed.ladder, field)):
            loc = ("ladder", field)
            try:
                item = parse_pool_item(text)
            except ValueError as e:
                return loc, str(e)
            if item.kind not in KINDS:
                return loc, f"unknown constraint kind {item.kind!r} in {text!r} (known: {', '.join(sorted(KINDS))})"
            if (item.kind in COLUMN_KINDS | SLOT_KINDS) and item.slot not in slots:
                return loc, f"{text!r} needs a slot of the plan ({', '.join(slots)})"
            if item.kind in COLUMN_KINDS:
                if not item.column or item.column not in seed.table_columns(slots[item.slot].table):
                    return loc, f"{text!r} needs a column of {slots[item.slot].table}"
    if seed.ladder.conditional_unit > seed.plan.units:
        return ("ladder", "conditional_unit"), f"unit {seed.ladder.conditional_unit} is beyond plan.units"
    return None


def check_seed(seed: Seed):
    known = {s.table for s in seed.sources}
    return (_sources(seed) or _tables(seed, known) or _plan(seed, known) or _tools(seed, known)
            or _ladder(seed))
