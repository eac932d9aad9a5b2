"""End to end through the real parts: offline web on loopback, Chromium, DuckDB, CP-SAT.

Generates trip-planning environments twice with the same seed (byte-identical tasks and
verifiers), checks the ladder's measured difficulty, scores reference and wrong answers
through the `factory verify` command, and builds an `event_tour` environment from its seed
file alone.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from envfactory.factory.bundle import verify_manifest
from envfactory.factory.generate import generate
from envfactory.verifiers.count import count_plans

N = 2


def _tree(root: Path, sub: str) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.glob(f"*/{sub}/*")) if p.is_file()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    a, b = tmp_path_factory.mktemp("a"), tmp_path_factory.mktemp("b")
    ra = generate("trip_planning", N, a, 7, workers=2)
    rb = generate("trip_planning", N, b, 7, workers=1)
    return ra, rb


def _tasks(env: Path) -> list[dict]:
    return [json.loads(line) for line in (env / "tasks" / "tasks.jsonl").read_text().splitlines()]


def test_same_seed_same_bytes(runs):
    ra, rb = runs
    a, b = Path(ra.out_dir), Path(rb.out_dir)
    for sub in ("tasks", "verifiers", "tools"):
        ta, tb = _tree(a, sub), _tree(b, sub)
        assert ta and ta == tb, sub


def test_environments_differ_and_ladders_get_harder(runs):
    ra, _ = runs
    assert len(ra.envs) == N
    assert len({e.env_id for e in ra.envs}) == N
    prompts = set()
    for e in ra.envs:
        tasks = _tasks(Path(e.path))
        assert [t["level"] for t in tasks] == list(range(len(tasks))) and len(tasks) >= 4
        counts = [t["solution_count"] for t in tasks]
        assert not any(t["solution_count_capped"] for t in tasks)
        assert all(x > y >= 1 for x, y in zip(counts, counts[1:])), counts
        assert all(t["min_tool_calls"] >= tasks[0]["min_tool_calls"] for t in tasks)
        prompts |= {t["prompt"] for t in tasks}
        for key in ("task_id", "env_id", "level", "prompt", "reference_answer", "solution_count",
                    "solution_count_capped"):
            assert all(key in t for t in tasks)
    assert len(prompts) == N * len(_tasks(Path(ra.envs[0].path)))


def test_report_example_is_reachable(runs):
    """DeepSeek-V3.2's example: a 3-day trip from a city, no repeated city, hotel, restaurant
    or attraction, and a day-2 budget rule conditioned on the hotel's price."""
    ra, _ = runs
    shapes = []
    for e in ra.envs:
        last = _tasks(Path(e.path))[-1]
        names = {c["name"]: c for c in last["constraints"]}
        shapes.append({"all_different_city", "all_different_hotel", "all_different_restaurant",
                       "all_different_attraction", "conditional_budget"} <= set(names)
                      and names["conditional_budget"]["params"]["unit"] == 2
                      and len(last["reference_answer"]["days"]) == 3)
    assert any(shapes)


def test_bundle_layout_manifest_and_provenance(runs):
    ra, _ = runs
    env = Path(ra.envs[0].path)
    for rel in ("manifest.json", "README.md", "seed.toml", "db/sandbox.duckdb", "db/rebuild.json",
                "tools/tools.py", "tools/tool_schemas.json", "tasks/tasks.jsonl", "tasks/tasks.parquet"):
        assert (env / rel).is_file(), rel
    assert verify_manifest(env) == []
    (env / "README.md").write_text("tampered")
    assert verify_manifest(env) == ["hash mismatch: README.md"]
    assert not list(Path(ra.out_dir).glob(".*tmp*"))
    con = duckdb.connect(str(env / "db" / "sandbox.duckdb"), read_only=True)
    prov = {r[0]: r[1:] for r in con.execute("SELECT source, kind, rows, content_sha256 FROM provenance").fetchall()}
    con.close()
    assert {k for k, *_ in prov.values()} == {"package", "html", "api", "js"}
    assert all(rows > 0 and len(h) == 64 for _, rows, h in prov.values())
    schemas = json.loads((env / "tools" / "tool_schemas.json").read_text())
    for s in schemas:
        params = s["function"]["parameters"]
        assert params["required"] == list(params["properties"]) and params["additionalProperties"] is False
        assert all(p["type"] in ("string", "integer", "number", "boolean") for p in params["properties"].values())


def _verify(env: Path, task_id: str, answer: str):
    return subprocess.run([sys.executable, "-m", "envfactory.factory.cli", "verify", str(env), task_id, answer],
                          capture_output=True, text=True, timeout=60)


def test_factory_verify_scores_references_and_rejects_wrong_answers(runs):
    ra, _ = runs
    env = Path(ra.envs[1].path)
    for t in _tasks(env):
        r = _verify(env, t["task_id"], json.dumps(t["reference_answer"]))
        assert r.returncode == 0, r.stdout + r.stderr
        assert json.loads(r.stdout)["score"] == 1.0
    last = _tasks(env)[-1]
    wrong = json.loads(json.dumps(last["reference_answer"]))
    wrong["days"][1]["hotel"] = wrong["days"][0]["hotel"]
    for answer in (json.dumps(wrong), "[1, 2]", '{"days": "soon"}', "null"):
        r = _verify(env, last["task_id"], answer)
        assert r.returncode == 1 and json.loads(r.stdout)["score"] == 0.0, answer
        assert "Traceback" not in r.stderr
    r = _verify(env, last["task_id"], "{not json")
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "not valid JSON" in r.stderr
    r = _verify(env, "no-such-task", "{}")
    assert r.returncode == 2 and "no task" in r.stderr


def test_ladder_filtered_counts_equal_full_counts(runs):
    """The ladder counts moves by filtering the previous level's plans; recount from scratch."""
    from envfactory.factory.seed import load_seed, resolve_seed
    from envfactory.verifiers.constraints import Constraint
    from envfactory.verifiers.problem import load_problem

    ra, _ = runs
    env = Path(ra.envs[0].path)
    seed = load_seed(resolve_seed("trip_planning"))
    con = duckdb.connect(str(env / "db" / "sandbox.duckdb"), read_only=True)
    p = load_problem(con, seed)
    con.close()
    for t in _tasks(env):
        cons = [Constraint.from_json(c) for c in t["constraints"]]
        assert count_plans(p, cons, 10 ** 6).count == t["solution_count"]


def test_cli_bad_arguments_one_line(tmp_path):
    for argv in (["generate", "no_such_seed", "--out", str(tmp_path)],
                 ["generate", "trip_planning", "--envs", "0", "--out", str(tmp_path)],
                 ["verify", str(tmp_path), "x", "{}"]):
        r = subprocess.run([sys.executable, "-m", "envfactory.factory.cli", *argv], capture_output=True, text=True, timeout=60)
        assert r.returncode == 2 and r.stderr.startswith("factory: error: ") and r.stderr.count("\n") == 1, r.stderr


def test_second_seed_needs_no_code(tmp_path):
    res = generate("event_tour", 1, tmp_path, 3, workers=1)
    env = Path(res.envs[0].path)
    tasks = _tasks(env)
    assert len(tasks) >= 4 and set(tasks[0]["reference_answer"]["nights"][0]) == {"city", "venue", "hotel"}
    counts = [t["solution_count"] for t in tasks]
    assert all(x > y >= 1 for x, y in zip(counts, counts[1:]))
    r = _verify(env, tasks[-1]["task_id"], json.dumps(tasks[-1]["reference_answer"]))
    assert r.returncode == 0, r.stderr
