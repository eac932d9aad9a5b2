"""The DuckDB sandbox: one file per environment, typed tables, keys, provenance.

`build_sandbox` fetches every source of a seed for a region (package datasets directly;
web sources per region city through `sandboxes.sources`), casts records to the declared
column types, and writes:
- one table per source, `PRIMARY KEY` on the key and `REFERENCES` on declared references;
- `distances(from_id, to_id, km)` between all anchor entities when they have coordinates;
- `provenance(source, kind, url, fetched_at, rows, pages, content_sha256)`;
- `meta(key, value)` with the seed, origin and region.
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


def _fetch_web(seed, src, city_ids, base_url, ctx) -> tuple[list[dict], Provenance]:
    records, digest, pages, first = [], hashlib.sha256(), 0, None
    for cid in city_ids:
        url = base_url.rstrip("/") + src.path.format(city_id=cid)
        res = fetch(src.kind, src.table, url, ctx)
        records.extend(res.records)
        digest.update(res.content_sha256.encode())
        pages += res.pages
        first = first or url
    return records, Provenance(src.table, src.kind, first or base_url, len(records), pages, digest.hexdigest())


def _distances(con, anchor_table: str, key: str, ids: list[str]) -> None:
    con.execute('CREATE TABLE distances (from_id VARCHAR, to_id VARCHAR, km DOUBLE, PRIMARY KEY (from_id, to_id))')
    pts = {r[0]: (r[1], r[2]) for r in con.execute(
        f'SELECT "{key}", latitude, longitude FROM "{anchor_table}"').fetchall()}
    rows = [(a, b, round(world.haversine_km(*pts[a], *pts[b]), 1)) for a in ids for b in ids if a != b]
    con.executemany("INSERT INTO distances VALUES (?, ?, ?)", rows)


def build_sandbox(db_path: Path, seed, region, base_url: str, ctx: FetchContext) -> list[Provenance]:
    """Fetch every source for `region` and write the sandbox database at `db_path`."""
    db_path = Path(db_path)
    tmp = db_path.with_name(db_path.name + f".part{os.getpid()}")
    tmp.unlink(missing_ok=True)
    ids = region.all_ids
    fetched: dict[str, tuple[list[dict], Provenance]] = {}
    for src in seed.sources:
        if src.kind == "package":
            recs, digest = package_records(src.dataset, ids)
            fetched[src.table] = (recs, Provenance(src.table, "package", PACKAGE_TABLES[src.dataset].url,
                                                   len(recs), 1, digest))
        else:
            try:
                fetched[src.table] = _fetch_web(seed, src, list(region.city_ids), base_url, ctx)
            except SourceError as e:
                raise SandboxError(str(e)) from None
    con = duckdb.connect(str(tmp))
    try:
        now = datetime.now(timezone.utc).replace(tzinfo=None)
        # referenced tables first, so foreign keys resolve on insert
        order = sorted(fetched, key=lambda t: bool(seed.tables.get(t) and seed.tables[t].references))
        for table in order:
            recs, prov = fetched[table]
            cols = seed.table_columns(table)
            refs = dict(seed.tables[table].references) if table in seed.tables else {}
            _create(con, table, cols, seed.table_key(table), refs)
            rows = _table_rows(table, recs, cols, prov.url)
            if rows:
                con.executemany(f'INSERT INTO "{table}" VALUES ({", ".join("?" * len(cols))})', rows)
        anchor = seed.plan.anchor
        acols = seed.table_columns(anchor.table)
        if "latitude" in acols and "longitude" in acols:
            _distances(con, anchor.table, seed.table_key(anchor.table), ids)
        con.execute("CREATE TABLE provenance (source VARCHAR PRIMARY KEY, kind VARCHAR, url VARCHAR, "
                    "fetched_at TIMESTAMP, rows INTEGER, pages INTEGER, content_sha256 VARCHAR)")
        for _, prov in fetched.values():
            con.execute("INSERT INTO provenance VALUES (?, ?, ?, ?, ?, ?, ?)",
                        [prov.source, prov.kind, prov.url, now, prov.rows, prov.pages, prov.content_sha256])
        con.execute("CREATE TABLE meta (key VARCHAR PRIMARY KEY, value VARCHAR)")
        meta = {"seed": seed.name, "origin_id": region.origin_id, "country_code": region.country_code,
                "region_city_ids": json.dumps(list(region.city_ids))}
        con.executemany("INSERT INTO meta VALUES (?, ?)", sorted(meta.items()))
        con.execute("CHECKPOINT")
    except duckdb.Error as e:
        con.close()
        tmp.unlink(missing_ok=True)
        raise SandboxError(f"writing {db_path.name}: {e}") from None
    con.close()
    os.replace(tmp, db_path)
    return [p for _, p in fetched.values()]
