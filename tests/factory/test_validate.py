"""`factory validate` on real bundles: a good bundle passes; a broken verifier, a broken
tool and a tampered file are each caught and named."""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from envfactory.factory.generate import generate
from envfactory.verifiers.mutants import cases, judge
from envfactory.factory.seed import load_seed
from envfactory.factory.validate import find_envs, validate
from envfactory.sandboxes.image import docker_ready
from envfactory.verifiers.constraints import Constraint, get_kind
from envfactory.verifiers.problem import load_problem, scaled

BACKEND = "docker" if (docker_ready() is None or os.environ.get("FACTORY_REQUIRE_DOCKER") == "1") else "local"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("vbundle")
    generate("trip_planning", 2, out, 11, workers=2)
    return out


@pytest.fixture(scope="module")
def good(bundle, tmp_path_factory):
    path = tmp_path_factory.mktemp("rep") / "r.json"
    return validate(bundle, backend=BACKEND, workers=2, report_path=path)


def _copy(bundle: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "copy"
    shutil.copytree(bundle, dst)
    return dst


def _tasks(env: Path) -> list[dict]:
    return [json.loads(line) for line in (env / "tasks" / "tasks.jsonl").read_text().splitlines()]


def test_good_bundle_is_sound_and_complete(good, bundle):
    assert good.backend == BACKEND
    assert good.ok, [f for e in good.envs for f in e.failures]
    tot = good.totals()
    assert tot["soundness"] == 1.0 and tot["completeness"] == 1.0
    assert tot["tasks"] == sum(len(e.tasks) for e in good.envs) >= 6
    counts = {r["task_id"]: r["solution_count"] for e in find_envs(bundle) for r in _tasks(e)}
    for env in good.envs:
        assert env.manifest == []
        for t in env.tasks:
            assert t.mutants >= 20 + 7            # mutants plus junk, all rejected
            n, total = t.constraints_covered.split("/")
            assert n == total and int(total) >= 4  # one breaking mutant per constraint
            # up to 20 other feasible plans: all of them when a level has fewer
            assert t.alternatives == min(20, counts[t.task_id] - 1)
            assert t.tool_calls > 0 and t.tool_failures == 0


def test_report_is_written(good, bundle):
    data = json.loads(Path(good.report_path).read_text())
    assert data["ok"] is True and data["totals"]["failures"] == 0 and data["backend"] == BACKEND
    assert data["verifier_calls"] == sum(t.cases for e in good.envs for t in e.tasks)
    assert [e["env_id"] for e in data["envs"]] == [p.name for p in find_envs(bundle)]
    assert not (bundle / "validation.json").exists()  # an explicit report path was given


def _break_verifier(env: Path, level: int, body: str) -> str:
    rec = _tasks(env)[level]
    path = env / rec["verifier"]
    path.write_text(path.read_text().split("def verify(")[0] + body)
    return rec["task_id"]


ACCEPT_ALL = "def verify(answer, db):\n    return {'score': 1.0, 'checks': [{'name': 'ok', 'passed': True, 'reason': ''}]}\n"
REJECT_ALL = "def verify(answer, db):\n    return {'score': 0.0, 'checks': [{'name': 'no', 'passed': False, 'reason': ''}]}\n"


def test_verifier_that_accepts_everything_is_caught(bundle, tmp_path):
    root = _copy(bundle, tmp_path)
    env = find_envs(root)[0]
    task_id = _break_verifier(env, 1, ACCEPT_ALL)
    rep = validate(root, backend=BACKEND, workers=2, report_path=tmp_path / "r.json")
    assert not rep.ok
    failures = [f for e in rep.envs for f in e.failures]
    assert any(f.startswith(f"{task_id}: verifier") and "(unsound)" in f for f in failures), failures
    assert any("manifest: hash mismatch: verifiers/" in f for f in failures)
    # nothing else is blamed
    assert all(task_id in f or f.startswith("manifest") for f in failures), failures
    assert rep.totals()["soundness"] < 1.0 and rep.totals()["completeness"] == 1.0


def test_verifier_that_rejects_the_reference_is_caught(bundle, tmp_path):
    root = _copy(bundle, tmp_path)
    env = find_envs(root)[1]
    task_id = _break_verifier(env, 0, REJECT_ALL)
    rep = validate(root, backend=BACKEND, workers=2, report_path=tmp_path / "r.json")
    failures = [f for e in rep.envs for f in e.failures]
    assert any(f.startswith(f"{task_id}: verifier") and "rejects the reference answer (5 of 5 runs)" in f
               for f in failures), failures
    assert any("(incomplete)" in f for f in failures)
    assert rep.totals()["completeness"] < 1.0 and rep.totals()["soundness"] == 1.0


def test_broken_tool_is_caught(bundle, tmp_path):
    root = _copy(bundle, tmp_path)
    env = find_envs(root)[0]
    tools = env / "tools" / "tools.py"
    src = tools.read_text()
    assert "def search_hotels(" in src
    assert '"search_hotels": search_hotels' in src
    tools.write_text(src.replace('"search_hotels": search_hotels', '"search_hotels": lambda **kw: 1 / 0'))
    rep = validate(root, backend=BACKEND, workers=2, report_path=tmp_path / "r.json")
    failures = [f for f in rep.envs[0].failures if "tool calls fail" in f]
    assert failures and "search_hotels" in failures[0] and "ZeroDivisionError" in failures[0], rep.envs[0].failures


def test_tampered_file_is_reported(bundle, tmp_path):
    root = _copy(bundle, tmp_path)
    env = find_envs(root)[1]
    readme = env / "README.md"
    readme.write_text(readme.read_text() + " ")
    rep = validate(root, backend=BACKEND, workers=2, report_path=tmp_path / "r.json")
    assert [f for e in rep.envs for f in e.failures] == ["manifest: hash mismatch: README.md"]


def _factory(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "envfactory.factory.cli", *args], capture_output=True, text=True, timeout=600)


def test_cli_exit_codes(bundle, tmp_path):
    env = find_envs(bundle)[0]
    r = _factory("validate", str(env), "--backend", BACKEND, "--report", str(tmp_path / "one.json"), "--quiet")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "validation: ok" in r.stdout and "100.0%" in r.stdout
    assert json.loads((tmp_path / "one.json").read_text())["ok"] is True
    root = _copy(bundle, tmp_path)
    _break_verifier(find_envs(root)[0], 2, ACCEPT_ALL)
    r = _factory("validate", str(root), "--backend", BACKEND, "--quiet")
    assert r.returncode == 1 and "validation: FAILED" in r.stdout and "FAIL " in r.stdout
    assert (root / "validation.json").is_file()
    for bad in ([str(tmp_path / "nowhere")], [str(env), "--workers", "-1"], [str(env), "--backend", "vm"]):
        r = _factory("validate", *bad)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr


# ---- the mutation suite itself ----------------------------------------------------------

@pytest.fixture(scope="module")
def problem(bundle):
    env = find_envs(bundle)[0]
    seed = load_seed(env / "seed.toml")

    con = duckdb.connect(str(env / "db" / "sandbox.duckdb"), read_only=True)
    try:
        p = load_problem(con, seed)
    finally:
        con.close()
    return p, _tasks(env), p.origin_id


def test_budget_mutant_exceeds_by_the_least(problem):
    p, tasks, origin_id = problem
    rec = tasks[-1]
    cs = [Constraint.from_json(c) for c in rec["constraints"]]
    budget = next(c for c in cs if c.kind == "total_budget")
    cc = cases(p, cs, rec["reference_answer"], random.Random(0), origin_id)
    mutant = next(c for c in cc if c.name == "violate:total_budget")
    cost = lambda plan: sum(p.cost(s.name, ids[i]) for ids in plan for i, s in enumerate(p.slots) if s.cost)  # noqa: E731
    plan = tuple(tuple(u[s.name] for s in p.slots) for u in mutant.answer[p.key])
    excess = cost(plan) - scaled(budget.params["max"])
    assert excess > 0 and mutant.expect == 0.0
    assert f"over the budget by {excess} " in mutant.note
    # brute force: no single swap of a non-anchor entity breaks the budget by less
    ref = tuple(tuple(u[s.name] for s in p.slots) for u in rec["reference_answer"][p.key])
    for u, ids in enumerate(ref):
        for i, s in enumerate(p.slots[1:], start=1):
            for eid, row in p.rows[s.name].items():
                if str(row[s.links[0].column]) == ids[0]:
                    alt = tuple(tuple(eid if (uu, ii) == (u, i) else x for ii, x in enumerate(r))
                                for uu, r in enumerate(ref))
                    e = cost(alt) - scaled(budget.params["max"])
                    if e > 0 and judge(p, [c for c in cs if c is not budget], p.plan_dict(alt), use_cpsat=False).feasible:
                        assert e >= excess


def test_cases_are_labelled_by_the_oracle(problem):
    p, tasks, origin_id = problem
    rec = tasks[2]
    cs = [Constraint.from_json(c) for c in rec["constraints"]]
    cc = cases(p, cs, rec["reference_answer"], random.Random(1), origin_id)
    names = [c.name for c in cc]
    assert len(set(names)) == len(names)
    for c in cc:
        if c.group == "alternative":
            assert c.expect == 1.0 and c.answer != rec["reference_answer"]
            rows = p.plan_rows(tuple(tuple(u[s.name] for s in p.slots) for u in c.answer[p.key]))
            assert all(get_kind(k.kind).check(rows, k.params, p.ctx())[0] for k in cs)
        if c.name.startswith("violate:"):
            rows = p.plan_rows(tuple(tuple(u[s.name] for s in p.slots) for u in c.answer[p.key]))
            target = next(k for k in cs if k.name == c.target)
            assert not get_kind(target.kind).check(rows, target.params, p.ctx())[0]
    assert {c.target for c in cc if c.target} == {k.name for k in cs}
    shape = [c for c in cc if c.name.startswith(("wrong_type", "missing_field", "extra_", "missing_", "empty_"))]
    assert shape and all(c.expect == 0.0 for c in shape)
    assert not any(c.disagree for c in cc)


def test_event_tour_bundle_validates(tmp_path):
    generate("event_tour", 1, tmp_path / "et", 3, workers=1)
    rep = validate(tmp_path / "et", backend=BACKEND, workers=1, report_path=tmp_path / "r.json")
    assert rep.ok, [f for e in rep.envs for f in e.failures]
    assert all(t.mutants >= 27 and t.alternatives > 0 for e in rep.envs for t in e.tasks)
