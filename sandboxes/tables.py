"""Tables that come from files: one declared table of a seed, loaded into a DuckDB connection.

A `FileTable` names where the rows are and what the table keeps:
- `path` relative to the seed's folder (absolute paths and paths leaving it are refused), or
  inside the installed Python package `package` (found without importing it);
- `format` one of `FORMATS`, else inferred from the name: `.csv`/`.tsv` (also `.gz`), `.json`,
  `.jsonl`/`.ndjson` (also `.gz`), `.parquet`, `.sqlite`/`.db`; `inline` takes `rows` instead
  of a file. DuckDB reads CSV (with `csv_options` passed to `read_csv`), JSON and Parquet
  itself; SQLite is read with Python's sqlite3 (`sqlite_table` or `query`, exactly one), inline
  rows from Python, both handed to DuckDB through Arrow with types inferred from the values.
- `columns` the output columns in order, each `VARCHAR`, `INTEGER`, `DOUBLE` or `BOOLEAN`. A
  column is `derive[c]` (a DuckDB expression over the source's columns, which may read tables
  already in the connection) or else the source column `rename.get(c, c)`.
- `where` a DuckDB predicate over the source's columns (as read, before any cast); rows failing
  it are dropped. `key` must be unique and never null.

`load_table` runs `CREATE TABLE <table> AS SELECT ...`. Casting: an empty string is NULL (every
format); INTEGER refuses fractions (3.7) and values outside 32 bits; BOOLEAN reads
true/false/1/0/yes/no in any case. Every problem a seed can cause raises `TableSourceError`,
one line: `table 'routes' (package://bokeh_sampledata/_data/routes.csv.gz?version=1.0): <reason>`,
the reason naming the column, expression or value; nothing is left in the connection then.
`Loaded.content_sha256` is the sha256 of the file's bytes (inline: of the rows' canonical JSON).
`preview_columns` gives the source's columns and types as read, from a sample. `resolve` gives the
file and its URL (`seed:<path>`, `package://<pkg>/<path>?version=<v>`; inline rows: no file, `inline:`).
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import hashlib
import importlib.metadata
import importlib.util
import itertools
import json
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

__all__ = ["COLUMN_TYPES", "FORMATS", "TableSourceError", "FileTable", "Loaded", "resolve", "load_table",
           "preview_columns"]

COLUMN_TYPES = ("VARCHAR", "INTEGER", "DOUBLE", "BOOLEAN")
FORMATS = ("csv", "json", "jsonl", "parquet", "sqlite", "inline")
_SUFFIXES = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl",
             ".parquet": "parquet", ".sqlite": "sqlite", ".sqlite3": "sqlite", ".db": "sqlite"}
_TRUE, _FALSE = ("true", "1", "yes"), ("false", "0", "no")
_PREVIEW_ROWS = 100


class TableSourceError(ValueError):
    """A declared table that cannot be loaded: one line naming the table, its file and the cause."""


@dataclass(frozen=True)
class FileTable:
    table: str
    columns: dict[str, str]
    path: str | None = None
    package: str | None = None
    format: str | None = None
    sqlite_table: str | None = None
    query: str | None = None
    rows: tuple[dict, ...] | None = None
    rename: dict[str, str] = field(default_factory=dict)
    derive: dict[str, str] = field(default_factory=dict)
    where: str | None = None
    key: str | None = None
    csv_options: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Loaded:
    table: str
    url: str
    rows: int
    content_sha256: str
    format: str


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _lit(v) -> str:
    """A Python value as a DuckDB literal, for `csv_options`."""
    if isinstance(v, bool) or v is None:
        return {True: "true", False: "false", None: "NULL"}[v]
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_lit(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{_lit(str(k))}: {_lit(x)}" for k, x in v.items()) + "}"
    return "'" + str(v).replace("'", "''") + "'"


def _first_line(e: Exception) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0]


@functools.lru_cache(maxsize=64)
def _version(package: str) -> str | None:
    """The installed version of the distribution shipping import name `package` (names can differ)."""
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        dists = importlib.metadata.packages_distributions().get(package, [])
        return importlib.metadata.version(dists[0]) if dists else None


def _url(src: FileTable) -> str:
    if src.path is None:
        return "inline:"
    if src.package is None:
        return f"seed:{src.path}"
    version = _version(src.package)
    return f"package://{src.package}/{src.path}" + (f"?version={version}" if version else "")


def _fail(src: FileTable, reason: str) -> TableSourceError:
    return TableSourceError(f"table {src.table!r} ({_url(src)}): {reason}")


def _format(src: FileTable) -> str:
    if src.format is not None:
        if src.format not in FORMATS:
            raise _fail(src, f"format {src.format!r} is not one of {', '.join(FORMATS)}")
        return src.format
    if src.rows is not None and src.path is None:
        return "inline"
    name = Path(src.path or "").name.lower().removesuffix(".gz")
    fmt = _SUFFIXES.get(Path(name).suffix)
    if fmt is None:
        raise _fail(src, f"cannot tell the format from the name {src.path!r}: set format to one of "
                         f"{', '.join(FORMATS)}")
    return fmt


def _nearby(root: Path, want: str) -> str:
    """A few files that do exist under `root`, closest to `want` first, to help fix a typo."""
    files = sorted(p.relative_to(root).as_posix() for p in itertools.islice(root.rglob("*"), 2000)
                   if p.is_file() and "__pycache__" not in p.parts and p.suffix not in (".py", ".pyc"))
    pick = difflib.get_close_matches(want, files, n=5, cutoff=0.4)
    pick += [f for f in files if f not in pick][:8 - len(pick)]
    return ", ".join(pick) + (" ..." if len(files) > len(pick) else "") if pick else "no data files"


def resolve(src: FileTable, seed_dir: Path) -> tuple[Path | None, str]:
    """(the file on disk, its provenance URL); inline rows have no file: (None, "inline:")."""
    url = _url(src)
    if src.path is None and src.rows is not None:
        return None, url
    if not src.path:
        raise _fail(src, "a file table needs a path (or inline rows)")
    if Path(src.path).is_absolute() or src.path.startswith(("/", "\\")):
        raise _fail(src, f"path {src.path!r} must be relative, not absolute")
    if src.package is None:
        root = Path(seed_dir).resolve()
    else:
        try:
            spec = importlib.util.find_spec(src.package) if src.package.isidentifier() else None
        except (ImportError, ValueError):
            spec = None
        if spec is None or not (spec.submodule_search_locations or spec.origin):
            raise _fail(src, f"Python package {src.package!r} is not installed")
        root = Path(next(iter(spec.submodule_search_locations or []), None) or Path(spec.origin).parent).resolve()
    path = (root / src.path).resolve()
    if not path.is_relative_to(root):
        where = "the seed's folder" if src.package is None else f"package {src.package}"
        raise _fail(src, f"path {src.path!r} leaves {where}")
    if not path.is_file():
        where = "next to the seed" if src.package is None else f"in package {src.package}"
        raise _fail(src, f"no file {src.path!r} {where} (there are: {_nearby(root, src.path)})")
    return path, url


def _check_shape(src: FileTable, fmt: str) -> None:
    if fmt == "inline" and (src.rows is None or src.path is not None or src.package is not None):
        raise _fail(src, "inline rows take rows and no path")
    if fmt != "inline" and src.rows is not None:
        raise _fail(src, "a file table takes no inline rows")
    if fmt == "sqlite" and (src.sqlite_table is None) == (src.query is None):
        raise _fail(src, "a SQLite file needs exactly one of sqlite_table and query")
    if fmt != "sqlite" and (src.sqlite_table or src.query):
        raise _fail(src, f"sqlite_table and query are for SQLite files, not {fmt}")
    if src.csv_options and fmt != "csv":
        raise _fail(src, f"csv_options are for CSV files, not {fmt}")
    bad = next((k for k in src.csv_options if not str(k).isidentifier()), None)
    if bad is not None:  # the names go into SQL unquoted
        raise _fail(src, f"csv_options: {bad!r} is not an option name")


def _text(v):
    if v is None or isinstance(v, str):
        return v
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    return json.dumps(v, default=str) if isinstance(v, (dict, list)) else str(v)


def _arrow(names: list[str], rows: list[tuple]):
    """Rows of Python values as an Arrow table. A column of ints, floats or bools keeps its kind
    (ints with floats: floats); anything else, mixed kinds and ints past 64 bits become text."""
    import pyarrow as pa

    kinds_to_type = {frozenset({int}): pa.int64(), frozenset({float}): pa.float64(),
                     frozenset({int, float}): pa.float64(), frozenset({bool}): pa.bool_()}
    cols = {}
    for i, name in enumerate(names):
        vals = [r[i] for r in rows]
        typ = kinds_to_type.get(frozenset(type(v) for v in vals if v is not None))
        try:
            cols[name] = pa.array(vals, typ) if typ else pa.array([_text(v) for v in vals], pa.string())
        except OverflowError:
            cols[name] = pa.array([_text(v) for v in vals], pa.string())
    return pa.table(cols)


def _sqlite_rows(src: FileTable, path: Path, limit: int | None) -> tuple[list[str], list[tuple]]:
    db = sqlite3.connect(f"{path.as_uri()}?mode=ro&immutable=1", uri=True)
    try:
        if src.sqlite_table is not None:
            have = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type IN ('table', 'view')")]
            if src.sqlite_table not in have:
                raise _fail(src, f"no table {src.sqlite_table!r} in the SQLite file (it has: {', '.join(have)})")
            sql = f"SELECT * FROM {_q(src.sqlite_table)}"
        else:
            sql = f"SELECT * FROM ({src.query})"
        cur = db.execute(sql + (f" LIMIT {limit}" if limit else ""))
        return [d[0] for d in cur.description], cur.fetchall()
    except sqlite3.Error as e:
        raise _fail(src, f"SQLite: {_first_line(e)}" + (f" in query {src.query!r}" if src.query else "")) from None
    finally:
        db.close()


def _source(con, src: FileTable, fmt: str, path: Path | None, view: str, sample: bool) -> str:
    """The FROM clause reading the source; Python-read rows are registered as `view`."""
    p = _lit(str(path))
    if fmt == "csv":
        return f"read_csv({p}{''.join(f', {k} = {_lit(v)}' for k, v in src.csv_options.items())})"
    if fmt in ("json", "jsonl"):
        return f"read_json({p}, format = {_lit('auto' if fmt == 'json' else 'newline_delimited')})"
    if fmt == "parquet":
        return f"read_parquet({p})"
    if fmt == "sqlite":
        names, rows = _sqlite_rows(src, path, _PREVIEW_ROWS if sample else None)
    else:
        rows = [r for r in src.rows if isinstance(r, dict)]
        if len(rows) != len(src.rows):
            raise _fail(src, "every inline row must be a table of column = value")
        names = list(dict.fromkeys(k for r in rows for k in r))
        rows = [tuple(r.get(n) for n in names) for r in rows]
    con.register(view, _arrow(names, rows))
    return _q(view)


def _describe(con, src: FileTable, from_sql: str) -> dict[str, str]:
    return {r[0]: r[1] for r in _try(con, src, f"DESCRIBE SELECT * FROM {from_sql}", "cannot read the file")}


def preview_columns(src: FileTable, seed_dir: Path) -> dict[str, str]:
    """Source column -> DuckDB type as read (before rename and cast), from a sample of rows."""
    fmt = _format(src)
    _check_shape(src, fmt)
    path, _ = resolve(src, seed_dir)
    con = duckdb.connect(":memory:")
    try:
        return _describe(con, src, _source(con, src, fmt, path, "_preview", sample=True))
    finally:
        con.close()


def _cast_sql(ref: str, read_type: str, out: str) -> tuple[str, str]:
    """(`ref`, a staged column read as `read_type`, with '' as NULL; it as type `out`, NULL where it
    does not fit)."""
    v = f"NULLIF({ref}, '')" if read_type == "VARCHAR" else ref
    if out in ("VARCHAR", "DOUBLE"):
        return v, f"{'' if out == 'VARCHAR' else 'TRY_'}CAST({v} AS {out})"
    if out == "INTEGER":  # DuckDB rounds 3.7 to 4: compare with the exact value to refuse that
        return v, f"CASE WHEN TRY_CAST({v} AS DOUBLE) = TRY_CAST({v} AS INTEGER) THEN TRY_CAST({v} AS INTEGER) END"
    s = f"lower(trim(CAST({v} AS VARCHAR)))"
    return v, f"CASE WHEN {s} IN {_TRUE} THEN true WHEN {s} IN {_FALSE} THEN false END"


def _plan(con, src: FileTable, from_sql: str) -> list[str]:
    """The staged expressions, one per output column; each checked to bind on its own first."""
    if not src.columns:
        raise _fail(src, "no columns declared")
    bad = next((c for c, t in src.columns.items() if str(t).upper() not in COLUMN_TYPES), None)
    if bad is not None:
        raise _fail(src, f"column {bad!r}: type {src.columns[bad]!r} is not one of {', '.join(COLUMN_TYPES)}")
    if src.key is not None and src.key not in src.columns:
        raise _fail(src, f"key {src.key!r} is not one of the columns ({', '.join(src.columns)})")
    have, exprs = _describe(con, src, from_sql), []
    for c in src.columns:
        if c in src.derive:
            exprs.append(f"({src.derive[c]})")
            _try(con, src, f"SELECT {exprs[-1]} FROM {from_sql} LIMIT 0", f"derive {c!r} = {src.derive[c]!r}")
            continue
        name = src.rename.get(c, c)
        if name not in have:
            via = f"column {c!r} (renamed from {name!r})" if c in src.rename else f"column {c!r}"
            raise _fail(src, f"{via}: the file has no column {name!r} (it has: {', '.join(have)})")
        exprs.append(_q(name))
    if src.where is not None:
        _try(con, src, f"SELECT 1 FROM {from_sql} WHERE ({src.where}) LIMIT 0", f"where {src.where!r}")
    return exprs


def _try(con, src: FileTable, sql: str, what: str):
    try:
        return con.execute(sql).fetchall()
    except duckdb.Error as e:
        raise _fail(src, f"{what}: {_first_line(e)}") from None


def _check_casts(con, src: FileTable, stage: str, casts: list[tuple[str, str]]) -> None:
    cols, stage = list(src.columns), _q(stage)
    bad = [f"{v} IS NOT NULL AND {e} IS NULL" for v, e in casts]
    counts = _try(con, src, f"SELECT {', '.join(f'count(*) FILTER (WHERE {b})' for b in bad)} FROM {stage}",
                  "reading the rows")[0]
    for i, n in enumerate(counts):
        if n:
            sql = f"SELECT CAST({casts[i][0]} AS VARCHAR) FROM {stage} WHERE {bad[i]} LIMIT 1"
            example = con.execute(sql).fetchone()[0]
            raise _fail(src, f"column {cols[i]!r}: {n} value(s) are not {src.columns[cols[i]].upper()}, "
                             f"e.g. {example!r}")


def _check_key(con, src: FileTable, stage: str, key_sql: str) -> None:
    """The key, as it will be cast, over the staged rows: so a bad key leaves no table behind."""
    nulls = con.execute(f"SELECT count(*) FROM {_q(stage)} WHERE {key_sql} IS NULL").fetchone()[0]
    if nulls:
        raise _fail(src, f"key {src.key!r} is empty in {nulls} row(s)")
    dup = con.execute(f"SELECT CAST({key_sql} AS VARCHAR), count(*) FROM {_q(stage)} GROUP BY 1 "
                      f"HAVING count(*) > 1 ORDER BY 2 DESC, 1 LIMIT 1").fetchone()
    if dup:
        raise _fail(src, f"key {src.key!r} is not unique: {dup[0]!r} appears {dup[1]} times")


def _digest(src: FileTable, path: Path | None) -> str:
    if path is None:
        canon = json.dumps(list(src.rows), sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
        return hashlib.sha256(canon.encode()).hexdigest()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_table(con, src: FileTable, seed_dir: Path) -> Loaded:
    """Create table `src.table` in `con` with exactly `src.columns`, in order, cast to their types."""
    fmt = _format(src)
    _check_shape(src, fmt)
    path, url = resolve(src, seed_dir)
    tag = hashlib.sha1(src.table.encode()).hexdigest()[:10]
    view, stage = f"_envf_src_{tag}", f"_envf_stage_{tag}"
    try:
        from_sql = _source(con, src, fmt, path, view, sample=False)
        exprs = _plan(con, src, from_sql)
        where = f" WHERE ({src.where})" if src.where is not None else ""
        _try(con, src, f"CREATE TEMP TABLE {_q(stage)} AS SELECT "
             + ", ".join(f"{e} AS {_q(f'_s{i}')}" for i, e in enumerate(exprs)) + f" FROM {from_sql}{where}",
             "reading the rows")
        types = [r[1] for r in con.execute(f"DESCRIBE {_q(stage)}").fetchall()]
        casts = [_cast_sql(_q(f"_s{i}"), types[i], str(t).upper()) for i, t in enumerate(src.columns.values())]
        _check_casts(con, src, stage, casts)
        if src.key is not None:
            _check_key(con, src, stage, casts[list(src.columns).index(src.key)][1])
        _try(con, src, f"CREATE TABLE {_q(src.table)} AS SELECT "
             + ", ".join(f"{e} AS {_q(c)}" for (_, e), c in zip(casts, src.columns)) + f" FROM {_q(stage)}",
             "creating the table")
        rows = con.execute(f"SELECT count(*) FROM {_q(src.table)}").fetchone()[0]
    finally:  # quietly: inside a caller's failed transaction these would fail and hide the cause
        with contextlib.suppress(duckdb.Error):
            con.execute(f"DROP TABLE IF EXISTS {_q(stage)}")
            if fmt in ("sqlite", "inline"):
                con.unregister(view)
    return Loaded(src.table, url, rows, _digest(src, path), fmt)
