"""A seed whose table is scraped, with a rule of its own, from pages the offline web makes of
the seed's own data: the same configured scrapers a real site would get (JSON API, static
HTML, JavaScript page), generated and validated end to end."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest

from tests.factory.test_seed_doc import _examples

RULES = {
    "api": ('/data/section_list.json?course_id={member}',
            'scrape = { rows = "data.results", next = "links.next" }'),
    "html": ('/data/section_list.html?course_id={member}',
             'scrape = { rows = "article.row", next = "a.next", fields = { section_id = "@data-key", '
             'course_id = "span.f-course_id", weekday = "span.f-weekday", seats = "span.f-seats" } }'),
    "js": ('/data/section_list.js?course_id={member}',
           'scrape = { rows = "article.row", next = "a.next", fields = { section_id = "@data-key", '
           'course_id = "span.f-course_id", weekday = "span.f-weekday", seats = "span.f-seats" } }'),
}


def _seed(kind: str, courses_toml: str, course_ids: list[str]) -> str:
    rng = random.Random(7)
    rows = []
    for cid in course_ids:
        for j in range(2):
            rows.append(f'{{ section_id = "{cid}-{j}", course_id = "{cid}", '
                        f'weekday = "{rng.choice(["mon", "tue", "wed", "thu", "fri"])}", seats = {rng.randint(10, 80)} }}')
    path, rule = RULES[kind]
    text = courses_toml.replace('name = "semester"', 'name = "sections"', 1)
    text = text.replace('''[[plan.slots]]
name = "course"
table = "courses"
''', '''[[plan.slots]]
name = "course"
table = "courses"

[[plan.slots]]
name = "section"
table = "sections"
links = [{ column = "course_id", to = "course.course_id" }]
''')
    text = text.replace('[ladder]', f'''[[tools]]
name = "search_sections"
table = "sections"
description = "List the sections of one course."
filters = ["course_id"]
returns = ["section_id", "weekday"]

[ladder]''')
    text = text.replace('pool = [', 'pool = ["distinct_count:section.weekday", "attribute:section.seats", ')
    listed = ",\n  ".join(rows)
    return text + f'''
[[sources]]
table = "section_list"
kind = "inline"
key = "section_id"
columns = {{ section_id = "VARCHAR", course_id = "VARCHAR", weekday = "VARCHAR", seats = "INTEGER" }}
rows = [
  {listed},
]

[[sources]]
table = "sections"
kind = "{kind}"
path = "{path}"
{rule}

[tables.sections]
key = "section_id"
columns = {{ section_id = "VARCHAR", course_id = "VARCHAR", weekday = "VARCHAR", seats = "INTEGER" }}
references = {{ course_id = "courses.course_id" }}
'''


@pytest.mark.parametrize("kind", sorted(RULES))
def test_a_configured_scraper_feeds_a_seed(tmp_path, kind):
    files = _examples()
    (tmp_path / "courses.csv").write_text(files["courses.csv"])
    ids = [line.split(",")[0] for line in files["courses.csv"].splitlines()[1:]]
    (tmp_path / "s.toml").write_text(_seed(kind, files["courses.toml"], ids))
    out = tmp_path / "out"
    run = lambda *a: subprocess.run([sys.executable, "-m", "envfactory.factory.cli", *a],  # noqa: E731
                                    capture_output=True, text=True, timeout=900)
    r = run("generate", str(tmp_path / "s.toml"), "--envs", "1", "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    env = next(p for p in out.iterdir() if p.is_dir())
    import duckdb

    con = duckdb.connect(str(env / "db" / "sandbox.duckdb"), read_only=True)
    got = con.execute("SELECT section_id, course_id, weekday, seats FROM sections ORDER BY section_id").fetchall()
    want = con.execute("SELECT s.section_id, s.course_id, s.weekday, s.seats FROM section_list s "
                       "JOIN courses c USING (course_id) ORDER BY s.section_id").fetchall()
    prov = dict(con.execute("SELECT source, kind FROM provenance").fetchall())
    con.close()
    assert got == want and len(got) >= 8  # every member course's sections, scraped exactly, cast to types
    assert prov["sections"] == kind
    tasks = [json.loads(line) for line in (env / "tasks" / "tasks.jsonl").read_text().splitlines()]
    assert len(tasks) >= 6 and all(set(u) == {"course", "section"} for u in tasks[-1]["reference_answer"]["courses"])
    r = run("validate", str(out))
    assert r.returncode == 0, r.stdout[-2000:]
