"""The catalog: every whole-table source of a seed, loaded once into an in-memory DuckDB.

File and inline sources (`sandboxes.tables`) are read whole; package datasets contribute
their catalog (every row, without the columns that are costly to derive per row). The
partition chooser runs its SQL here (`where` may use any loaded table), and each
environment's sandbox copies its share of these tables from here. Web sources are fetched
per environment and have no catalog. Catalogs are cached per process by seed file and
modification time: building one reads every file once (routes: ~67k rows in well under a
second).
"""

from __future__ import annotations

import threading
from pathlib import Path

import duckdb


__all__ = ["Catalog", "catalog_for", "file_table", "CatalogError"]


class CatalogError(ValueError):
    """A source that cannot be loaded: one line naming the table and the file."""


def file_table(src):
    """The `sandboxes.tables` description of a seed's file or inline source."""
    from envfactory.sandboxes.tables import FileTable

    return FileTable(table=src.table, columns=dict(src.columns or {}), path=src.path, package=src.package,
                     format=src.format if src.kind == "file" else "inline", sqlite_table=src.sqlite_table,
                     query=src.query, rows=tuple(src.rows) if src.rows is not None else None,
                     rename=dict(src.rename), derive=dict(src.derive), where=src.where, key=src.key)


class Catalog:
    def __init__(self, seed, seed_dir: Path):
        self.con = duckdb.connect(":memory:")
        self.con.execute("SET threads TO 1")
        self.loaded: dict = {}  # table -> sandboxes.tables.Loaded
        self.lock = threading.Lock()
        for src in _ordered(seed):
            if src.is_file:
                from envfactory.sandboxes.tables import TableSourceError, load_table

                try:
                    self.loaded[src.table] = load_table(self.con, file_table(src), seed_dir)
                except TableSourceError as e:
                    raise CatalogError(str(e)) from None
            elif src.kind == "package":
                self._package(src)

    def _package(self, src) -> None:
        import pyarrow as pa

        from envfactory.sandboxes.package import PACKAGE_TABLES

        t = PACKAGE_TABLES[src.dataset]
        if t.catalog is None:
            return
        rows = t.catalog()
        cols = {c: ty for c, ty in t.columns.items() if rows and c in rows[0]}
        arrow = pa.Table.from_pylist(rows)
        self.con.register("_pkg", arrow)
        sel = ", ".join(f'CAST("{c}" AS {ty}) AS "{c}"' for c, ty in cols.items())
        self.con.execute(f'CREATE TABLE "{src.table}" AS SELECT {sel} FROM _pkg')
        self.con.unregister("_pkg")

    def query(self, sql: str, args: list | None = None) -> list[tuple]:
        with self.lock:
            return self.con.execute(sql, args or []).fetchall()

    def arrow(self, sql: str, args: list | None = None):
        with self.lock:
            return self.con.sql(sql, params=args or None).to_arrow_table()

    def has(self, table: str) -> bool:
        return bool(self.query("SELECT count(*) FROM information_schema.tables WHERE table_name = ?", [table])[0][0])


def _ordered(seed) -> list:
    """Sources with the tables a `derive` or `where` may read (any other table) loaded first:
    package catalogs, then file tables in seed order."""
    return [s for s in seed.sources if s.kind == "package"] + [s for s in seed.sources if s.is_file]


_CACHE: dict[tuple, Catalog] = {}
_CACHE_LOCK = threading.Lock()


def catalog_for(seed, seed_path: Path) -> Catalog:
    seed_path = Path(seed_path).resolve()
    key = (str(seed_path), seed_path.stat().st_mtime_ns if seed_path.exists() else 0, seed.name)
    with _CACHE_LOCK:
        if key not in _CACHE:
            _CACHE.clear()  # one seed at a time per process
            _CACHE[key] = Catalog(seed, seed_path.parent)
        return _CACHE[key]
