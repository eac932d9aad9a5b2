"""The DuckDB sandbox: one file per environment, typed tables, keys, provenance.

`build_sandbox` gathers every source of a seed for one partition (package datasets for its
ids; file and inline tables from the catalog, `sandboxes.catalog`: the partition's rows and
the rows referencing them; web sources fetched per member through `sandboxes.sources`),
casts records to the declared column types, and writes:
- one table per source, `PRIMARY KEY` on the key and `REFERENCES` on declared references;
- `distances(from_id, to_id, km)` between the partition's rows, for a region partition;
- `provenance(source, kind, url, fetched_at, rows, pages, content_sha256)`;
- `meta(key, value)` with the seed, the origin (the partition's center) and the members.
The file is written under a temporary name and renamed when complete.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import duckdb

from envfactory.sandboxes import world
from envfactory.sandboxes.package import PACKAGE_TABLES, package_records
from envfactory.sandboxes.sources import FetchContext, SourceError, fetch
from envfactory.sandboxes.sources.rules import ScrapeRule, scrape

__all__ = ["build_sandbox", "SandboxError", "Provenance"]


class SandboxError(RuntimeError):
    """A source's data does not fit its declared table (names the source)."""


@dataclass(frozen=True)
class Provenance:
    source: str
    kind: str
    url: str
    rows: int
    pages: int
    content_sha256: str


def _cast(value, duck_type: str, where: str):
    if value is None or value == "":
        return None
    try:
        if duck_type == "INTEGER":
            f = float(value)
            if f != int(f):
                raise ValueError(f"{value!r} is not a whole number")
            return int(f)
        if duck_type == "DOUBLE":
            return float(value)
        if duck_type == "BOOLEAN":
            if isinstance(value, bool):
                return value
            s = str(value).strip().lower()
            if s not in ("true", "false", "1", "0"):
                raise ValueError(f"{value!r} is not a boolean")
            return s in ("true", "1")
        return str(value)
    except (TypeError, ValueError) as e:
        raise SandboxError(f"{where}: cannot read as {duck_type}: {e}") from None


def _table_rows(source: str, records: list[dict], columns: dict[str, str], url: str) -> list[tuple]:
    out = []
    for i, rec in enumerate(records):
        missing = [c for c in columns if c not in rec]
        if missing:
            raise SandboxError(f"source {source!r} ({url}): record {i} lacks field(s) {', '.join(missing)}")
        out.append(tuple(_cast(rec[c], t, f"source {source!r} ({url}) record {i} field {c!r}")
                         for c, t in columns.items()))
    return out


def _create(con, table: str, columns: dict[str, str], key: str, refs: dict[str, str]) -> None:
    cols = [f'"{c}" {t}' + (" PRIMARY KEY" if c == key else "") for c, t in columns.items()]
    for col, target in refs.items():
        t, c = target.split(".")
        cols.append(f'FOREIGN KEY ("{col}") REFERENCES "{t}"("{c}")')
    con.execute(f'CREATE TABLE "{table}" ({", ".join(cols)})')


def _fetch_web(seed, src, members, base_url, ctx) -> tuple[list[dict], Provenance]:
    records, digest, pages, first = [], hashlib.sha256(), 0, None
    for m in members:
        path = src.path.replace("{member}", m).replace("{city_id}", m)
        url = path if path.startswith(("http://", "https://")) else base_url.rstrip("/") + path
        if src.scrape is not None:
            res = scrape(src.table, url, ScrapeRule(kind=src.kind, **src.scrape), ctx)
        else:
            res = fetch(src.kind, src.table, url, ctx)
        records.extend(res.records)
        digest.update(res.content_sha256.encode())
        pages += res.pages
        first = first or url
    return records, Provenance(src.table, src.kind, first or base_url, len(records), pages, digest.hexdigest())


def _distances(con, table: str, key: str, lat: str, lon: str) -> None:
    con.execute('CREATE TABLE distances (from_id VARCHAR, to_id VARCHAR, km DOUBLE, PRIMARY KEY (from_id, to_id))')
    pts = {str(r[0]): (r[1], r[2]) for r in con.execute(
        f'SELECT "{key}", "{lat}", "{lon}" FROM "{table}"').fetchall() if r[1] is not None and r[2] is not None}
    ids = sorted(pts)
    rows = [(a, b, round(world.haversine_km(*pts[a], *pts[b]), 1)) for a in ids for b in ids if a != b]
    con.executemany("INSERT INTO distances VALUES (?, ?, ?)", rows)


def _order(seed, tables: list[str]) -> list[str]:
    """Referenced tables before the tables that reference them, so foreign keys resolve."""
    out: list[str] = []

    def visit(t: str, path: tuple) -> None:
        if t in out or t in path or t not in tables:
            return
        for target in seed.table_references(t).values():
            visit(target.split(".")[0], path + (t,))
        out.append(t)

    for t in tables:
        visit(t, ())
    return out


def _share(seed, src, part, cat) -> tuple[str, list]:
    """The SQL selecting an environment's share of a catalog table: the partition table's
    members (and center); tables referencing it, the rows whose references all land there;
    any other table whole."""
    pt = seed.partition.table
    keep = part.all_ids
    cols = ", ".join(f'"{c}"' for c in seed.table_columns(src.table))
    sql, args = f'SELECT {cols} FROM "{src.table}"', []
    if src.table == pt:
        sql += f' WHERE CAST("{seed.table_key(pt)}" AS VARCHAR) IN (SELECT unnest(?))'
        args.append(keep)
    else:
        refs = [c for c, target in seed.table_references(src.table).items() if target.split(".")[0] == pt]
        if refs:
            sql += " WHERE " + " AND ".join(f'CAST("{c}" AS VARCHAR) IN (SELECT unnest(?))' for c in refs)
            args += [keep] * len(refs)
    return sql + f' ORDER BY "{seed.table_key(src.table)}"', args


def _gather(seed, part, base_url, ctx, cat) -> dict[str, tuple[object, Provenance]]:
    """Every table's rows for one environment: a list of records, or an arrow table."""
    fetched: dict[str, tuple[object, Provenance]] = {}
    for src in seed.sources:
        if src.kind == "package":
            recs, digest = package_records(src.dataset, part.all_ids)
            fetched[src.table] = (recs, Provenance(src.table, "package", PACKAGE_TABLES[src.dataset].url,
                                                   len(recs), 1, digest))
        elif src.is_file:
            sql, args = _share(seed, src, part, cat)
            arrow = cat.arrow(sql, args)
            ld = cat.loaded[src.table]
            fetched[src.table] = (arrow, Provenance(src.table, ld.format, ld.url, arrow.num_rows, 1, ld.content_sha256))
        else:
            try:
                fetched[src.table] = _fetch_web(seed, src, list(part.members), base_url, ctx)
            except SourceError as e:
                raise SandboxError(str(e)) from None
    return fetched


def build_sandbox(db_path: Path, seed, part, base_url: str, ctx: FetchContext, cat=None) -> list[Provenance]:
    """Fetch every source for one partition and write the sandbox database at `db_path`."""
    db_path = Path(db_path)
    tmp = db_path.with_name(db_path.name + f".part{os.getpid()}")
    tmp.unlink(missing_ok=True)
    fetched = _gather(seed, part, base_url, ctx, cat)
    con = duckdb.connect(str(tmp))
    try:
        now = datetime.now(timezone.utc).replace(tzinfo=None)
        for table in _order(seed, list(fetched)):
            data, prov = fetched[table]
            cols = seed.table_columns(table)
            _create(con, table, cols, seed.table_key(table), seed.table_references(table))
            if isinstance(data, list):
                rows = _table_rows(table, data, cols, prov.url)
                if rows:
                    con.executemany(f'INSERT INTO "{table}" VALUES ({", ".join("?" * len(cols))})', rows)
            elif data.num_rows:
                con.register("_share", data)
                con.execute(f'INSERT INTO "{table}" SELECT * FROM _share')
                con.unregister("_share")
        pt = seed.partition
        pcols = seed.table_columns(pt.table)
        if pt.kind == "region" and pt.latitude in pcols and pt.longitude in pcols:
            _distances(con, pt.table, seed.table_key(pt.table), pt.latitude, pt.longitude)
        con.execute("CREATE TABLE provenance (source VARCHAR PRIMARY KEY, kind VARCHAR, url VARCHAR, "
                    "fetched_at TIMESTAMP, rows INTEGER, pages INTEGER, content_sha256 VARCHAR)")
        for _, prov in fetched.values():
            con.execute("INSERT INTO provenance VALUES (?, ?, ?, ?, ?, ?, ?)",
                        [prov.source, prov.kind, prov.url, now, prov.rows, prov.pages, prov.content_sha256])
        con.execute("CREATE TABLE meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
        meta = {"seed": seed.name, "origin_id": part.center_id or "", "partition": pt.kind,
                "group": part.group, "members": json.dumps(list(part.members)),
                # the names the first seeds' readers know
                "country_code": part.group, "region_city_ids": json.dumps(list(part.members))}
        con.executemany("INSERT INTO meta VALUES (?, ?)", sorted(meta.items()))
        con.execute("CHECKPOINT")
    except duckdb.Error as e:
        con.close()
        tmp.unlink(missing_ok=True)
        raise SandboxError(f"writing {db_path.name}: {e}") from None
    con.close()
    os.replace(tmp, db_path)
    return [p for _, p in fetched.values()]
