"""Cross-field checks of a seed, after its shape has validated.

Each returns the path of the offending field and one message; `load_seed` turns that into
`file:line: field: message`. What is checked before anything is generated: every source
can be read the way it is declared (file columns exist, web routes exist), the partition
names real columns, every link joins real columns in an order the counter can follow,
every slot's candidates can be listed by some tool, and every ladder entry names what its
kind needs (a stated value is cast to its column's type and checked against the kind's
JSON Schema).
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from typing import TYPE_CHECKING

from envfactory.verifiers.constraints.entry import parse_pool_item

if TYPE_CHECKING:
    from envfactory.factory.seed import Seed

__all__ = ["check_seed"]

FILE_ONLY = ("package", "format", "sqlite_table", "query", "rows", "columns", "rename", "derive", "where", "key")
LISTING_ROUTE = re.compile(r"^/(?:html/(?P<h>[a-z]+)/\{(?:member|city_id)\}|api/(?P<a>[a-z]+)\?city=\{(?:member|city_id)\}"
                           r"|js/(?P<j>[a-z]+)/\{(?:member|city_id)\})$")


DATA_ROUTE = re.compile(r"^/data/(?P<table>[a-z][a-z0-9_]*)\.(?P<ext>json|html|js)(?:\?.*)?$")


def _set(src, fields) -> str | None:
    return next((f for f in fields if getattr(src, f) not in (None, {}, [])), None)


def _file_source(i: int, s, seed_dir: Path | None):
    from envfactory.sandboxes.catalog import file_table
    from envfactory.sandboxes.tables import TableSourceError, preview_columns

    if s.dataset:
        return ("sources", i, "dataset"), "a file source takes no dataset (that is for kind = \"package\")"
    if not s.columns:
        return ("sources", i, "columns"), "a file or inline source needs columns = { name = \"TYPE\", ... }"
    if s.key is None or s.key not in s.columns:
        return ("sources", i, "key"), f"key {s.key!r} must be one of the columns ({', '.join(s.columns)})"
    for c in list(s.rename) + list(s.derive):
        if c not in s.columns:
            field = "rename" if c in s.rename else "derive"
            return ("sources", i, field, c), f"{c!r} is not one of the declared columns"
    if s.kind == "inline":
        if not s.rows or not all(isinstance(r, dict) for r in s.rows):
            return ("sources", i, "rows"), "an inline source needs rows = [ { column = value, ... }, ... ]"
        if s.path or s.package:
            return ("sources", i, "path"), "an inline source takes no path"
    elif not s.path:
        return ("sources", i, "path"), "a file source needs a path (relative to the seed, or inside package)"
    elif s.rows is not None:
        return ("sources", i, "rows"), "a file source takes no inline rows"
    if seed_dir is None:
        return None  # a bundle's copy of the seed: its data is in the sandbox database
    try:
        have = preview_columns(file_table(s), seed_dir)
    except TableSourceError as e:
        return ("sources", i, "path" if s.kind == "file" else "rows"), str(e)
    for c in s.columns:
        if c in s.derive:
            continue
        name = s.rename.get(c, c)
        if name not in have:
            field = ("rename", c) if c in s.rename else ("columns", c)
            return ("sources", i, *field), (f"the data has no column {name!r} (it has: {', '.join(list(have)[:12])}"
                                            + (" ..." if len(have) > 12 else "") + ")")
    return None


def _web_source(i: int, s, seed):
    from envfactory.sandboxes.world import LISTING_KINDS

    extra = _set(s, FILE_ONLY + ("dataset",))
    if extra:
        return ("sources", i, extra), f"a {s.kind} source takes no {extra}"
    if not s.path or not (s.path.startswith("/") or s.path.startswith(("http://", "https://"))):
        return ("sources", i, "path"), "a web source needs a path on the offline web (/...) or an http(s) URL"
    if "{member}" not in s.path and "{city_id}" not in s.path:
        return ("sources", i, "path"), "a web source's path must contain {member}: it is fetched once per partition member"
    if s.scrape is not None:
        from envfactory.sandboxes.sources.rules import ScrapeRule, validate_rule

        try:
            why = validate_rule(ScrapeRule(kind=s.kind, **s.scrape))
        except TypeError as e:
            why = f"unknown field: {e}"
        if why:
            return ("sources", i, "scrape"), why
    if s.path.startswith("/data/"):
        m = DATA_ROUTE.match(s.path)
        if not m or {"json": "api", "html": "html", "js": "js"}[m["ext"]] != s.kind:
            return ("sources", i, "path"), (f"the offline web serves a {s.kind} table at /data/TABLE."
                                            f"{ {'api': 'json', 'html': 'html', 'js': 'js'}[s.kind]}?COLUMN={{member}}")
        other = next((x for x in seed.sources if x.table == m["table"]), None)
        if other is None or not other.is_file:
            return ("sources", i, "path"), f"/data/{m['table']}: the offline web republishes file and inline tables only"
        if s.scrape is None:
            return ("sources", i, "scrape"), "a /data/ route needs scrape = { rows = ..., fields = ... }"
    elif s.path.startswith("/"):
        if s.scrape is not None:
            return ("sources", i, "scrape"), "the offline web's listing routes have fixed formats: no scrape rule"
        m = LISTING_ROUTE.match(s.path)
        route_kind = m and (m["h"] and "html" or m["a"] and "api" or m["j"] and "js")
        listing = m and (m["h"] or m["a"] or m["j"])
        if not m or route_kind != s.kind:
            return ("sources", i, "path"), (f"the offline web has no {s.kind} route {s.path!r} (routes: /html/KIND/{{member}}, "
                                            "/api/KIND?city={member}, /js/KIND/{member})")
        if listing not in LISTING_KINDS:
            return ("sources", i, "path"), f"the offline web has no listing {listing!r} (it has: {', '.join(LISTING_KINDS)})"
        if not s.synthetic:
            return ("sources", i, "synthetic"), ("the offline web's listings are synthetic: say synthetic = true, "
                                                 "so cards and prompts never call them real data")
    if s.table not in seed.tables:
        return ("sources", i, "table"), f"no [tables.{s.table}] declares this source's columns"
    return None


def _sources(seed: Seed, seed_dir: Path | None):
    from envfactory.sandboxes.package import PACKAGE_TABLES

    for i, s in enumerate(seed.sources):
        if s.kind == "package":
            if s.dataset not in PACKAGE_TABLES:
                return ("sources", i, "dataset"), f"unknown dataset {s.dataset!r} (known: {', '.join(PACKAGE_TABLES)})"
            extra = _set(s, FILE_ONLY + ("path",))
            if extra:
                return ("sources", i, extra), f"a package source takes no {extra}"
        elif s.is_file:
            got = _file_source(i, s, seed_dir)
            if got:
                return got
        else:
            got = _web_source(i, s, seed)
            if got:
                return got
        if s.synthetic and not s.is_web:
            return ("sources", i, "synthetic"), "only web sources on the offline web are synthetic"
    return None


def _tables(seed: Seed, known: set[str]):
    for name, t in seed.tables.items():
        if name not in known:
            return ("tables", name), f"table {name!r} has no source"
        if seed.source(name).is_file:
            return ("tables", name), f"table {name!r} comes from a file: declare its columns on the source"
        if t.key not in t.columns:
            return ("tables", name, "key"), f"key {t.key!r} is not a column"
    for i, s in enumerate(seed.sources):
        refs = seed.table_references(s.table)
        for col, target in refs.items():
            loc = ("tables", s.table, "references", col) if s.table in seed.tables else ("sources", i, "references", col)
            if col not in seed.table_columns(s.table):
                return loc, f"{col!r} is not a column of {s.table}"
            tt, _, tc = target.partition(".")
            if tt not in known or tc not in seed.table_columns(tt):
                return loc, f"reference {target!r} is not a known table.column"
            if tc != seed.table_key(tt):
                return loc, f"reference {target!r} must name the key of {tt} ({seed.table_key(tt)})"
    return None


def _partition(seed: Seed, known: set[str]):
    if (seed.region is None) == (seed.partition_ is None):
        return ("partition",), "a seed needs exactly one of [partition] and [region]"
    pt = seed.partition
    loc = ("partition",) if seed.partition_ is not None else ("region",)
    if pt.table not in known:
        return loc + ("table",), f"unknown table {pt.table!r} (tables: {', '.join(sorted(known))})"
    cols = seed.table_columns(pt.table)
    need = {"region": ["latitude", "longitude", "max_radius_km"], "group": ["column"], "range": ["column", "width"],
            "sample": []}[pt.kind]
    for f in need:
        if getattr(pt, f) is None:
            return loc + (f,), f"a {pt.kind} partition needs {f}"
    for f in ("latitude", "longitude", "group_by", "column", "label"):
        v = getattr(pt, f)
        if v is not None and (pt.kind == "region" or f not in ("latitude", "longitude")) and v not in cols:
            return loc + (f,), f"{v!r} is not a column of {pt.table}"
    if pt.kind == "range" and cols.get(pt.column) not in ("INTEGER", "DOUBLE"):
        return loc + ("column",), f"a range partition needs a numeric column; {pt.column} is {cols.get(pt.column)}"
    if pt.center and pt.kind != "region":
        return loc + ("center",), "only a region partition has a center"
    if seed.plan.origin and not pt.center:
        return ("plan", "origin"), "plans start from an origin only with a region partition that has center = true"
    return None


def _plan(seed: Seed, known: set[str]):
    slots = seed.plan.slots
    names = [s.name for s in slots]
    if len(set(names)) != len(names):
        return ("plan", "slots"), "slot names must be unique"
    for i, s in enumerate(slots):
        if s.table not in known:
            return ("plan", "slots", i, "table"), f"unknown table {s.table!r} (tables: {', '.join(sorted(known))})"
        cols = seed.table_columns(s.table)
        if i == 0 and s.link:
            return ("plan", "slots", i, "link"), "the first slot is the anchor and takes no link"
        if s.link and s.link not in cols:
            return ("plan", "slots", i, "link"), f"{s.link!r} is not a column of {s.table}"
        for j, lk in enumerate(s.links):
            loc = ("plan", "slots", i, "links", j)
            if lk.column not in cols:
                return loc, f"{lk.column!r} is not a column of {s.table}"
            tslot, tcol = lk.target
            if tslot not in names:
                return loc, f"{lk.to!r} names no slot ({', '.join(names)})"
            if not lk.previous and names.index(tslot) >= i:
                return loc, f"{lk.to!r}: a same-unit link must name an earlier slot (the counter fills slots in order)"
            if tcol not in seed.table_columns(seed.plan.slot(tslot).table):
                return loc, f"{tcol!r} is not a column of {seed.plan.slot(tslot).table}"
            if lk.previous and seed.plan.shape == "selection":
                return loc, "a selection has no order, so no previous-unit links"
            if lk.via is not None:
                got = _via(seed, known, lk.via)
                if got:
                    return (*loc, "via", got[0]), got[1]
        if s.cost and seed.table_columns(s.table).get(s.cost) != "INTEGER":
            return ("plan", "slots", i, "cost"), f"cost column {s.cost!r} must be an INTEGER column of {s.table}"
        if not _finder_exists(seed, s):
            links = [lk.column for lk in seed.slot_links(s)]
            return ("plan", "slots", i), (f"no tool lists slot {s.name!r}: add a [[tools]] entry on {s.table} with no "
                                          f"filters" + (f", or filtered by its link columns ({', '.join(links)})" if links else ""))
    return None


def _via(seed: Seed, known: set[str], via):
    """A relation table a link goes through: a known table with both columns, and a tool
    that lists its rows (unfiltered, or filtered by its `that` column) so a solver can see
    which pairs exist."""
    if via.table not in known:
        return "table", f"unknown table {via.table!r} (tables: {', '.join(sorted(known))})"
    cols = seed.table_columns(via.table)
    for field in ("this", "that"):
        if getattr(via, field) not in cols:
            return field, f"{getattr(via, field)!r} is not a column of {via.table}"
    if not any(t.table == via.table and set(t.filters) <= {via.that} for t in seed.tools):
        return "table", (f"no tool lists {via.table}'s pairs: add a [[tools]] entry on {via.table} with no filters "
                         f"or filtered by {via.that!r}")
    return None


def _finder_exists(seed: Seed, slot) -> bool:
    links = {lk.column for lk in seed.slot_links(slot)}
    return any(t.table == slot.table and set(t.filters) <= links for t in seed.tools)


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


def _schema_problem(seed: Seed):
    """A problem with the seed's slots and no rows: enough to validate stated constraints."""
    from envfactory.verifiers.problem import Problem, slot_views

    return Problem(seed.plan.unit, seed.plan.units, slot_views(seed), {}, None, {}, seed.plan.shape == "selection")


def _entry(seed: Seed, text: str, p):
    from envfactory.verifiers.constraints import KINDS, ConstraintError, validate

    item = parse_pool_item(text)
    if item.kind not in KINDS:
        raise ValueError(f"unknown constraint kind {item.kind!r} in {text!r} (known: {', '.join(sorted(KINDS))})")
    kind = KINDS[item.kind]
    slots = {s.name: s for s in seed.plan.slots}
    if kind.target in ("slot", "column") and item.slot not in slots:
        raise ValueError(f"{text!r} needs a slot of the plan ({', '.join(slots)})")
    if kind.target == "column" and (not item.column or item.column not in seed.table_columns(slots[item.slot].table)):
        raise ValueError(f"{text!r} needs a column of {slots[item.slot].table}")
    if item.kind in ("sum", "aggregate") and seed.table_columns(slots[item.slot].table)[item.column] not in ("INTEGER", "DOUBLE"):
        raise ValueError(f"{text!r}: {item.kind} needs a numeric column; {item.column} is "
                         f"{seed.table_columns(slots[item.slot].table)[item.column]}")
    if kind.ordered and p.unordered:
        raise ValueError(f"{text!r}: a selection has no order, so {item.kind} does not apply")
    if item.kind == "distance":
        pt = seed.partition
        if pt.kind != "region" or slots[item.slot].table != pt.table:
            raise ValueError(f"{text!r}: distances exist between the rows of a region partition's table ({pt.table})")
    if item.kind in ("total_budget", "unit_budget", "conditional_budget") and not any(s.cost for s in seed.plan.slots):
        raise ValueError(f"{text!r}: no slot has a cost column")
    if item.has_value:
        got = kind.propose(item, p, [], None, random.Random(0), {"conditional_unit": seed.ladder.conditional_unit})
        try:
            for c in got:
                validate(c, p)
        except ConstraintError as e:
            raise ValueError(f"{text!r}: {e}") from None


def _schedule_problem(seed: Seed, sched: dict, p) -> str | None:
    from envfactory.verifiers.constraints import Constraint, ConstraintError, validate

    try:
        validate(Constraint("schedule", "schedule", dict(sched, end=24.0)), p)
    except ConstraintError as e:
        return str(e)
    slots = {s.name: s for s in seed.plan.slots}
    for slot in sched["slots"]:
        if slot not in slots:
            return f"{slot!r} is not a slot of the plan"
        if slot not in sched["duration"]:
            return f"slot {slot!r} has no duration column"
    for field in ("duration", "opens", "closes"):
        for slot, col in (sched.get(field) or {}).items():
            if slot not in sched["slots"]:
                return f"{field}: {slot!r} is not one of the schedule's slots"
            if seed.table_columns(slots[slot].table).get(col) not in ("INTEGER", "DOUBLE"):
                return f"{field}: {slot}.{col} is not a numeric column"
    return None


def _ladder(seed: Seed):
    p = _schema_problem(seed)
    for field in ("base", "prefer", "pool"):
        for text in getattr(seed.ladder, field):
            try:
                _entry(seed, text, p)
            except ValueError as e:
                return ("ladder", field), str(e)
    sched = seed.ladder.schedule
    uses = any(parse_pool_item(t).kind == "schedule" for f in ("base", "prefer", "pool") for t in getattr(seed.ladder, f))
    if uses and sched is None:
        return ("ladder", "pool"), "a schedule move needs [ladder] schedule = { slots, start, duration, opens, closes }"
    if sched is not None:
        why = _schedule_problem(seed, sched, p)
        if why:
            return ("ladder", "schedule"), f"bad schedule: {why}"
    if seed.ladder.conditional_unit > seed.plan.units:
        return ("ladder", "conditional_unit"), f"unit {seed.ladder.conditional_unit} is beyond plan.units"
    return None


def check_seed(seed: Seed, seed_dir: Path | None = None, check_data: bool = True):
    known = {s.table for s in seed.sources}
    seed_dir = (seed_dir or Path(".")) if check_data else None
    return (_sources(seed, seed_dir) or _tables(seed, known) or _partition(seed, known) or _plan(seed, known)
            or _tools(seed, known) or _ladder(seed))
