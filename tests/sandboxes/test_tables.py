"""sandboxes.tables: every format gives the same typed rows; each transform; each error is one line."""

from __future__ import annotations

import csv
import gzip
import hashlib
import importlib.metadata
import io
import json
import shutil
import sqlite3
from pathlib import Path

import duckdb
import pytest

from envfactory.sandboxes.tables import FileTable, Loaded, TableSourceError, load_table, preview_columns, resolve

DATA = Path(__file__).parent / "data_tables"
COLUMNS = {"course_id": "VARCHAR", "title": "VARCHAR", "dept": "VARCHAR", "credits": "INTEGER",
           "hours": "INTEGER", "rating": "DOUBLE", "online": "BOOLEAN"}
RENAME = {"course_id": "Course ID", "hours": "hours per week"}
EXPECTED = [
    ("CS101", "Programming, Part I", "Computer Science", 6, 8, 4.4, True),
    ("CS102", "Programming II", "Computer Science", 6, 9, None, False),
    ("MA201", "Análisis réel — ü", "Mathematics", 5, None, 3.9, True),
    ("PH110", 'Quotes "inside"', None, 4, 5, 4.0, False),
]
FILE_COLUMNS = ["Course ID", "title", "dept", "credits", "hours per week", "level", "rating", "online"]


@pytest.fixture(scope="module")
def seed_dir(tmp_path_factory) -> Path:
    """The text fixtures, plus the binary formats written from them (gzip, Parquet by DuckDB, SQLite)."""
    d = tmp_path_factory.mktemp("seed")
    for p in DATA.iterdir():
        shutil.copy(p, d / p.name)
    (d / "courses.csv.gz").write_bytes(gzip.compress((DATA / "courses.csv").read_bytes(), mtime=0))
    duckdb.execute(f"COPY (SELECT * FROM read_csv('{d / 'courses.csv'}')) TO '{d / 'courses.parquet'}' (FORMAT parquet)")
    rows = list(csv.reader(io.StringIO((DATA / "courses.csv").read_text())))[1:]
    db = sqlite3.connect(d / "courses.sqlite")
    db.execute('CREATE TABLE courses ("Course ID" TEXT, title TEXT, dept TEXT, credits INTEGER, '
               '"hours per week" INTEGER, level TEXT, rating REAL, online TEXT)')
    db.executemany("INSERT INTO courses VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                   [[None if v == "" else v for v in r] for r in rows])
    db.commit()
    db.close()
    (d / "sub").mkdir()
    return d


@pytest.fixture
def con():
    c = duckdb.connect(":memory:")
    yield c
    c.close()


def courses(path="courses.csv", **kw) -> FileTable:
    return FileTable(**{"table": "courses", "columns": COLUMNS, "path": path, "rename": RENAME, "key": "course_id",
                        **kw})


def inline_rows() -> tuple[dict, ...]:
    return tuple(json.loads((DATA / "courses.json").read_text()))


def rows_of(con, table="courses") -> list[tuple]:
    return con.execute(f'SELECT * FROM "{table}" ORDER BY 1').fetchall()


def types_of(con, table="courses") -> dict[str, str]:
    return {r[0]: r[1] for r in con.execute(f'DESCRIBE "{table}"').fetchall()}


def error(con, src: FileTable, seed_dir: Path) -> str:
    with pytest.raises(TableSourceError) as e:
        load_table(con, src, seed_dir)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


# ---- every format: same rows, same types --------------------------------------------------------

@pytest.mark.parametrize("path,fmt,extra", [
    ("courses.csv", "csv", {}), ("courses.csv.gz", "csv", {}), ("courses.json", "json", {}),
    ("courses.jsonl", "jsonl", {}), ("courses.parquet", "parquet", {}),
    ("courses.sqlite", "sqlite", {"sqlite_table": "courses"}),
    ("courses.sqlite", "sqlite", {"query": 'SELECT * FROM courses WHERE credits > 0'}),
])
def test_each_format_loads_the_same_rows(con, seed_dir, path, fmt, extra):
    got = load_table(con, courses(path, **extra), seed_dir)
    assert rows_of(con) == EXPECTED
    assert types_of(con) == {"course_id": "VARCHAR", "title": "VARCHAR", "dept": "VARCHAR", "credits": "INTEGER",
                             "hours": "INTEGER", "rating": "DOUBLE", "online": "BOOLEAN"}
    assert got == Loaded("courses", f"seed:{path}", 4, hashlib.sha256((seed_dir / path).read_bytes()).hexdigest(), fmt)


def test_inline_rows_and_their_hash(con, seed_dir):
    got = load_table(con, courses(None, rows=inline_rows()), seed_dir)
    assert rows_of(con) == EXPECTED
    assert (got.url, got.format, got.rows) == ("inline:", "inline", 4)
    # canonical JSON: the order of keys in a row does not change the hash
    shuffled = tuple(dict(reversed(list(r.items()))) for r in inline_rows())
    canon = json.dumps(list(inline_rows()), sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert got.content_sha256 == hashlib.sha256(canon.encode()).hexdigest()
    again = load_table(con, courses(None, rows=shuffled, table="courses2"), seed_dir)
    assert again.content_sha256 == got.content_sha256


def test_inline_mixed_kinds_become_text(con, seed_dir):
    rows = ({"id": 1, "v": "x", "n": None, "w": 2 ** 70}, {"id": 2, "v": 3, "n": None, "w": 1},
            {"id": 3, "v": [1, 2]})
    load_table(con, FileTable("t", {"id": "INTEGER", "v": "VARCHAR", "n": "DOUBLE", "w": "VARCHAR"}, rows=rows,
                              key="id"), seed_dir)
    assert rows_of(con, "t") == [(1, "x", None, str(2 ** 70)), (2, "3", None, "1"), (3, "[1, 2]", None, None)]


def test_tsv_and_csv_options(con, seed_dir):
    load_table(con, FileTable("cities", {"id": "INTEGER", "city": "VARCHAR", "pop": "INTEGER"}, "cities.tsv"), seed_dir)
    assert rows_of(con, "cities") == [(1, "São Paulo", 12325232), (2, "Köln", 1083498)]
    src = FileTable("prices", {"code": "VARCHAR", "name": "VARCHAR", "price": "DOUBLE"}, "prices_semicolon.txt",
                    format="csv", csv_options={"delim": ";", "header": True, "decimal_separator": ","}, key="code")
    load_table(con, src, seed_dir)
    assert rows_of(con, "prices") == [("A-1", "Grüner Tee", 2.5), ("B-2", "Kaffee; stark", 3.1)]


# ---- transforms ---------------------------------------------------------------------------------

def test_where_drops_rows_over_source_columns(con, seed_dir):
    load_table(con, courses(where='credits >= 5 AND "Course ID" <> \'CS102\''), seed_dir)
    assert rows_of(con) == [EXPECTED[0], EXPECTED[2]]


def test_derive_and_casts(con, seed_dir):
    con.execute("CREATE TABLE depts AS SELECT * FROM (VALUES ('Computer Science', 'Ada'), ('Mathematics', 'Emmy')) t(name, head)")
    src = FileTable("c", {"id": "VARCHAR", "num": "INTEGER", "load": "DOUBLE", "head": "VARCHAR", "credits": "VARCHAR",
                          "rating": "VARCHAR", "big": "BOOLEAN"}, "courses.csv",
                    rename={"id": "Course ID"}, key="id",
                    derive={"num": "substr(\"Course ID\", 3)", "load": '"hours per week" / credits',
                            "head": "(SELECT d.head FROM depts d WHERE d.name = dept)", "big": "credits > 5"})
    load_table(con, src, seed_dir)
    assert rows_of(con, "c") == [("CS101", 101, 8 / 6, "Ada", "6", "4.4", True),
                                 ("CS102", 102, 1.5, "Ada", "6", None, True),
                                 ("MA201", 201, None, "Emmy", "5", "3.9", False),
                                 ("PH110", 110, 1.25, None, "4", "4.0", False)]


def test_boolean_words_and_empty_strings(con, seed_dir):
    rows = tuple({"k": i, "b": b, "s": s} for i, (b, s) in enumerate(
        [("Yes", ""), ("NO", "x"), ("1", " "), ("0", None), ("true", "y"), ("FALSE", "z"), ("", "w")]))
    load_table(con, FileTable("t", {"k": "INTEGER", "b": "BOOLEAN", "s": "VARCHAR"}, rows=rows, key="k"), seed_dir)
    assert rows_of(con, "t") == [(0, True, None), (1, False, "x"), (2, True, " "), (3, False, None),
                                 (4, True, "y"), (5, False, "z"), (6, None, "w")]


def test_preview_columns_as_read(seed_dir):
    want = {"Course ID": "VARCHAR", "title": "VARCHAR", "dept": "VARCHAR", "credits": "BIGINT",
            "hours per week": "BIGINT", "level": "VARCHAR", "rating": "DOUBLE", "online": "VARCHAR"}
    assert preview_columns(courses(), seed_dir) == want
    assert preview_columns(courses("courses.json"), seed_dir) == {**want, "online": "BOOLEAN"}
    assert preview_columns(courses("courses.sqlite", sqlite_table="courses"), seed_dir) == want
    assert preview_columns(courses(None, rows=({"a": 1, "b": "x"}, {"c": True})), seed_dir) == {
        "a": "BIGINT", "b": "VARCHAR", "c": "BOOLEAN"}
    with pytest.raises(TableSourceError, match=r"^table 'courses' \(seed:nope.csv\): no file 'nope.csv'"):
        preview_columns(courses("nope.csv"), seed_dir)


def test_resolve_urls(seed_dir):
    assert resolve(courses(), seed_dir) == ((seed_dir / "courses.csv").resolve(), "seed:courses.csv")
    shutil.copy(seed_dir / "cities.tsv", seed_dir / "sub" / "c.tsv")
    assert resolve(courses("sub/../sub/c.tsv"), seed_dir)[1] == "seed:sub/../sub/c.tsv"
    assert resolve(courses(None, rows=inline_rows()), seed_dir) == (None, "inline:")
    path, url = resolve(FileTable("t", {}, "__init__.py", package="pytest"), seed_dir)
    assert path.name == "__init__.py" and url == f"package://pytest/__init__.py?version={pytest.__version__}"


# ---- errors: one line naming the table and the file ---------------------------------------------

def test_source_column_errors(con, seed_dir):
    head = "table 'courses' (seed:courses.csv): "
    have = "(it has: Course ID, title, dept, credits, hours per week, level, rating, online)"
    assert error(con, courses(rename={"course_id": "Course ID"}), seed_dir) == (
        head + f"column 'hours': the file has no column 'hours' {have}")
    assert error(con, courses(rename={**RENAME, "hours": "Hours"}), seed_dir) == (
        head + f"column 'hours' (renamed from 'Hours'): the file has no column 'Hours' {have}")


def test_sql_errors(con, seed_dir):
    msg = error(con, courses(derive={"hours": "nosuch + 1"}), seed_dir)
    assert msg.startswith("table 'courses' (seed:courses.csv): derive 'hours' = 'nosuch + 1': Binder Error:")
    assert "nosuch" in msg
    msg = error(con, courses(where="credits >"), seed_dir)
    assert msg.startswith("table 'courses' (seed:courses.csv): where 'credits >': Parser Error: syntax error")


def test_cast_errors(con, seed_dir):
    head = "table 'courses' (seed:courses.csv): "
    assert error(con, courses(columns={**COLUMNS, "title": "INTEGER"}), seed_dir) == (
        head + "column 'title': 4 value(s) are not INTEGER, e.g. 'Programming, Part I'")
    assert error(con, courses(columns={**COLUMNS, "rating": "INTEGER"}), seed_dir) == (
        head + "column 'rating': 2 value(s) are not INTEGER, e.g. '4.4'")
    assert error(con, courses(columns={**COLUMNS, "dept": "BOOLEAN"}), seed_dir) == (
        head + "column 'dept': 3 value(s) are not BOOLEAN, e.g. 'Computer Science'")
    assert error(con, courses(columns={**COLUMNS, "dept": "TEXT"}), seed_dir) == (
        head + "column 'dept': type 'TEXT' is not one of VARCHAR, INTEGER, DOUBLE, BOOLEAN")


def test_key_errors(con, seed_dir):
    head = "table 'courses' (seed:courses.csv): "
    assert error(con, courses(key="dept"), seed_dir) == head + "key 'dept' is empty in 1 row(s)"
    assert error(con, courses(key="credits", where="dept IS NOT NULL"), seed_dir) == (
        head + "key 'credits' is not unique: '6' appears 2 times")
    assert error(con, courses(key="level"), seed_dir) == (
        head + "key 'level' is not one of the columns (course_id, title, dept, credits, hours, rating, online)")
    # a failed load leaves neither the table nor its staging behind
    assert con.execute("SELECT count(*) FROM duckdb_tables()").fetchone()[0] == 0


def test_path_errors(con, seed_dir):
    assert error(con, courses("coursez.csv"), seed_dir).startswith(
        "table 'courses' (seed:coursez.csv): no file 'coursez.csv' next to the seed (there are: courses.csv, ")
    assert error(con, courses("/etc/passwd.csv"), seed_dir) == (
        "table 'courses' (seed:/etc/passwd.csv): path '/etc/passwd.csv' must be relative, not absolute")
    assert error(con, courses("../courses.csv"), seed_dir) == (
        "table 'courses' (seed:../courses.csv): path '../courses.csv' leaves the seed's folder")
    assert error(con, courses("courses.xlsx"), seed_dir) == (
        "table 'courses' (seed:courses.xlsx): cannot tell the format from the name 'courses.xlsx': "
        "set format to one of csv, json, jsonl, parquet, sqlite, inline")
    assert error(con, courses(format="xml"), seed_dir) == (
        "table 'courses' (seed:courses.csv): format 'xml' is not one of csv, json, jsonl, parquet, sqlite, inline")
    assert error(con, courses("a.csv", package="no_such_pkg_xyz"), seed_dir) == (
        "table 'courses' (package://no_such_pkg_xyz/a.csv): Python package 'no_such_pkg_xyz' is not installed")
    msg = error(con, courses("_code/sorce.json", package="_pytest"), seed_dir)  # pytest's own internals
    assert msg.startswith(f"table 'courses' (package://_pytest/_code/sorce.json?version={pytest.__version__}): "
                          "no file '_code/sorce.json' in package _pytest (there are: ")


def test_shape_and_sqlite_errors(con, seed_dir):
    db = "table 'courses' (seed:courses.sqlite): "
    assert error(con, courses("courses.sqlite"), seed_dir) == (
        db + "a SQLite file needs exactly one of sqlite_table and query")
    assert error(con, courses("courses.sqlite", sqlite_table="course"), seed_dir) == (
        db + "no table 'course' in the SQLite file (it has: courses)")
    assert error(con, courses("courses.sqlite", query="SELECT * FROM nope"), seed_dir) == (
        db + "SQLite: no such table: nope in query 'SELECT * FROM nope'")
    assert error(con, courses(sqlite_table="courses"), seed_dir) == (
        "table 'courses' (seed:courses.csv): sqlite_table and query are for SQLite files, not csv")
    assert error(con, courses(rows=inline_rows()), seed_dir) == (
        "table 'courses' (seed:courses.csv): a file table takes no inline rows")
    assert error(con, courses(format="inline"), seed_dir) == (
        "table 'courses' (seed:courses.csv): inline rows take rows and no path")
    assert error(con, courses("courses.json", csv_options={"delim": ";"}), seed_dir) == (
        "table 'courses' (seed:courses.json): csv_options are for CSV files, not json")
    assert error(con, courses(csv_options={"delim = ';', x": 1}), seed_dir) == (
        "table 'courses' (seed:courses.csv): csv_options: \"delim = ';', x\" is not an option name")
    msg = error(con, courses("prices_semicolon.txt", format="parquet"), seed_dir)
    assert msg.startswith("table 'courses' (seed:prices_semicolon.txt): cannot read the file: ")
    load_table(con, courses(), seed_dir)
    assert error(con, courses("courses.json"), seed_dir).startswith(
        "table 'courses' (seed:courses.json): creating the table: Catalog Error: Table with name \"courses\" already exists")
    assert rows_of(con) == EXPECTED


# ---- a real package's files ---------------------------------------------------------------------

def test_bokeh_sampledata_routes_and_films(con, tmp_path):
    pkg = pytest.importorskip("bokeh_sampledata")
    version = importlib.metadata.version("bokeh_sampledata")
    root = Path(pkg.__file__).parent
    src = FileTable("routes", {"airline": "VARCHAR", "origin": "VARCHAR", "dest": "VARCHAR", "stops": "INTEGER",
                               "leg": "VARCHAR"}, "_data/routes.csv.gz", package="bokeh_sampledata",
                    rename={"airline": "Airline", "origin": "Source", "dest": "Destination", "stops": "Stops"},
                    derive={"leg": "Source || '-' || Destination || '-' || Airline"}, where="Airline = 'AA'", key="leg")
    got = load_table(con, src, tmp_path)
    with gzip.open(root / "_data" / "routes.csv.gz", "rt") as f:
        want = sorted((r["Airline"], r["Source"], r["Destination"], int(r["Stops"]),
                       f"{r['Source']}-{r['Destination']}-{r['Airline']}") for r in csv.DictReader(f) if r["Airline"] == "AA")
    assert con.execute("SELECT * FROM routes ORDER BY ALL").fetchall() == want and want
    assert (got.url, got.rows, got.format) == (f"package://bokeh_sampledata/_data/routes.csv.gz?version={version}",
                                               len(want), "csv")
    films = FileTable("films", {"title": "VARCHAR", "year": "INTEGER"}, "_data/movies.db", package="bokeh_sampledata",
                      query="SELECT Title AS title, Year AS year FROM omdb WHERE Year = 1999")
    load_table(con, films, tmp_path)
    db = sqlite3.connect(root / "_data" / "movies.db")
    want = sorted(db.execute("SELECT Title, Year FROM omdb WHERE Year = 1999").fetchall())
    assert con.execute("SELECT * FROM films ORDER BY ALL").fetchall() == want and want
