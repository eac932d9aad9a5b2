"""A seed whose plan links slots through a relation table, end to end: each stop of an
airport-hopping trip is reached from the previous stop by some real route (bokeh-sampledata's
OpenFlights routes), though no slot picks a route. Generation builds full ladders, the
verifier and the oracle read the relation the same way, and validation passes."""

from __future__ import annotations

import json
import subprocess
import sys

import duckdb

SEED = '''
[seed]
name = "airport_hops"
description = "Hop between airports of a region, each hop along a real airline route."
answer_intro = "Plan {units} hops starting from {origin}: each hop lands at an airport that some airline flies to from the previous airport (the first hop departs from {origin})."

[partition]
kind = "region"
table = "airports"
center = true
size = 20
max_radius_km = 2500
label = "name"
where = "iata IN (SELECT src FROM routes GROUP BY src HAVING count(*) >= 6)"

[[sources]]
table = "airports"
kind = "file"
package = "bokeh_sampledata"
path = "_data/airports.csv"
key = "iata"
columns = { iata = "VARCHAR", name = "VARCHAR", latitude = "DOUBLE", longitude = "DOUBLE", altitude_ft = "INTEGER", size = "VARCHAR" }
rename = { iata = "IATA", name = "Name", latitude = "Latitude", longitude = "Longitude", altitude_ft = "Altitude" }
derive = { size = "replace(Type, '_airport', '')" }
where = "IATA IS NOT NULL"

[[sources]]
table = "routes"
kind = "file"
package = "bokeh_sampledata"
path = "_data/routes.csv.gz"
key = "route_id"
columns = { route_id = "VARCHAR", airline = "VARCHAR", src = "VARCHAR", dst = "VARCHAR" }
rename = { airline = "Airline", src = "Source", dst = "Destination" }
references = { src = "airports.iata", dst = "airports.iata" }
derive = { route_id = "Airline || '-' || Source || '-' || Destination" }
where = "Source IN (SELECT iata FROM airports) AND Destination IN (SELECT iata FROM airports)"

[plan]
unit = "hop"
units = 4
origin = true

[[plan.slots]]
name = "stop"
table = "airports"
links = [{ column = "iata", to = "previous.stop.iata", via = { table = "routes", this = "dst", that = "src" } }]

[[tools]]
name = "list_airports"
table = "airports"
description = "List the airports of the region (the hub excluded)."
returns = ["iata", "name", "altitude_ft", "size"]

[[tools]]
name = "routes_from"
table = "routes"
description = "List the routes departing from one airport."
filters = ["src"]
returns = ["route_id", "airline", "dst"]

[ladder]
levels = 6
count_cap = 4000
base = ["all_different:stop"]
pool = ["attribute:stop.altitude_ft", "attribute:stop.size", "sum:stop.altitude_ft", "distance:stop",
        "aggregate:stop.altitude_ft", "distinct_count:stop.size"]
'''


def _factory(*args, timeout=900):
    return subprocess.run([sys.executable, "-m", "envfactory.factory.cli", *args], capture_output=True, text=True,
                          timeout=timeout)


def test_links_through_a_relation_table_generate_and_validate(tmp_path):
    seed = tmp_path / "airport_hops.toml"
    seed.write_text(SEED, encoding="utf-8")
    out = tmp_path / "out"
    r = _factory("generate", str(seed), "--envs", "2", "--out", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    batch = json.loads((out / "batch.json").read_text())
    assert len(batch["envs"]) == 2
    for e in batch["envs"]:
        counts = [int(c) for c in e["counts"]]
        assert e["levels"] >= 6 and all(a > b >= 1 for a, b in zip(counts, counts[1:])), e
        env = out / e["path"]
        con = duckdb.connect(str(env / "db" / "sandbox.duckdb"), read_only=True)
        hub = con.execute("SELECT value FROM meta WHERE key = 'origin_id'").fetchone()[0]
        flown = set(con.execute("SELECT src, dst FROM routes").fetchall())
        con.close()
        for line in (env / "tasks" / "tasks.jsonl").read_text().splitlines():
            task = json.loads(line)
            stops = [hub] + [u["stop"] for u in task["reference_answer"]["hops"]]
            assert all((a, b) in flown for a, b in zip(stops, stops[1:])), (task["task_id"], stops)
            # the reference looks up the routes out of every stop it leaves
            asked = [c["arguments"]["src"] for c in task["reference_tool_calls"] if c["name"] == "routes_from"]
            assert asked == stops[:-1], (task["task_id"], asked)
    r = _factory("validate", str(out))
    assert r.returncode == 0, r.stdout + r.stderr
    report = json.loads((out / "validation.json").read_text())
    assert report["totals"]["soundness"] == 1.0 and report["totals"]["completeness"] == 1.0
    assert report["totals"]["failures"] == 0
